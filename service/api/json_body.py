"""JSON request bodies read by hand, for routes that also take multipart (`POST /jobs`) or a file.

The body is read up to a bound (413 beyond it) and validated with a pydantic model; a malformed body or
one of the wrong shape is a 422 naming the field, in the service's error shape.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from service.errors import InvalidRequest, PayloadTooLarge

__all__ = ["StoredDatasetBody", "StoredInputsBody", "is_json", "read_json_body"]

_JSON_OVERHEAD = 4096  # bytes a JSON body may hold beyond its config (ids, keys, whitespace)
Body = TypeVar("Body", bound=BaseModel)


class StoredInputsBody(BaseModel):
    """`POST /jobs` as JSON: stored inputs by id (`POST /models`, `POST /datasets`) and the job config."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(max_length=64, description="the id `POST /models` returned")
    dataset_id: str = Field(max_length=64, description="the id `POST /datasets` returned")
    config: dict[str, Any] | str = Field(description="the job config (an object, or its JSON text)")

    def config_text(self) -> str:
        """The config as the JSON text the job service parses."""
        return self.config if isinstance(self.config, str) else json.dumps(self.config)


class StoredDatasetBody(BaseModel):
    """`POST /datasets/validate` as JSON: a stored dataset by id instead of a file."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(max_length=64, description="the id `POST /datasets` returned")


def is_json(request: Request) -> bool:
    """Tells whether the request body is JSON (`application/json` or a `+json` type)."""
    content_type, _ = parse_options_header(request.headers.get("content-type", ""))
    return content_type == b"application/json" or content_type.endswith(b"+json")


async def read_json_body(request: Request, model: type[Body], *, config_bytes: int) -> Body:
    """Reads and validates a JSON body of at most `config_bytes` plus a little; 413 / 422 otherwise."""
    limit = config_bytes + _JSON_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the JSON body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the JSON body is larger than the limit of {limit} bytes")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in exc.errors())
        raise InvalidRequest(f"invalid JSON body: {problems}", code="invalid_body") from None
