"""schemathesis against the app's OpenAPI document, in-process (ASGI), with every check it has.

Positive and negative data, bounded examples per operation so it runs in about a minute. Authenticated as
a tenant's key; `ignored_auth` then proves every secured operation refuses missing and bad credentials.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from service.api.app import create_app
from service.auth.service import KeyService
from service.db.migrate import upgrade_head
from service.settings import Settings
from tests.security.conftest import FIGURES, RELAXED

ALL_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance, negative_data_rejection,
              positive_data_acceptance, ignored_auth, missing_required_header, unsupported_method]
MAX_EXAMPLES = 100
_ACCEPTED = ["2xx", 401, 403, 404, 409, 429]  # schemathesis's default for positive_data_acceptance, minus 5xx


def load_schema(data_dir: Path) -> Any:
    """The app in keys mode, loaded by schemathesis from its own /openapi.json, with a tenant's key."""
    app = create_app(Settings(data_dir=data_dir, auth="keys", **RELAXED))
    upgrade_head(app.state.context.engine)
    token = KeyService(app.state.context.jobs.sessions).create(tenant="fuzz")[1]
    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {token}"},
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "suppress-health-check": ["filter_too_much", "too_slow", "data_too_large"],
        # JSON Schema cannot say "a real ONNX file" or "a cursor this API returned": on these two
        # operations a schema-valid request may still be refused, with 415/422 and a reason code.
        "operations": [
            {"include-path": "/jobs", "include-method": "POST",
             "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, 415, 422]}}},
            {"include-path": "/jobs", "include-method": "GET",
             "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, 422]}}},
        ],
    })
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


# Loaded at collection (schemathesis parametrizes from it); its folder is removed when the run ends.
_DATA = tempfile.TemporaryDirectory(prefix="secateur-schemathesis-")
schema = load_schema(Path(_DATA.name))


_TALLY: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    """After the module: how many generated requests ran, on how many operations, and how many failed."""
    yield
    operations = len({key for key in _TALLY if key != "failed"})
    FIGURES.append(f"schemathesis: {sum(n for k, n in _TALLY.items() if k != 'failed')} generated requests "
                   f"(positive and negative, up to {MAX_EXAMPLES} per operation and phase) over {operations} "
                   f"operations, {len(ALL_CHECKS)} checks each; failed requests: {_TALLY['failed']}")


@schema.parametrize()  # type: ignore[untyped-decorator]
def test_api_conforms_to_its_schema(case: Any) -> None:
    _TALLY[f"{case.operation.method.upper()} {case.operation.path}"] += 1
    try:
        case.call_and_validate(checks=ALL_CHECKS)
    except Exception:
        _TALLY["failed"] += 1
        raise
