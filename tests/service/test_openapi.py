"""/openapi.json says what the server does: its error shape everywhere, enums, and the job config's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from jsonschema_rs import Draft202012Validator
from pydantic import ValidationError

from service.api.app import create_app
from service.api.openapi import CONFIG_EXAMPLES, JOB_EXAMPLE
from service.db.models import STATUSES
from service.jobs.schemas import JobOut, JobStatus
from service.settings import Settings
from workers.compression.config import METHOD_OPTIONS, JobConfig
from workers.compression.hooks import STAGES

ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The app's OpenAPI document as served."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("openapi")))
    document: dict[str, Any] = app.openapi()
    return document


def config_validator(doc: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema validator for the published JobConfig, its $refs resolved inside the document."""
    return Draft202012Validator({"$ref": "#/components/schemas/JobConfig", "components": doc["components"]})


def test_every_error_answer_is_documented_in_the_servers_shape(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    checked = 0
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if status.startswith("4"):
                    assert schema == {"$ref": ERROR_REF}, f"{method.upper()} {path} {status}"
                    example = answer["content"]["application/json"]["example"]
                    assert set(example["error"]) == {"code", "message"}
                    checked += 1
    assert checked >= 30


def test_status_and_stage_are_enums(doc: dict[str, Any]) -> None:
    job = doc["components"]["schemas"]["JobOut"]["properties"]
    assert job["status"]["enum"] == list(STATUSES) == list(get_args(JobStatus))
    assert job["stage"]["enum"] == [*STAGES, None]
    listing = next(p for p in doc["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "status")
    assert set(listing["schema"]["anyOf"][0]["enum"]) == set(STATUSES)


def test_the_job_config_schema_is_published_per_method(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for options in METHOD_OPTIONS.values():
        assert options.__name__ in schemas
    part = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert part["properties"]["config"]["contentSchema"] == {"$ref": "#/components/schemas/JobConfig"}
    validator = config_validator(doc)
    for example in CONFIG_EXAMPLES:  # the examples are real configs, for the server and the schema alike
        JobConfig.model_validate(example)
        validator.validate(example)
    wrong = [
        {"method": "tpp", "target": {"pruning_ratio": 0.5}, "options": {"gamma": 0.5}},  # WeightMom's option
        {"method": "weightmom", "target": {"pruning_ratio": 0.5}},  # a channel target: not WeightMom's
        {"method": "l1", "target": {"pruning_ratio": 0.5}, "colour": "red"},
    ]
    for config in wrong:
        assert not validator.is_valid(config), config
        with pytest.raises(ValidationError):
            JobConfig.model_validate(config)


def test_the_job_example_is_a_real_answer(doc: dict[str, Any]) -> None:
    (example,) = doc["components"]["schemas"]["JobOut"]["examples"]
    assert example == JOB_EXAMPLE  # nulls included
    assert JobOut.model_validate(example).model_dump(mode="json") == example


def test_the_schema_is_what_the_server_serves(doc: dict[str, Any], tmp_path: Path) -> None:
    """The corrections are applied once and kept: a second build is the same document."""
    app = create_app(Settings(data_dir=tmp_path))
    assert app.openapi() is app.openapi()
    assert app.openapi()["components"]["schemas"].keys() == doc["components"]["schemas"].keys()
