"""The sandbox API as an OpenAPI 3.1 description, generated from the wire models.

The simulator serves it at ``GET /__sandbox/openapi.json``, so the conformance kit's contract
validation (``--openapi``) has a spec to hold the sandbox connector to, like the official specs
of real providers. Request schemas forbid unknown fields (what the simulator enforces); reply
schemas allow them (what the connector tolerates).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from connectors.sandbox.connector import SANDBOX_BASE_URL
from connectors.sandbox.transformers import (
    AuthorizationCreate,
    CaptureCreate,
    RefundCreate,
    VerificationCreate,
    WireAuthorization,
    WireAuthorizationList,
    WireErrorEnvelope,
    WireVerification,
)

__all__ = ["openapi_document"]

_REQUESTS: tuple[type[BaseModel], ...] = (
    AuthorizationCreate,
    CaptureCreate,
    RefundCreate,
    VerificationCreate,
)
_REPLIES: tuple[type[BaseModel], ...] = (
    WireAuthorization,
    WireAuthorizationList,
    WireVerification,
    WireErrorEnvelope,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(success: int, model: type[BaseModel], *, declines: bool = False) -> dict[str, Any]:
    error = {"description": "Refused", "content": _content(_ref(WireErrorEnvelope))}
    responses: dict[str, Any] = {
        str(success): {"description": "OK", "content": _content(_ref(model))},
        **{str(status): error for status in (400, 401, 404, 409, 422, 429, 500, 503)},
    }
    if declines:
        declined = {"anyOf": [_ref(model), _ref(WireErrorEnvelope)]}
        responses["402"] = {"description": "Declined", "content": _content(declined)}
    return responses


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _post(
    body: dict[str, Any] | None, responses: dict[str, Any], *, with_id: bool = False
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "parameters": [_IDEMPOTENCY_KEY, *([_ID] if with_id else [])],
        "responses": responses,
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _content(body)}
    return {"post": operation}


def openapi_document(server_url: str = SANDBOX_BASE_URL) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the sandbox API, served from ``server_url``."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in _REQUESTS),
        *((model, "serialization") for model in _REPLIES),
    ]
    _, definitions = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    empty = {"type": "object", "additionalProperties": False}
    paths: dict[str, Any] = {
        "/v1/authorizations": {
            **_post(_ref(AuthorizationCreate), _responses(201, WireAuthorization, declines=True)),
            "get": {
                "parameters": [{"name": "reference", "in": "query", "schema": {"type": "string"}}],
                "responses": _responses(200, WireAuthorizationList),
            },
        },
        "/v1/authorizations/{id}": {
            "get": {"parameters": [_ID], "responses": _responses(200, WireAuthorization)}
        },
        "/v1/authorizations/{id}/captures": _post(
            _ref(CaptureCreate), _responses(201, WireAuthorization), with_id=True
        ),
        "/v1/authorizations/{id}/voids": _post(
            empty, _responses(201, WireAuthorization), with_id=True
        ),
        "/v1/authorizations/{id}/refunds": _post(
            _ref(RefundCreate), _responses(201, WireAuthorization), with_id=True
        ),
        "/v1/verifications": _post(
            _ref(VerificationCreate), _responses(201, WireVerification, declines=True)
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tessera sandbox provider", "version": "1"},
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
