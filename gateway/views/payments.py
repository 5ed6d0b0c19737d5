"""``/v1/payments``: create (authorize or purchase), capture, void, refund, sync, complete, read.

Every POST runs under the merchant's ``Idempotency-Key`` (Stripe's semantics, see
``gateway.payments.idempotency``): the response is stored and replayed byte for byte.

Follow-up responses: 200 with the payment when the provider did it; 202 when the outcome is
``unknown`` (the reconciler will settle it; do not retry with a new key); 402
``operation_declined`` when the provider refused; 503 when nothing was sent (safe to retry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web

from gateway.app import MERCHANT, REQUEST_ID, RESOURCES
from gateway.http import json_response, parse_model, read_body
from gateway.merchants import Merchant
from gateway.pagination import page_body, page_request, split_page
from gateway.payment_service import NewPayment, OperationOutcome
from gateway.payments import (
    AttemptRecord,
    HandlerResult,
    IdempotencyClaim,
    PaymentRecord,
    RefundRecord,
)
from gateway.problems import PROBLEM_CONTENT_TYPE, HttpProblem, problem_response
from gateway.schemas import (
    CONTROL_CHARACTERS,
    AmountRequest,
    CaptureBody,
    CompleteRequest,
    CreatePaymentRequest,
    EmptyRequest,
)
from normalization import Money, Outcome
from normalization.errors import IllegalTransitionError, PaymentNotFoundError
from sdk import Operation

__all__ = ["payment_view", "setup"]


def _money(value: int, currency: str) -> dict[str, Any]:
    return {"value": value, "currency": currency}


def _attempt_view(a: AttemptRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "connector": a.connector,
        "operation": a.operation,
        "outcome": a.outcome.value if a.outcome else None,
        "status": a.status.value if a.status else None,
        "error_code": a.error_code,
        "provider_reference": a.provider_reference,
        "amount": a.amount.model_dump() if a.amount else None,
        "started_at": a.started_at.isoformat(),
        "finished_at": a.finished_at.isoformat() if a.finished_at else None,
    }


def _refund_view(r: RefundRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "amount": r.amount.model_dump(),
        "status": r.status.value,
        "provider_reference": r.provider_reference,
        "created_at": r.created_at.isoformat(),
    }


def payment_view(
    p: PaymentRecord, attempts: list[AttemptRecord], refunds: list[RefundRecord]
) -> dict[str, Any]:
    currency = p.amount.currency
    return {
        "id": p.id,
        # None: created, no connector has answered yet (a request still running).
        "status": p.status.value if p.status else "pending",
        "connector": p.connector,
        "amount": p.amount.model_dump(),
        "captured": _money(p.captured, currency),
        "refunded": _money(p.refunded, currency),
        "capture": p.capture,
        "reference": p.reference,
        "metadata": p.metadata,
        "payment_method": {k: v for k, v in p.payment_method.to_json().items() if v is not None},
        "return_url": p.return_url,
        "provider_reference": p.provider_reference,
        "next_action": p.next_action.model_dump() if p.next_action else None,
        "decline": p.decline.model_dump() if p.decline else None,
        "attempts": [_attempt_view(a) for a in attempts],
        "refunds": [_refund_view(r) for r in refunds],
        "created_at": p.created_at.isoformat(),
        "updated_at": p.updated_at.isoformat(),
    }


async def _view(
    request: web.Request, payment: PaymentRecord, attempts: list[AttemptRecord] | None = None
) -> dict[str, Any]:
    """The payment as answered; ``attempts`` given: all of them, and it has no refunds (a
    payment this request created), so nothing is read back."""
    if attempts is not None:
        return payment_view(payment, attempts, [])
    store = request.app[RESOURCES].payment_store
    return payment_view(payment, await store.attempts(payment.id), await store.refunds(payment.id))


Handler = Callable[[IdempotencyClaim, bytes], Awaitable[HandlerResult]]


async def _idempotent(request: web.Request, handler: Handler) -> web.Response:
    resources = request.app[RESOURCES]
    merchant = request[MERCHANT]
    server = resources.settings.server
    body = await read_body(
        request, read_timeout=server.read_timeout, max_size=server.client_max_size, optional=True
    )
    key = request.headers.get("Idempotency-Key")

    async def guarded(claim: IdempotencyClaim) -> HandlerResult:
        try:
            return await handler(claim, body)
        except IllegalTransitionError as exc:
            # What the payment's state refuses (a refund of an uncaptured payment, more than
            # is capturable) is the request's answer, stored as Stripe stores an answer once
            # the request has begun: a retry with the key gets this 409 again rather than
            # running on whatever the payment has become since. Validation errors (422, before
            # anything ran), conflicts with a concurrent operation (409
            # ``operation_in_progress``), refusals that wait on something still open (a refund
            # that fits once pending refunds fail: ``Retry-After``) and outages (5xx) are not
            # stored: a retry runs.
            if exc.retry_after is not None:
                raise
            problem = problem_response(409, exc.code, exc.detail, request_id=request[REQUEST_ID])
            return HandlerResult(
                409, cast(bytes, problem.body), {"Content-Type": PROBLEM_CONTENT_TYPE}
            )

    response = await resources.idempotency.run(
        merchant.id, key, request.method, request.path, body, guarded
    )
    headers = dict(response.headers)
    if response.replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.Response(status=response.status, body=response.body, headers=headers)


def _json_result(status: int, data: Any) -> HandlerResult:
    return HandlerResult(status, orjson.dumps(data), {"Content-Type": "application/json"})


async def _outcome_result(
    request: web.Request, outcome: OperationOutcome, success_status: int = 200
) -> HandlerResult:
    view = await _view(request, outcome.payment)
    if outcome.result.outcome is Outcome.DECLINED:
        decline = outcome.result.decline
        problem = problem_response(
            402,
            "operation_declined",
            f"The provider declined the {outcome.attempt.operation}.",
            request_id=request[REQUEST_ID],
            decline=decline.model_dump() if decline else None,
            payment=view,
        )
        return HandlerResult(402, cast(bytes, problem.body), {"Content-Type": PROBLEM_CONTENT_TYPE})
    if outcome.result.outcome is Outcome.UNKNOWN:
        return _json_result(202, view)
    return _json_result(success_status, view)


#: Calls on a payment after its authorization: not what a ``complete`` answers for.
_FOLLOW_UPS = frozenset(
    op.value for op in (Operation.CAPTURE, Operation.VOID, Operation.REFUND, Operation.SYNC)
)


def _merchant(request: web.Request) -> Merchant:
    return request[MERCHANT]


_ID_MAX = 100
_REFERENCE_MAX = 128


def _payment_id(request: web.Request) -> str:
    """The path's payment id; one that cannot exist is 404 before any store is asked."""
    payment_id = request.match_info["payment_id"]
    # Control characters are never in an id the gateway made (and PostgreSQL refuses NUL in
    # text: a 500).
    if len(payment_id) > _ID_MAX or CONTROL_CHARACTERS.search(payment_id):
        raise PaymentNotFoundError()
    return payment_id


