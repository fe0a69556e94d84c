"""The OpenAPI document, told what FastAPI cannot see: the real error shape and the job config's schema.

FastAPI documents its own 422 (`{"detail": [...]}`) on every operation with parameters, but
`api/errors.py` answers every error as `{"error": {"code", "message"}}`; and the job config travels as a
JSON string inside a multipart part, so its schema (pydantic, `workers/compression/config.py`) would
otherwise never reach generated clients. Both are fixed here once, when the document is first built;
examples are added here too, after FastAPI's encoding, which drops every null from a model's examples.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from workers.compression.config import METHOD_OPTIONS, METHOD_TARGETS, JobConfig

__all__ = ["CONFIG_EXAMPLES", "JOB_EXAMPLE", "install_openapi"]

_REF = "#/components/schemas/{model}"
_ERROR_REF = _REF.format(model="ErrorBody")
_FASTAPI_422 = {_REF.format(model="HTTPValidationError")}
CONFIG_EXAMPLES: list[dict[str, Any]] = [
    {"method": "l1", "architecture": "resnet56", "target": {"pruning_ratio": 0.5},
     "finetune": {"epochs": 10, "lr": 0.01, "batch_size": 128}, "seed": 0},
    {"method": "tpp", "target": {"flops_reduction": 2.0}, "options": {"norm_ratio": 0.001}},
    {"method": "weightmom", "target": {"sparsity": 0.9}, "options": {"gamma": 0.5, "interval": 100}},
]

_EXAMPLE_PATH = "/jobs/7c9e6679-7425-40de-944b-e07fc1f90ae7"
JOB_EXAMPLE: dict[str, Any] = {
    "id": _EXAMPLE_PATH.removeprefix("/jobs/"), "status": "running", "stage": "finetuning",
    "progress": {"fraction": 0.42, "epoch": 3, "epochs": 10, "step": 1170, "eta_s": 95.0,
                 "metrics": {"loss": 0.61, "accuracy": 0.78, "lr": 0.01}},
    "config": {"method": "l1", "architecture": "resnet56", "target": {"pruning_ratio": 0.5},
               "finetune": {"epochs": 10}},
    "metrics": None, "error": None, "attempt": 1, "created_at": "2026-12-01T10:00:00Z",
    "started_at": "2026-12-01T10:00:02Z", "finished_at": None,
    "links": {"self": _EXAMPLE_PATH, "report": None, "model": None, "model_zst": None,
              "events": f"{_EXAMPLE_PATH}/events", "cancel": f"{_EXAMPLE_PATH}/cancel"},
    "inputs": {"model_id": "0b6f3c52-7f0e-4a3e-9d2b-9a4f4c3e2a10", "dataset_id": None,
               "model_sha256": "e19069dd9dee659f8fe9a5eaf1242ee894f187e1e32b2eb6f8a33cfa5ab405e0",
               "dataset_sha256": "9ce914f7ee2c061c75c15f2cde50c762cc2dc7010084a786c29d317397fe0e30"},
    "rerun_of": None,
}

# A typical answer per status, shown with every error response (codes: README's API section).
_ERROR_EXAMPLES: dict[str, tuple[str, str]] = {
    "400": ("bad_request", "the multipart body ended before its closing boundary"),
    "401": ("unauthorized", "missing or invalid API key: send `Authorization: Bearer sk_...`"),
    "403": ("storage_quota_exceeded", "your stored uploads would reach 53687091300 bytes; the quota is "
                                      "53687091200. Delete finished jobs (DELETE /jobs/{id}) to free space"),
    "404": ("not_found", "no job 7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    "409": ("not_ready", "job 7c9e6679-7425-40de-944b-e07fc1f90ae7 is running; its report exists once it "
                         "has succeeded"),
    "408": ("request_timeout", "no part of the request body arrived for 30 s; send it without pauses"),
    "413": ("payload_too_large", "the request body is larger than the limit of 4294967296 bytes"),
    "415": ("unsupported_model_format", "this model file is a Python pickle (torch.save / .pt / .pth)"),
    "422": ("invalid_config", "invalid config: target: method 'l1' takes a target of ['flops_reduction', "
                              "'pruning_ratio'], not 'sparsity'"),
    "429": ("rate_limited", "too many job submissions; retry in 12 s"),
    "503": ("database_unavailable", "the database is unavailable; retry shortly"),
    "507": ("insufficient_storage", "the server has no disk space left for this request; nothing was kept. "
                                    "Retry later"),
}
# What service/api/request_guard.py may answer for any operation that takes a body, before the route runs.
_GUARD_ANSWERS = {
    "400": "the body is malformed, or a JSON body is past a bound (invalid_json: depth, number size, NaN)",
    "408": "the body stopped arriving for longer than the body read timeout (request_timeout)",
    "413": "the body is larger than its limit (payload_too_large)",
}


def _guard_answers(doc: dict[str, Any]) -> None:
    """Documents the request guard's refusals on every operation that takes a request body."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in _GUARD_ANSWERS.items():
                responses.setdefault(status, {"description": description, "content": {
                    "application/json": {"schema": {"$ref": _ERROR_REF}}}})


def _error_answers(doc: dict[str, Any]) -> None:
    """Points FastAPI's default 422 at our error shape, drops its schemas, and gives each error an example."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for status, answer in operation.get("responses", {}).items():
                body = answer.get("content", {}).get("application/json", {})
                if body.get("schema", {}).get("$ref") in _FASTAPI_422:
                    answer["description"] = "a parameter is invalid (the message names each one)"
                    body["schema"] = {"$ref": _ERROR_REF}
                if body.get("schema", {}).get("$ref") == _ERROR_REF and status in _ERROR_EXAMPLES:
                    code, message = _ERROR_EXAMPLES[status]
                    body["example"] = {"error": {"code": code, "message": message}}
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _method_rules() -> list[dict[str, Any]]:
    """One if/then per method: its own options schema and the targets it accepts."""
    return [
        {"if": {"properties": {"method": {"const": method}}, "required": ["method"]},
         "then": {"properties": {
             "options": {"$ref": _REF.format(model=options.__name__)},
             "target": {"anyOf": [{"required": [kind]} for kind in sorted(METHOD_TARGETS[method])]},
         }}}
        for method, options in METHOD_OPTIONS.items()
    ]


def _add_config_schemas(doc: dict[str, Any]) -> None:
    """Publishes JobConfig and every method's options model under components/schemas."""
    models: list[type[BaseModel]] = [JobConfig, *METHOD_OPTIONS.values()]
    _, defs = models_json_schema([(model, "validation") for model in models], ref_template=_REF)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    config = schemas["JobConfig"]
    config["allOf"] = _method_rules()
    config["examples"] = CONFIG_EXAMPLES
    config["properties"]["options"]["description"] = (
        "method-specific options: " + ", ".join(f"{method} → {options.__name__}"
                                                for method, options in METHOD_OPTIONS.items()))


def install_openapi(app: FastAPI) -> None:
    """Wraps `app.openapi` so the document FastAPI builds (once, then cached) gets the corrections above."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        """Builds and corrects the document on first use; returns the cached one after."""
        if app.openapi_schema is None:
            doc = build()  # FastAPI's own, cached by it in app.openapi_schema: corrected in place
            _guard_answers(doc)
            _error_answers(doc)
            _add_config_schemas(doc)
            doc["components"]["schemas"]["JobOut"]["examples"] = [JOB_EXAMPLE]  # nulls kept (see above)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
