"""The gateway's OpenAPI 3.1 description, built from the same pydantic models the views use.

``build_openapi()`` is served at ``/openapi.json``; a test validates it with
openapi-spec-validator and fuzzes every operation with schemathesis.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway.schemas import BatchTokenizeRequest, TokenizeRequest, TokenList, TokenView

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, mode="validation")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}},
    }


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
    }


_COMMON_ERRORS = {
    "400": _problem("Malformed request (bad JSON, bad header)."),
    "401": _problem("Missing, invalid or revoked API key."),
    "413": _problem("Body too large."),
    "415": _problem("Body is not application/json."),
    "422": _problem("The request is well-formed but invalid; `errors` lists each field."),
    "429": _problem("Too many failed authentications."),
    "503": _problem("The vault or the database is unavailable; retry after Retry-After."),
}

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "Stable machine-readable error code."},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "code": {"type": "string"},
                    "detail": {"type": "string"},
                },
            },
        },
    },
}

_BATCH_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["results"],
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "oneOf": [
                    {"$ref": _REF.format(model="TokenView")},
                    {
                        "type": "object",
                        "required": ["error"],
                        "properties": {
                            "error": {
                                "type": "object",
                                "required": ["code", "detail"],
                                "properties": {
                                    "code": {"type": "string"},
                                    "detail": {"type": "string"},
                                },
                            }
                        },
                    },
                ]
            },
        }
    },
}

_TOKEN_ID = {
    "name": "token_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 100},
}


def build_openapi(server_url: str | None = None) -> dict[str, Any]:
    """The complete OpenAPI document of the gateway."""
    schemas = _schemas(TokenizeRequest, BatchTokenizeRequest, TokenView, TokenList)
    schemas["Problem"] = _PROBLEM_SCHEMA
    schemas["BatchTokenizeResponse"] = _BATCH_RESULT_SCHEMA
    health = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tessera gateway",
            "version": "1",
            "description": "Vault-backed tokenization and payment gateway.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"merchantKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"merchantKey": []}],
        "paths": {
            "/v1/tokens": {
                "post": {
                    "operationId": "createToken",
                    "summary": "Tokenize a card.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(model="TokenizeRequest")}
                            }
                        },
                    },
                    "responses": {
                        "201": _json("TokenView", "Token created."),
                        "200": _json("TokenView", "The card was known (per-merchant dedup)."),
                        **_COMMON_ERRORS,
                    },
                },
                "get": {
                    "operationId": "searchTokens",
                    "summary": "Find tokens by keyed card fingerprint.",
                    "parameters": [
                        {
                            "name": "fingerprint",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        }
                    ],
                    "responses": {"200": _json("TokenList", "Matching tokens."), **_COMMON_ERRORS},
                },
            },
            "/v1/tokens/batch": {
                "post": {
                    "operationId": "createTokensBatch",
                    "summary": "Tokenize up to 1,000 cards; results in order, one per card.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(model="BatchTokenizeRequest")}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("BatchTokenizeResponse", "Per-card results."),
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/tokens/{token_id}": {
                "parameters": [_TOKEN_ID],
                "get": {
                    "operationId": "getToken",
                    "summary": "A token's masked metadata.",
                    "responses": {
                        "200": _json("TokenView", "The token."),
                        "404": _problem("No such token for this merchant."),
                        **_COMMON_ERRORS,
                    },
                },
                "delete": {
                    "operationId": "deleteToken",
                    "summary": "Forget a token (its ciphertext is deleted; audited).",
                    "responses": {
                        "204": {"description": "Deleted."},
                        "404": _problem("No such token for this merchant."),
                        **_COMMON_ERRORS,
                    },
                },
            },
            "/healthz": {"get": {"operationId": "healthz", "security": [], "responses": health}},
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "security": [],
                    "responses": {
                        **health,
                        "503": {
                            "description": "Not ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Prometheus metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
