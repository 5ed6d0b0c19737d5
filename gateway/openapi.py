"""The gateway's OpenAPI 3.1 description, built from the same pydantic models the views use.

``build_openapi()`` is served at ``/openapi.json``. Request bodies are the views' request models
(validation mode), responses the response models of ``gateway.schemas`` (serialization mode).
Every error is ``application/problem+json``; each error status has one shared response whose
``code`` is one of the stable codes of that status: the gateway's own (``_GATEWAY_CODES``) and
those of the ``normalization`` error tree, mapped to statuses exactly as the error middleware
maps them. Tests validate the document, compare it with the router, validate real responses
against it and fuzz every operation with schemathesis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

# Imported for their error classes: the error tree below lists the codes of every loaded class.
import gateway.payments
import sdk
import vault.tokenization
from gateway.pagination import DEFAULT_LIMIT, MAX_LIMIT
from gateway.problems import PROBLEM_CONTENT_TYPE, status_for
from gateway.schemas import (
    AmountRequest,
    BatchTokenizeRequest,
    BatchTokenizeResponse,
    CaptureBody,
    CompleteRequest,
    CreatePaymentRequest,
    DeclinedProblem,
    EmptyRequest,
    Health,
    PaymentList,
    PaymentView,
    Problem,
    Readiness,
    TokenizeRequest,
    TokenList,
    TokenView,
    WebhookReceipt,
)
from normalization.errors import TesseraError
from normalization.money import MAX_AMOUNT_MINOR

__all__ = ["PUBLIC_OPERATIONS", "REFINEMENTS", "build_openapi", "problem_codes"]

_REF = "#/components/schemas/{model}"
_LOADED = (gateway.payments, sdk, vault.tokenization)

_REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    TokenizeRequest,
    BatchTokenizeRequest,
    CreatePaymentRequest,
    AmountRequest,
    CaptureBody,
    CompleteRequest,
    EmptyRequest,
)
_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    TokenView,
    TokenList,
    BatchTokenizeResponse,
    PaymentView,
    PaymentList,
    Problem,
    DeclinedProblem,
    WebhookReceipt,
    Health,
    Readiness,
)

#: Codes the gateway raises itself (``HttpProblem`` and the error middleware), by status.
_GATEWAY_CODES: dict[int, tuple[str, ...]] = {
    400: (
        "malformed_json",
        "fingerprint_required",
        "reference_required",
        "invalid_limit",
        "invalid_cursor",
        "invalid_idempotency_key",
        "webhook_verification_failed",
        "http_error",
    ),
    401: ("unauthorized",),
    402: ("operation_declined",),
    404: ("not_found", "unknown_connector"),
    405: ("method_not_allowed",),
    408: ("request_timeout",),
    409: ("idempotency_key_in_use", "operation_in_progress"),
    413: ("payload_too_large", "batch_too_large"),
    415: ("unsupported_media_type",),
    422: ("invalid_request", "idempotency_key_reused", "return_url_required"),
    429: ("too_many_auth_failures",),
    500: ("internal_error",),
}

_STATUS_TEXT: dict[int, str] = {
    400: "Malformed request: bad JSON, a missing query parameter, a bad header or signature.",
    401: "Missing, invalid or revoked API key.",
    402: "The provider declined the operation; the body carries the decline and the payment.",
    404: "No such resource for this merchant.",
    405: "The method is not allowed on this path.",
    408: "The request body arrived too slowly.",
    409: "Conflicts with the resource's state, or the Idempotency-Key is in use; see `code`.",
    413: "The body, or the batch, is too large.",
    415: "The body is not application/json.",
    422: "Well-formed but invalid; `errors` lists each field (never echoing its value).",
    429: "Too many failed authentications from this client; retry after Retry-After.",
    500: "An unexpected error; nothing about the input is disclosed.",
    502: "The provider answered with an error.",
    503: "The vault, the database or the connector is unavailable; retry after Retry-After.",
    504: "The provider did not answer within the deadline.",
}

#: Statuses whose ``code`` the document lists exhaustively (an enum); 5xx codes may grow with
#: connectors' own error classes, so they are listed in the description only.
_ENUMERATED = range(400, 500)
_RETRY_AFTER_STATUSES = frozenset({409, 429, 503})


def problem_codes() -> dict[int, list[str]]:
    """Every stable problem ``code`` by HTTP status, as the error middleware answers them."""
    codes: dict[int, set[str]] = defaultdict(set)
    for status, own in _GATEWAY_CODES.items():
        codes[status].update(own)
    pending: list[type[TesseraError]] = [TesseraError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.code in _GATEWAY_CODES[400]:
            continue  # answered as 400 by the view that catches it (webhook verification)
        status = status_for(cls.__new__(cls))
        codes[status].add(cls.code)
    return {status: sorted(values) for status, values in sorted(codes.items())}


# --- Components -------------------------------------------------------------------------------

#: Constraints the request models enforce in validators (so pydantic cannot publish them), added
#: to their schemas: (schema name, property) → keywords. A test proves each against the model.
REFINEMENTS: dict[tuple[str, str], dict[str, Any]] = {
    ("CardData", "exp_month"): {"minimum": 1, "maximum": 12},
    ("CardData", "exp_year"): {"minimum": 1000, "maximum": 9999},
    ("Money", "value"): {"minimum": 0, "maximum": MAX_AMOUNT_MINOR},
    ("Money", "currency"): {"pattern": "^[A-Z]{3}$"},
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _component_schemas() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(schemas, reference by model name): requests in validation mode, responses in
    serialization mode, one ``$defs`` namespace (pydantic suffixes a name used both ways)."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in _REQUEST_MODELS),
        *((m, "serialization") for m in _RESPONSE_MODELS),
    ]
    refs, top = models_json_schema(pairs, ref_template=_REF)
    schemas: dict[str, Any] = top["$defs"]
    for (name, prop), keywords in REFINEMENTS.items():
        schemas[name]["properties"][prop].update(keywords)
    by_name = {model.__name__: dict(ref) for (model, _), ref in refs.items()}
    return schemas, by_name


def _problem_response(status: int, codes: list[str], schema_ref: dict[str, Any]) -> dict[str, Any]:
    listed = ", ".join(f"`{c}`" for c in codes)
    schema: dict[str, Any] = schema_ref
    if status in _ENUMERATED:
        schema = {"allOf": [schema_ref, {"properties": {"code": {"enum": codes}}}]}
    headers: dict[str, Any] = {"X-Request-Id": _ref("headers", "RequestId")}
    if status in _RETRY_AFTER_STATUSES:
        headers["Retry-After"] = _ref("headers", "RetryAfter")
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
    return {
        "description": f"{_STATUS_TEXT.get(status, 'Error.')} Codes: {listed}.",
        "headers": headers,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": schema}},
    }


def _components() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    schemas, refs = _component_schemas()
    responses = {
        f"Problem{status}": _problem_response(status, codes, refs["Problem"])
        for status, codes in problem_codes().items()
    }
    components = {
        "schemas": schemas,
        "responses": responses,
        "parameters": {
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Makes the POST safe to retry: the same key and request replay the first "
                    "response (`Idempotent-Replayed: true`); the same key with another request "
                    "is 422 `idempotency_key_reused`; while the first runs, 409 "
                    "`idempotency_key_in_use`. Keys are per merchant."
                ),
                # Printable ASCII; HTTP drops surrounding blanks, so a key cannot be all blank.
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
                },
            }
        },
        "headers": {
            "RequestId": {
                "description": "The request's id (the client's X-Request-Id, or a new one).",
                "required": True,
                "schema": {"type": "string"},
            },
            "RetryAfter": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "IdempotentReplayed": {
                "description": "`true` when this is the stored response of an earlier request.",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
        "securitySchemes": {
            "merchantKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "Authorization: Bearer <merchant API key>.",
            }
        },
    }
    return components, refs


# --- Operations -------------------------------------------------------------------------------

#: Problem statuses every authenticated operation can answer.
_AUTHENTICATED = (401, 429, 500, 503)
#: ... and every operation that reads a JSON body.
_BODY = (400, 408, 413, 415, 422)
#: ... and every payment POST (idempotency guard, connector call).
_PAYMENT_POST = (400, 409, 422, 502, 504)

#: Operations that need no API key (everything else: ``Authorization: Bearer <key>``).
PUBLIC_OPERATIONS = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/webhooks/{connector}"),
    }
)


@dataclass(frozen=True)
class _Op:
    method: Literal["get", "post", "delete"]
    path: str
    operation_id: str
    summary: str
    tag: str
    #: Success responses: status → (model name or None for no body, description).
    success: dict[int, tuple[str | None, str]]
    errors: tuple[int, ...] = ()
    body: str | None = None
    body_required: bool = True
    query: tuple[dict[str, Any], ...] = ()
    idempotent: bool = False
    description: str | None = None
    extra_responses: dict[str, Any] = field(default_factory=dict)


#: ``limit`` and ``cursor``: the list endpoints' pages (``gateway.pagination``).
_PAGE_QUERY: tuple[dict[str, Any], ...] = (
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"Items per page (default {DEFAULT_LIMIT}).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "The `next_cursor` of the previous page: the page after it.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    },
)


def _query(name: str, description: str, max_length: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": True,
        "description": description,
        # No NUL: nothing stored holds one (and PostgreSQL refuses it in text): 400.
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": max_length,
            "pattern": "^[^\\u0000]+$",
        },
    }


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": 100},
    }


_PATH_PARAMS = {
    "token_id": _path_param("token_id", "A token id (`tok_...`, or a numeric token)."),
    "payment_id": _path_param("payment_id", "A payment id (`pay_...`)."),
    "connector": _path_param("connector", "The connector id the provider's webhooks go to."),
}


_NO_FIELDS = (
    "Send no body, or an empty JSON object. A body that is sent must be application/json "
    "(415) within the size and time limits (413, 408), and it is part of what an "
    "Idempotency-Key is compared with; any field in it is refused (422), so that, say, an "
    "`amount` is never silently ignored."
)


def _payment_followup(
    name: str,
    operation_id: str,
    summary: str,
    *,
    body: str | None,
    status: int = 200,
    description: str,
) -> _Op:
    return _Op(
        "post",
        f"/v1/payments/{{payment_id}}/{name}",
        operation_id,
        summary,
        "payments",
        {
            status: ("PaymentView", "The operation succeeded; the payment as it now stands."),
            202: ("PaymentView", "Outcome unknown: reconciliation settles it. Do not retry."),
        },
        errors=(*_AUTHENTICATED, *_BODY, *_PAYMENT_POST, 402, 404),
        body=body,
        body_required=False,
        idempotent=True,
        description=description,
    )


def _operations() -> list[_Op]:
    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    return [
        _Op(
            "post",
            "/v1/tokens",
            "createToken",
            "Tokenize a card.",
            "tokens",
            {
                201: ("TokenView", "Token created."),
                200: ("TokenView", "The card was known (per-merchant dedup): that token."),
            },
            errors=(*_AUTHENTICATED, *_BODY),
            body="TokenizeRequest",
        ),
        _Op(
            "get",
            "/v1/tokens",
            "searchTokens",
            "Find tokens by keyed card fingerprint, oldest first, a page at a time.",
            "tokens",
            {200: ("TokenList", "Matching tokens.")},
            errors=(*_AUTHENTICATED, 400),
            query=(_query("fingerprint", "A token's keyed fingerprint.", 200), *_PAGE_QUERY),
        ),
        _Op(
            "post",
            "/v1/tokens/batch",
            "createTokensBatch",
            "Tokenize many cards; one result per card, in order.",
            "tokens",
            {200: ("BatchTokenizeResponse", "Per-card results.")},
            errors=(*_AUTHENTICATED, *_BODY),
            body="BatchTokenizeRequest",
        ),
        _Op(
            "get",
            "/v1/tokens/{token_id}",
            "getToken",
            "A token's masked metadata.",
            "tokens",
            {200: ("TokenView", "The token.")},
            errors=(*_AUTHENTICATED, 404),
        ),
        _Op(
            "delete",
            "/v1/tokens/{token_id}",
            "deleteToken",
            "Forget a token (its ciphertext is deleted; audited).",
            "tokens",
            {204: (None, "Deleted.")},
            errors=(*_AUTHENTICATED, 404),
        ),
        _Op(
            "post",
            "/v1/payments",
            "createPayment",
            "Create a payment: authorize (or purchase), debit a bank account, or open an "
            "open-banking consent.",
            "payments",
            {
                201: (
                    "PaymentView",
                    "Created. A provider decline is a value here (`status: declined`).",
                )
            },
            errors=(*_AUTHENTICATED, *_BODY, *_PAYMENT_POST, 404),
            body="CreatePaymentRequest",
            idempotent=True,
            description=(
                "The payment method is a token, inline card data (tokenized on the fly) or a "
                "bank/open-banking payer. A card is authorized (purchased with `capture: "
                "true`); a bank account is authorized where the routed connector can, else "
                "debited (`pending` until the bank settles it: `captured`, or `declined` "
                "`payment_returned`); an open-banking payer gets a consent: `requires_action` "
                "with the bank's redirect in `next_action` (a `return_url`, in the request or "
                "the payer, is required: 422 `return_url_required`), then `complete`. An "
                "unknown outcome is `status: unknown` and is reconciled; retry only with the "
                "same Idempotency-Key."
            ),
        ),
        _Op(
            "get",
            "/v1/payments",
            "listPayments",
            "The merchant's payments with a reference, newest first, a page at a time.",
            "payments",
            {200: ("PaymentList", "Matching payments.")},
            errors=(*_AUTHENTICATED, 400),
            query=(
                _query("reference", "The merchant's reference of the payment.", 128),
                *_PAGE_QUERY,
            ),
        ),
        _Op(
            "get",
            "/v1/payments/{payment_id}",
            "getPayment",
            "A payment with its attempts and refunds.",
            "payments",
            {200: ("PaymentView", "The payment.")},
            errors=(*_AUTHENTICATED, 404),
        ),
        _payment_followup(
            "capture",
            "capturePayment",
            "Capture an authorized payment, in whole or in part.",
            body="CaptureBody",
            description=(
                "Without `amount`, the whole remaining authorized amount is captured. With "
                "`final: true`, the rest of the authorization is released after this capture "
                "(the payment is `captured`). A connector that takes one capture per payment "
                "always releases the rest; one that cannot capture part of an authorization "
                "refuses a partial amount (422 `partial_capture_not_supported`)."
            ),
        ),
        _payment_followup(
            "void",
            "voidPayment",
            "Void (cancel) an authorization.",
            body="EmptyRequest",
            description=_NO_FIELDS,
        ),
        _payment_followup(
            "refunds",
            "refundPayment",
            "Refund a captured payment, in whole or in part.",
            body="AmountRequest",
            status=201,
            description=(
                "Without `amount`, the whole remaining captured amount is refunded. A connector "
                "that refunds whole amounts only, or once per payment, refuses a partial or a "
                "second refund (422 `partial_refund_not_supported`, "
                "`multiple_refunds_not_supported`)."
            ),
        ),
        _payment_followup(
            "sync",
            "syncPayment",
            "Ask the provider for the payment's state and apply it.",
            body="EmptyRequest",
            description=_NO_FIELDS,
        ),
        _payment_followup(
            "complete",
            "completePayment",
            "Finish a payment after the customer's redirect (3-D Secure, bank consent).",
            body="CompleteRequest",
            description=(
                "`parameters` are what the bank or challenge page returned. An open-banking "
                "payment: the consent is authorized at the provider and then submitted; the "
                "answer is the submission's result (`pending`, `captured`, `declined`; "
                "`unknown` is reconciled without submitting twice). A refused consent is "
                "`declined` with `decline.code` `consent_rejected`. Only a payment that "
                "`requires_action` can be completed (else 409 `invalid_state_transition`)."
            ),
        ),
        _Op(
            "post",
            "/v1/webhooks/{connector}",
            "receiveWebhook",
            "A provider's webhook, verified by its connector (no API key).",
            "webhooks",
            {200: ("WebhookReceipt", "Verified; events counted and applied once each.")},
            # 408: the body arrived too slowly; 409: the event's payment cannot take it yet.
            errors=(400, 404, 408, 409, 413, 500, 502, 503),
            body="Webhook",
            description=(
                "The body and signature headers are the provider's own; a bad or stale "
                "signature, or a replayed event id, is refused."
            ),
        ),
        _Op(
            "get",
            "/healthz",
            "healthz",
            "Liveness: the process answers.",
            "operations",
            {200: ("Health", "Alive.")},
        ),
        _Op(
            "get",
            "/readyz",
            "readyz",
            "Readiness: the vault is unsealed and the database answers.",
            "operations",
            {200: ("Readiness", "Ready.")},
            extra_responses={
                "503": {
                    "description": "Not ready; `checks` says what is not.",
                    "headers": {"Retry-After": _ref("headers", "RetryAfter")},
                    "content": {"application/json": {"schema": _ref("schemas", "Readiness")}},
                }
            },
        ),
        _Op(
            "get",
            "/metrics",
            "metrics",
            "Prometheus metrics (text exposition format).",
            "operations",
            {},
            extra_responses={"200": {"description": "Metrics.", **text}},
        ),
        _Op(
            "get",
            "/openapi.json",
            "openapi",
            "This document.",
            "operations",
            {},
            extra_responses={
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        ),
    ]


def _request_body(op: _Op, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if op.body == "Webhook":
        schema: dict[str, Any] = {
            "type": "object",
            "description": "The provider's event payload, in the provider's own format.",
        }
    else:
        assert op.body is not None
        schema = refs[op.body]
    return {"required": op.body_required, "content": {"application/json": {"schema": schema}}}


def _success(
    op: _Op, status: int, model: str | None, description: str, refs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-Id": _ref("headers", "RequestId")}
    if op.idempotent:
        headers["Idempotent-Replayed"] = _ref("headers", "IdempotentReplayed")
    response: dict[str, Any] = {"description": description, "headers": headers}
    if model is not None:
        response["content"] = {"application/json": {"schema": refs[model]}}
    return response


def _operation(op: _Op, refs: dict[str, dict[str, Any]], codes: Iterable[int]) -> dict[str, Any]:
    known = set(codes)
    responses: dict[str, Any] = {
        str(status): _success(op, status, model, description, refs)
        for status, (model, description) in sorted(op.success.items())
    }
    responses.update(op.extra_responses)
    if 402 in op.errors:
        responses["402"] = {
            "description": _STATUS_TEXT[402] + " Code: `operation_declined`.",
            "headers": {"X-Request-Id": _ref("headers", "RequestId")},
            "content": {PROBLEM_CONTENT_TYPE: {"schema": refs["DeclinedProblem"]}},
        }
    for status in sorted(set(op.errors) - {402}):
        if status in known:
            responses[str(status)] = _ref("responses", f"Problem{status}")
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": dict(sorted(responses.items())),
    }
    if op.description:
        out["description"] = op.description
    parameters = list(op.query)
    if op.idempotent:
        parameters.append(_ref("parameters", "IdempotencyKey"))
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = _request_body(op, refs)
    if (op.method.upper(), op.path) in PUBLIC_OPERATIONS:
        out["security"] = []
    return out


def _paths(refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    statuses = problem_codes().keys()
    paths: dict[str, dict[str, Any]] = {}
    for op in _operations():
        item = paths.setdefault(op.path, {})
        names = [p for p in _PATH_PARAMS if f"{{{p}}}" in op.path]
        if names:
            item["parameters"] = [_PATH_PARAMS[p] for p in names]
        item[op.method] = _operation(op, refs, statuses)
    return paths


def build_openapi(server_url: str | None = None) -> dict[str, Any]:
    """The complete OpenAPI document of the gateway."""
    components, refs = _components()
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tessera gateway",
            "version": "1",
            "description": (
                "Vault-backed tokenization and payment gateway. Errors are "
                "application/problem+json (RFC 9457) with a stable `code`."
            ),
        },
        "tags": [
            {"name": "tokens", "description": "Card tokenization; no endpoint reveals a PAN."},
            {"name": "payments", "description": "Payments through connectors."},
            {"name": "webhooks", "description": "Provider webhooks."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
        ],
        "security": [{"merchantKey": []}],
        "paths": _paths(refs),
        "components": components,
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
