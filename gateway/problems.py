"""Errors rendered once, as ``application/problem+json`` (RFC 9457) with a stable ``code``.

Every error a view can raise reaches the client through ``problem_response``: domain errors
(the ``normalization`` error tree) map to HTTP statuses here and nowhere else; pydantic
validation errors become 422 with one entry per field. No response ever echoes the input.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from normalization.errors import (
    ConnectorBusyError,
    ConnectorError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    IllegalTransitionError,
    InvalidRequestError,
    NotFoundError,
    NotSupportedError,
    TesseraError,
    TokenIntegrityError,
    VaultError,
)
from normalization.methods import PaymentMethodType

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "HttpProblem",
    "problem_response",
    "status_for",
    "validation_problem",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class HttpProblem(Exception):
    """An HTTP-level problem raised by the gateway itself (auth, content type, size, ...)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.headers = headers or {}
        self.extra = extra or {}
        #: Close the connection after the answer (what is left of the request cannot be read).
        self.close = close


#: The payment store's conflicts (``gateway.payments.records``; named by code, since this module
#: sits below the payment packages).
_CONFLICT_CODES = frozenset({"concurrent_update", "operation_in_progress"})


def status_for(error: TesseraError) -> int:
    """The HTTP status of a domain error."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, InvalidRequestError):
        return 422
    if isinstance(error, NotSupportedError):
        return 422
    if isinstance(error, IllegalTransitionError) or error.code in _CONFLICT_CODES:
        return 409
    if isinstance(error, ConnectorBusyError | ConnectorUnavailableError):
        return 503
    if isinstance(error, ConnectorTimeoutError):
        return 504
    if isinstance(error, ConnectorError):
        return 502
    if isinstance(error, TokenIntegrityError):
        return 500  # a stored row is wrong: retrying cannot help
    if isinstance(error, VaultError):
        return 503  # a missing transit key or path (VaultNotFoundError) too: not the client's
    return 500


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    request_id: str | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"https://tessera.dev/problems/{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    out_headers = dict(headers or {})
    if retry_after is not None:
        out_headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=out_headers,
    )


_OBJECT_TYPES = frozenset({"model_type", "model_attributes_type", "dict_type"})
_OBJECT_EXPECTED = "Input should be a JSON object."


#: Fields holding a union chosen by a ``type`` tag, and the tags: pydantic puts the chosen tag in
#: an error's location (``payment_method.card.card.number``), which names no field the client
#: sent; it is left out (``payment_method.card.number``).
_TAGGED_UNIONS: dict[str, frozenset[str]] = {
    "payment_method": frozenset(t.value for t in PaymentMethodType)
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = [
        str(part)
        for i, part in enumerate(loc)
        if not (i and part in _TAGGED_UNIONS.get(str(loc[i - 1]), ()))
    ]
    return ".".join(parts)


#: How many invalid fields a validation problem's ``detail`` names (``errors`` has them all).
_NAMED_FIELDS = 5


def validation_problem(exc: ValidationError) -> tuple[str, str, list[dict[str, str]]]:
    """(code, detail, errors) for a pydantic error, without echoing any input value."""
    errors: list[dict[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = _field_path(err["loc"])
        kind = str(err["type"])
        # pydantic names the internal model ("... instance of CreatePaymentRequest"): say what
        # the client has to send instead.
        message = _OBJECT_EXPECTED if kind in _OBJECT_TYPES else str(err["msg"])
        errors.append({"field": loc, "code": kind, "detail": message})
    # A single Tessera code (invalid_card_number, ...) is the problem's code; pydantic's own
    # error types (missing, int_type, ...) and mixtures collapse into invalid_request.
    codes = {e["code"] for e in errors}
    code = codes.pop() if len(codes) == 1 else "invalid_request"
    if code not in _tessera_codes():
        code = "invalid_request"
    if len(errors) == 1:
        detail = errors[0]["detail"]
        if errors[0]["field"]:
            detail = f"{errors[0]['field']}: {detail}"
    else:
        # Field names only (never values), so a client that reads only ``detail`` knows where.
        fields = list(dict.fromkeys(e["field"] or "(body)" for e in errors))
        named = ", ".join(fields[:_NAMED_FIELDS]) + (", ..." if len(fields) > _NAMED_FIELDS else "")
        detail = f"{len(errors)} fields are invalid: {named}."
    return code, detail, errors


def _tessera_codes() -> frozenset[str]:
    codes: set[str] = set()
    pending: list[type[TesseraError]] = [TesseraError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)
