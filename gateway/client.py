"""A small typed Python client for the Tessera merchant API, on httpx.

``TesseraClient`` (sync) and ``AsyncTesseraClient`` (asyncio) have the same methods:
``tokenize``, ``create_payment``, ``complete``, ``capture``, ``void``, ``refund``, ``get_payment``.
They return frozen pydantic views (``Token``, ``Payment``, ...) that ignore fields they do not
know, so a newer gateway does not break an older client. docs/merchant-client.md is the guide.

**Idempotency.** Every POST carries an ``Idempotency-Key``: one random UUID4 per logical call
(or the caller's own ``idempotency_key=``), reused, with byte-identical bodies, on every retry of
that call. The gateway therefore executes a payment call at most once however often it is
retried. ``POST /v1/tokens`` is not guarded by the key on the gateway: a tokenization retried
after a lost response may leave a second token for the same card (same ``fingerprint``).

**Retries** happen only where they are safe, at most ``max_retries`` times:

- the connection failed or broke before a response arrived (the key makes a resend safe:
  the gateway replays the first result or reports the first attempt still running);
- ``409 idempotency_key_in_use`` (the first attempt is still running) and ``409
  operation_in_progress`` (another capture, void, refund or completion of the payment is still
  open; nothing was done);
- ``429`` and ``503``, after the ``Retry-After`` the gateway asked for (a wait longer than
  ``max_retry_delay`` is not attempted: the error is raised instead).

Anything else (declines are ``Payment`` values, not errors; 4xx; other 5xx) is returned or raised
at once: ``TesseraAPIError(status, code, detail)`` from the problem+json body, or
``TesseraConnectionError`` when no response came. A provider's refusal of a capture, void or
refund is the gateway's ``402 operation_declined``: a ``TesseraAPIError`` whose ``payment`` is
the payment as it now stands and whose ``decline`` says why; ``errors`` lists the fields of a
``422``. Request bodies are never logged and never
appear in an error, so card data given to ``tokenize`` stays out of logs and tracebacks.
``verify_signature`` checks the signature on Tessera's notifications to a merchant.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.payments.signatures import SIGNATURE_HEADER, InvalidSignatureError, verify_signature

__all__ = [
    "SIGNATURE_HEADER",
    "Amount",
    "AsyncTesseraClient",
    "Attempt",
    "Decline",
    "InvalidSignatureError",
    "NextAction",
    "Payment",
    "Refund",
    "TesseraAPIError",
    "TesseraClient",
    "TesseraClientError",
    "TesseraConnectionError",
    "Token",
    "TokenCard",
    "verify_signature",
]

log = logging.getLogger("tessera.client")

T = TypeVar("T")
P = ParamSpec("P")
_RETRYABLE_STATUSES = frozenset({429, 503})
#: 409s after which nothing was done and a resend (after ``Retry-After``) is the right move.
_RETRYABLE_CONFLICTS = frozenset({"idempotency_key_in_use", "operation_in_progress"})
_USER_AGENT = "tessera-python/0.1"

# -- views --------------------------------------------------------------------------------------


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Amount(_View):
    value: int
    currency: str


class TokenCard(_View):
    brand: str
    bin: str | None = None
    last4: str
    exp_month: int
    exp_year: int


class Token(_View):
    id: str
    fingerprint: str | None = None
    card: TokenCard
    created_at: datetime | None = None
    expires_at: datetime | None = None


class Decline(_View):
    code: str
    message: str = ""
    provider_code: str | None = None


class NextAction(_View):
    type: str = "redirect"
    url: str
    method: str = "GET"
    data: dict[str, str] = Field(default_factory=dict)


class Attempt(_View):
    id: str | None = None
    connector: str | None = None
    operation: str | None = None
    outcome: str | None = None
    status: str | None = None
    #: Why the call did not complete: a decline code, or the refusal's code for ``not_sent``.
    error_code: str | None = None
    provider_reference: str | None = None
    amount: Amount | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Refund(_View):
    id: str
    amount: Amount | None = None
    status: str | None = None


class Payment(_View):
    """A payment as the gateway reports it. Declines are here (``decline``), not exceptions."""

    id: str
    status: str | None = None
    connector: str | None = None
    amount: Amount
    captured: int = 0
    refunded: int = 0
    capture: bool | None = None
    reference: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    next_action: NextAction | None = None
    decline: Decline | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    refunds: list[Refund] = Field(default_factory=list)
    created_at: datetime | None = None

    @field_validator("captured", "refunded", mode="before")
    @classmethod
    def _minor_units(cls, value: object) -> object:
        # Running totals may come as plain minor units or as amounts: accept both.
        if isinstance(value, Mapping) and "value" in value:
            return value["value"]
        return 0 if value is None else value


# -- errors -------------------------------------------------------------------------------------


class TesseraClientError(Exception):
    """Root of the client's errors."""