async def create_payment(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    merchant = _merchant(request)

    async def handler(claim: IdempotencyClaim, body: bytes) -> HandlerResult:
        data = parse_model(CreatePaymentRequest, body)
        new = NewPayment(
            amount=data.amount,
            payment_method=data.payment_method,
            capture=data.capture,
            connector=data.connector,
            reference=data.reference,
            metadata=data.metadata,
            return_url=data.return_url,
            description=data.description,
            country=data.country,
        )
        created = await resources.payments.create(
            merchant, new, claim=claim, correlation_id=request[REQUEST_ID]
        )
        return _json_result(201, await _view(request, created.payment, created.attempts))

    return await _idempotent(request, handler)


def _amount(body: bytes) -> Money | None:
    return parse_model(AmountRequest, body).amount if body.strip() else None


def _no_fields(body: bytes) -> None:
    """Void and sync take no fields: a body may be absent or ``{}``, nothing else."""
    if body.strip():
        parse_model(EmptyRequest, body)


async def capture_payment(request: web.Request) -> web.Response:
    resources, merchant = request.app[RESOURCES], _merchant(request)
    payment_id = _payment_id(request)

    async def handler(claim: IdempotencyClaim, body: bytes) -> HandlerResult:
        data = parse_model(CaptureBody, body) if body.strip() else CaptureBody()
        outcome = await resources.payments.capture(
            merchant, payment_id, data.amount, final=data.final, correlation_id=request[REQUEST_ID]
        )
        return await _outcome_result(request, outcome)

    return await _idempotent(request, handler)


async def void_payment(request: web.Request) -> web.Response:
    resources, merchant = request.app[RESOURCES], _merchant(request)
    payment_id = _payment_id(request)

    async def handler(claim: IdempotencyClaim, body: bytes) -> HandlerResult:
        _no_fields(body)
        outcome = await resources.payments.void(
            merchant, payment_id, correlation_id=request[REQUEST_ID]
        )
        return await _outcome_result(request, outcome)

    return await _idempotent(request, handler)


async def refund_payment(request: web.Request) -> web.Response:
    resources, merchant = request.app[RESOURCES], _merchant(request)
    payment_id = _payment_id(request)

    async def handler(claim: IdempotencyClaim, body: bytes) -> HandlerResult:
        outcome = await resources.payments.refund(
            merchant, payment_id, _amount(body), correlation_id=request[REQUEST_ID]
        )
        return await _outcome_result(request, outcome, success_status=201)

    return await _idempotent(request, handler)


async def sync_payment(request: web.Request) -> web.Response:
    resources, merchant = request.app[RESOURCES], _merchant(request)
    payment_id = _payment_id(request)

    async def handler(claim: IdempotencyClaim, body: bytes) -> HandlerResult:
        _no_fields(body)
        payment = await resources.payments.sync(
            merchant, payment_id, correlation_id=request[REQUEST_ID]
        )
        return _json_result(200, await _view(request, payment))

    return await _idempotent(request, handler)


async def complete_payment(request: web.Request) -> web.Response:
    resources, merchant = request.app[RESOURCES], _merchant(request)
    payment_id = _payment_id(request)

    async def handler(claim: IdempotencyClaim, body: bytes) -> HandlerResult:
        params = parse_model(CompleteRequest, body).parameters if body.strip() else {}
        payment = await resources.payments.complete(
            merchant, payment_id, params, correlation_id=request[REQUEST_ID]
        )
        view = await _view(request, payment)
        # As for capture, void and refund: 202 while the call's outcome is unknown (the
        # authorization's calls only: a payment that moved on may have, say, a refund open).
        attempts = [a for a in view["attempts"] if a["operation"] not in _FOLLOW_UPS]
        unknown = bool(attempts) and attempts[-1]["outcome"] == Outcome.UNKNOWN.value
        return _json_result(202 if unknown else 200, view)

    return await _idempotent(request, handler)


async def get_payment(request: web.Request) -> web.Response:
    store = request.app[RESOURCES].payment_store
    payment = await store.get_payment(_merchant(request).id, _payment_id(request))
    return json_response(await _view(request, payment))


async def list_payments(request: web.Request) -> web.Response:
    reference = request.query.get("reference", "")
    # NUL: no stored reference holds one, and PostgreSQL would refuse the query (a 500).
    if not reference or len(reference) > _REFERENCE_MAX or "\x00" in reference:
        raise HttpProblem(
            400,
            "reference_required",
            "List payments with ?reference=<reference> (1-128 characters, no NUL).",
        )
    page = page_request(request.query)
    store = request.app[RESOURCES].payment_store
    payments = await store.find_by_reference(
        _merchant(request).id, reference, after=page.after, limit=page.fetch
    )
    shown, next_cursor = split_page(payments, page)
    return json_response(page_body([await _view(request, p) for p in shown], next_cursor))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/payments", create_payment)
    app.router.add_get("/v1/payments", list_payments)
    app.router.add_get("/v1/payments/{payment_id}", get_payment)
    app.router.add_post("/v1/payments/{payment_id}/capture", capture_payment)
    app.router.add_post("/v1/payments/{payment_id}/void", void_payment)
    app.router.add_post("/v1/payments/{payment_id}/refunds", refund_payment)
    app.router.add_post("/v1/payments/{payment_id}/sync", sync_payment)
    app.router.add_post("/v1/payments/{payment_id}/complete", complete_payment)