class TesseraAPIError(TesseraClientError):
    """The gateway answered with an error (``application/problem+json``)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
        problem: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.request_id = request_id
        self.problem = dict(problem or {})

    def __repr__(self) -> str:
        return f"TesseraAPIError(status={self.status}, code={self.code!r})"

    @property
    def payment(self) -> Payment | None:
        """The payment carried by the problem (``402 operation_declined``), else None."""
        try:
            return _payment_or_none(self.problem.get("payment"))
        except ValidationError:
            return None  # an error report must not raise while being read

    @property
    def decline(self) -> Decline | None:
        """Why the provider refused (``402 operation_declined``), else None."""
        data = self.problem.get("decline")
        if not isinstance(data, Mapping):
            return None
        try:
            return Decline.model_validate(data)
        except ValidationError:
            return None

    @property
    def errors(self) -> list[dict[str, str]]:
        """The invalid fields of a ``422`` (``field``, ``code``, ``detail``); never their values."""
        items = self.problem.get("errors")
        if not isinstance(items, list):
            return []
        return [
            {k: str(v) for k, v in item.items() if k in ("field", "code", "detail")}
            for item in items
            if isinstance(item, Mapping)
        ]


class TesseraConnectionError(TesseraClientError):
    """No response from the gateway, after every allowed retry."""


# -- one logical call and the retry policy ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    body: bytes | None = field(default=None, repr=False)  # may hold card data: never shown
    idempotency_key: str | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers


#: What the gateway accepts as an ``Idempotency-Key`` (else 400 ``invalid_idempotency_key``).
_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def _post(
    path: str, payload: Mapping[str, object], parse: Callable[[Any], T], key: str | None
) -> _Call[T]:
    if key is not None and (_KEY.fullmatch(key) is None or not key.strip()):
        # Checked here: a non-ASCII key cannot even be put in a header (UnicodeEncodeError).
        raise ValueError("idempotency_key must be 1 to 255 printable ASCII characters.")
    # One key per logical call, made here once: every retry of this _Call sends it again.
    return _Call("POST", path, parse, orjson.dumps(payload), key or str(uuid.uuid4()))


@dataclass(frozen=True, slots=True)
class _RetryPolicy:
    max_retries: int
    max_retry_delay: float
    base_delay: float = 0.5

    def after_error(self, retry: int) -> float | None:
        """Seconds to wait before resending after a transport error, or None to give up."""
        if retry >= self.max_retries:
            return None
        return self._backoff(retry)

    def after_response(self, retry: int, response: httpx.Response) -> float | None:
        """Seconds to wait before resending after ``response``, or None to return/raise it."""
        if retry >= self.max_retries:
            return None
        in_use = response.status_code == 409 and _problem_code(response) in _RETRYABLE_CONFLICTS
        if not in_use and response.status_code not in _RETRYABLE_STATUSES:
            return None
        wait = _retry_after(response)
        if wait is None:
            return self._backoff(retry)
        return wait if wait <= self.max_retry_delay else None

    def _backoff(self, retry: int) -> float:
        ceiling = min(self.max_retry_delay, self.base_delay * (1 << min(retry, 16)))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _problem_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _result(call: _Call[T], response: httpx.Response) -> T:
    if response.is_success:
        return call.parse(response.json())
    raise _api_error(response)


def _api_error(response: httpx.Response) -> TesseraAPIError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {}
    code = problem.get("code")
    detail = problem.get("detail")
    return TesseraAPIError(
        response.status_code,
        code if isinstance(code, str) else f"http_{response.status_code}",
        detail if isinstance(detail, str) else response.reason_phrase,
        retry_after=_retry_after(response),
        request_id=response.headers.get("X-Request-Id") or problem.get("request_id"),
        problem=problem,
    )


def _log_retry(call: _Call[Any], retry: int, wait: float, reason: str) -> None:
    # Method, path and reason only: bodies may hold card data.
    log.info(
        "retrying %s %s in %.2fs (retry %d, %s)", call.method, call.path, wait, retry + 1, reason
    )


# -- the operations, written once ---------------------------------------------------------------
#
# Each operation is a generator ("program") that yields the ``_Call``s it needs, is sent each
# one's parsed result, and returns the answer. ``_blocking`` and ``_awaitable`` turn a program
# into a method of the sync or the async client, keeping its signature and docstring: every
# operation is defined once, with its types, and both clients stay in step.

Program = Generator[_Call[Any], Any, T]


def _payment_path(payment_id: str, action: str = "") -> str:
    path = f"/v1/payments/{quote(payment_id, safe='')}"
    return f"{path}/{action}" if action else path


def _get_payment(payment_id: str) -> Program[Payment]:
    """The payment ``payment_id`` with its attempts and refunds."""
    payment: Payment = yield _Call("GET", _payment_path(payment_id), Payment.model_validate)
    return payment


def _tokenize(
    number: str,
    exp_month: int,
    exp_year: int,
    cvc: str | None = None,
    *,
    holder_name: str | None = None,
    token_format: str | None = None,
    ttl_seconds: int | None = None,
    idempotency_key: str | None = None,
) -> Program[Token]:
    """Exchange card data for a token (``POST /v1/tokens``); the card data is not kept here."""
    card: dict[str, object] = {"number": number, "exp_month": exp_month, "exp_year": exp_year}
    if cvc is not None:
        card["cvc"] = cvc
    if holder_name is not None:
        card["holder_name"] = holder_name
    payload: dict[str, object] = {"card": card}
    if token_format is not None:
        payload["format"] = token_format
    if ttl_seconds is not None:
        payload["ttl_seconds"] = ttl_seconds
    token: Token = yield _post("/v1/tokens", payload, Token.model_validate, idempotency_key)
    return token


def _create_payment(
    amount_minor: int,
    currency: str,
    *,
    token: str | None = None,
    payment_method: Mapping[str, object] | None = None,
    capture: bool = False,
    connector: str | None = None,
    reference: str | None = None,
    metadata: Mapping[str, str] | None = None,
    return_url: str | None = None,
    idempotency_key: str | None = None,
) -> Program[Payment]:
    """Pay ``amount_minor`` with a card ``token`` or any other ``payment_method`` object.

    A decline is a ``Payment`` with ``status == "declined"`` and a ``decline``, not an error.
    """
    if (token is None) == (payment_method is None):
        raise ValueError("Give exactly one of token= or payment_method=.")
    options = {
        "capture": capture,
        "connector": connector,
        "reference": reference,
        "metadata": dict(metadata) if metadata else None,
        "return_url": return_url,
    }
    payload: dict[str, object] = {
        "amount": {"value": amount_minor, "currency": currency},
        "payment_method": dict(payment_method or {"type": "card", "token": token}),
    }
    payload.update({name: value for name, value in options.items() if value is not None})
    payment: Payment = yield _post("/v1/payments", payload, Payment.model_validate, idempotency_key)
    return payment


def _follow_up(
    payment_id: str,
    action: str,
    amount_minor: int | None,
    currency: str | None,
    idempotency_key: str | None,
    **fields: object,
) -> Program[Payment]:
    payload: dict[str, object] = {}
    if amount_minor is not None:
        if currency is None:
            currency = (yield from _get_payment(payment_id)).amount.currency
        payload["amount"] = {"value": amount_minor, "currency": currency}
    payload.update(fields)
    path = _payment_path(payment_id, action)
    answer = yield _post(path, payload, _payment_or_none, idempotency_key)
    if answer is None:
        # The refunds endpoint may answer with the refund itself: report the payment.
        answer = yield from _get_payment(payment_id)
    assert isinstance(answer, Payment)
    return answer


def _capture(
    payment_id: str,
    amount_minor: int | None = None,
    *,
    currency: str | None = None,
    final: bool = False,
    idempotency_key: str | None = None,
) -> Program[Payment]:
    """Capture ``amount_minor`` (default: all that remains capturable). ``final``: the last
    capture; the rest of the authorization is released (the payment is ``captured``).

    With an amount but no ``currency``, the payment is read first (one GET) for its currency.
    """
    extra: dict[str, object] = {"final": True} if final else {}
    return (
        yield from _follow_up(
            payment_id, "capture", amount_minor, currency, idempotency_key, **extra
        )
    )


def _void(payment_id: str, *, idempotency_key: str | None = None) -> Program[Payment]:
    """Cancel an authorization that was not captured."""
    return (yield from _follow_up(payment_id, "void", None, None, idempotency_key))


def _refund(
    payment_id: str,
    amount_minor: int | None = None,
    *,
    currency: str | None = None,
    idempotency_key: str | None = None,
) -> Program[Payment]:
    """Refund ``amount_minor`` (default: all that is refundable); returns the payment.

    The refund is in ``payment.refunds``. Several partial refunds are fine.
    """
    return (yield from _follow_up(payment_id, "refunds", amount_minor, currency, idempotency_key))


def _complete(
    payment_id: str,
    parameters: Mapping[str, str] | None = None,
    *,
    idempotency_key: str | None = None,
) -> Program[Payment]:
    """The customer is back from a redirect (3-D Secure, the bank of an open-banking consent):
    finish the payment with the ``parameters`` the return URL carried (``code``, ``state``,
    ``error``, ...). An open-banking payment is then submitted: ``pending``, ``captured`` or
    ``declined`` (a consent the customer refused has ``decline.code == "consent_rejected"``).
    """
    payload = {"parameters": dict(parameters or {})}
    path = _payment_path(payment_id, "complete")
    payment: Payment = yield _post(path, payload, Payment.model_validate, idempotency_key)
    return payment


def _payment_or_none(data: Any) -> Payment | None:
    if isinstance(data, dict) and str(data.get("id", "")).startswith("pay_"):
        return Payment.model_validate(data)
    return None


def _http_options(base_url: str, api_key: str, timeout: float) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "headers": {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": _USER_AGENT,
        },
        "timeout": httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        "follow_redirects": False,
    }


def _no_response(call: _Call[Any]) -> TesseraConnectionError:
    return TesseraConnectionError(f"No response from Tessera for {call.method} {call.path}.")


def _blocking(factory: Callable[P, Program[T]]) -> Callable[Concatenate[TesseraClient, P], T]:
    @functools.wraps(factory)
    def method(self: TesseraClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(factory(*args, **kwargs))

    return method


def _awaitable(
    factory: Callable[P, Program[T]],
) -> Callable[Concatenate[AsyncTesseraClient, P], Awaitable[T]]:
    @functools.wraps(factory)
    async def method(self: AsyncTesseraClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(factory(*args, **kwargs))

    return method


# -- the clients --------------------------------------------------------------------------------


class TesseraClient:
    """The merchant API, synchronously. Use as a context manager or call ``close()``.

    ``transport`` replaces httpx's (tests use a mock); ``sleep`` is how the client waits between
    retries (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_retry_delay: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._retry = _RetryPolicy(max(0, max_retries), max_retry_delay)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **_http_options(base_url, api_key, timeout))

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    tokenize = _blocking(_tokenize)
    create_payment = _blocking(_create_payment)
    complete = _blocking(_complete)
    capture = _blocking(_capture)
    void = _blocking(_void)
    refund = _blocking(_refund)
    get_payment = _blocking(_get_payment)

    def _run(self, program: Program[T]) -> T:
        try:
            call = next(program)
            while True:
                call = program.send(self._execute(call))
        except StopIteration as done:
            result: T = done.value
            return result

    def _execute(self, call: _Call[T]) -> T:
        retry = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, content=call.body, headers=call.headers()
                )
            except httpx.TransportError as exc:
                wait = self._retry.after_error(retry)
                if wait is None:
                    raise _no_response(call) from exc
                _log_retry(call, retry, wait, type(exc).__name__)
            else:
                wait = self._retry.after_response(retry, response)
                if wait is None:
                    return _result(call, response)
                _log_retry(call, retry, wait, f"HTTP {response.status_code}")
            self._sleep(wait)
            retry += 1


class AsyncTesseraClient:
    """The merchant API for asyncio: the same methods as ``TesseraClient``, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_retry_delay: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._retry = _RetryPolicy(max(0, max_retries), max_retry_delay)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            transport=transport, **_http_options(base_url, api_key, timeout)
        )

    async def __aenter__(self) -> AsyncTesseraClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    tokenize = _awaitable(_tokenize)
    create_payment = _awaitable(_create_payment)
    complete = _awaitable(_complete)
    capture = _awaitable(_capture)
    void = _awaitable(_void)
    refund = _awaitable(_refund)
    get_payment = _awaitable(_get_payment)

    async def _run(self, program: Program[T]) -> T:
        try:
            call = next(program)
            while True:
                call = program.send(await self._execute(call))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _execute(self, call: _Call[T]) -> T:
        retry = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, content=call.body, headers=call.headers()
                )
            except httpx.TransportError as exc:
                wait = self._retry.after_error(retry)
                if wait is None:
                    raise _no_response(call) from exc
                _log_retry(call, retry, wait, type(exc).__name__)
            else:
                wait = self._retry.after_response(retry, response)
                if wait is None:
                    return _result(call, response)
                _log_retry(call, retry, wait, f"HTTP {response.status_code}")
            await self._sleep(wait)
            retry += 1
