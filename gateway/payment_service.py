"""The payments service: from a merchant's request to a connector call and back, exactly once.

``PaymentService`` is what the payment views call. For each operation it

1. loads the payment and checks the move against the state machine before any network call
   (an illegal capture is a 409 that never reaches a provider);
2. records an attempt **before** sending (its provider idempotency key is derived from merchant,
   payment, attempt number and operation, so a retry after a crash re-sends the same key);
3. calls the connector through its ``ConnectorRuntime`` (breaker, bulkhead, deadline, retries);
4. records the outcome, and moves the payment through the state machine in one transaction with
   the merchant notification (outbox).

Failover (authorize only): the next routed connector is tried only when nothing was sent
(``not_sent``, breaker open, bulkhead full). ``unknown`` stops the payment where it is: the
reconciler (``reconcile``) settles it by replaying the attempt with the same provider key where
the connector honours idempotency keys, or by a sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.connector_pool import ConnectorPool, reveal_scope
from gateway.merchants import Merchant
from gateway.payments import (
    AttemptRecord,
    IdempotencyClaim,
    Outbox,
    PaymentMethodSummary,
    PaymentRecord,
    PaymentStore,
    RefundRecord,
    RefundStatus,
)
from gateway.routing import RouteQuery, Router
from gateway.tracing import span
from normalization import (
    AuthorizeRequest,
    Capture,
    CaptureRequest,
    CardMethod,
    ConnectorBusyError,
    ConnectorUnavailableError,
    IllegalTransitionError,
    Money,
    Outcome,
    PaymentResult,
    PaymentStatus,
    Refund,
    RefundRequest,
    SyncRequest,
    TesseraError,
    Void,
    VoidRequest,
    transition,
)
from normalization.methods import PaymentMethod, PaymentMethodType
from sdk import CompleteAuthorizationRequest, Deadline, Operation
from sdk.webhooks import WebhookEvent
from vault.database import Connection, PostgresDatabase, SqliteDatabase
from vault.tokenization import TokenizationService

__all__ = ["NewPayment", "OperationOutcome", "PaymentService"]

log = structlog.get_logger("tessera.payments")


@dataclass(frozen=True, slots=True)
class NewPayment:
    """A validated ``POST /v1/payments`` body."""

    amount: Money
    payment_method: PaymentMethod
    capture: bool = False
    connector: str | None = None
    reference: str | None = None
    metadata: Mapping[str, str] | None = None
    return_url: str | None = None
    description: str | None = None
    country: str | None = None


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """A follow-up operation's result: the payment after it, and the attempt that did it."""

    payment: PaymentRecord
    attempt: AttemptRecord
    result: PaymentResult
    refund: RefundRecord | None = None


class PaymentService:
    def __init__(
        self,
        db: SqliteDatabase | PostgresDatabase,
        store: PaymentStore,
        tokens: TokenizationService,
        pool: ConnectorPool,
        router: Router,
        outbox: Outbox,
    ) -> None:
        self._db = db
        self._store = store
        self._tokens = tokens
        self._pool = pool
        self._router = router
        self._outbox = outbox

    # -- create ---------------------------------------------------------------------------------

    async def create(
        self,
        merchant: Merchant,
        new: NewPayment,
        *,
        claim: IdempotencyClaim,
        correlation_id: str | None = None,
    ) -> PaymentRecord:
        """Create and authorize (or purchase) a payment; resumes a crashed earlier run."""
        if claim.resource_id is not None:
            payment = await self._store.get_payment(merchant.id, claim.resource_id)
            if not await self._refused_everywhere(payment):
                return await self._resume(merchant, payment, new, correlation_id)
            # The earlier run answered 503: every connector refused before sending. That payment
            # stays failed (nothing reached a provider); this retry is a new payment.
        method, summary, route = await self._prepare_method(merchant, new)
        candidates = self._router.candidates(route)
        async with self._db.transaction() as tx:
            payment = await self._store.create_payment(
                merchant.id,
                new.amount,
                payment_method=summary,
                capture=new.capture,
                connector=candidates[0],
                reference=new.reference,
                metadata=new.metadata,
                return_url=new.return_url,
                tx=tx,
            )
            await claim.bind_resource(payment.id, tx=tx)
        return await self._authorize(merchant, payment, new, method, candidates, correlation_id)

    async def _refused_everywhere(self, payment: PaymentRecord) -> bool:
        if payment.status is not PaymentStatus.FAILED:
            return False
        attempts = await self._store.attempts(payment.id)
        return bool(attempts) and all(a.outcome is Outcome.NOT_SENT for a in attempts)

    async def _prepare_method(
        self, merchant: Merchant, new: NewPayment
    ) -> tuple[PaymentMethod, PaymentMethodSummary, RouteQuery]:
        method = new.payment_method
        brand = bin_ = None
        if isinstance(method, CardMethod):
            if method.card is not None:
                record, _ = await self._tokens.tokenize(
                    merchant.id, method.card, dedup=merchant.token_dedup
                )
            else:
                assert method.token is not None
                record = await self._tokens.get(merchant.id, method.token)
            brand, bin_ = record.brand, record.bin or None
            summary = PaymentMethodSummary.of(
                method, token=record.id, brand=record.brand, last4=record.last4
            )
            method = CardMethod(token=record.id)
        else:
            summary = PaymentMethodSummary.of(method)
        route = RouteQuery(
            merchant_id=merchant.id,
            method=PaymentMethodType(method.type),
            currency=new.amount.currency,
            amount=new.amount.value,
            country=new.country,
            brand=brand,
            bin=bin_,
            connector=new.connector,
        )
        return method, summary, route

    def _authorize_request(
        self, payment: PaymentRecord, new: NewPayment, method: PaymentMethod, key: str
    ) -> AuthorizeRequest:
        return AuthorizeRequest(
            amount=payment.amount,
            payment_method=method,
            capture=payment.capture,
            return_url=payment.return_url,
            description=new.description,
            country=new.country,
            # The provider-facing reference is the payment id: unique, so a connector can find
            # an authorization whose answer was lost (sync by reference) without ambiguity.
            reference=payment.id,
            idempotency_key=key,
            metadata=dict(payment.metadata),
        )

    async def _authorize(
        self,
        merchant: Merchant,
        payment: PaymentRecord,
        new: NewPayment,
        method: PaymentMethod,
        candidates: list[str],
        correlation_id: str | None,
    ) -> PaymentRecord:
        result = PaymentResult.not_sent()
        rejection: TesseraError | None = None
        connector_id = candidates[0]
        # One reveal for the whole authorization: a candidate that revealed the card and then
        # could not connect must not have consumed the CVV the next candidate needs.
        with reveal_scope():
            for connector_id in candidates:
                attempt = await self._store.start_attempt(
                    payment, connector_id, Operation.AUTHORIZE.value, amount=payment.amount
                )
                request = self._authorize_request(
                    payment, new, method, attempt.provider_idempotency_key
                )
                error_code: str | None = None
                try:
                    result = await self._invoke(
                        merchant.id, connector_id, Operation.AUTHORIZE, request, correlation_id
                    )
                    rejection = None
                except TesseraError as exc:  # raised by the runtime only when nothing was sent
                    result, error_code, rejection = PaymentResult.not_sent(), exc.code, exc
                await self._store.finish_attempt(attempt.id, result, error_code=error_code)
                if result.outcome is not Outcome.NOT_SENT:
                    break
                log.info("failover", payment_id=payment.id, connector=connector_id, code=error_code)
        payment = await self._settle(payment, result, connector=connector_id)
        if isinstance(rejection, ConnectorBusyError | ConnectorUnavailableError):
            # Every connector refused before sending (bulkhead full, breaker open): a fast 503
            # the merchant may retry, rather than a payment that merely failed.
            raise rejection
        return payment

    async def _resume(
        self,
        merchant: Merchant,
        payment: PaymentRecord,
        new: NewPayment,
        correlation_id: str | None,
    ) -> PaymentRecord:
        """A retry after the first run's process died: finish that run, never start another.

        An attempt left open (sent, answer never recorded) is reconciled, which replays it with
        the same provider idempotency key; a payment that died before its first attempt is
        authorized now, on the connector it was routed to.
        """
        attempts = [a for a in await self._store.attempts(payment.id) if a.operation == "authorize"]
        open_attempt = next((a for a in reversed(attempts) if a.needs_reconciliation), None)
        if open_attempt is not None:
            await self.reconcile(open_attempt, correlation_id=correlation_id)
            return await self._store.get_payment(merchant.id, payment.id)
        if payment.status is None and not attempts and payment.connector is not None:
            method: PaymentMethod = new.payment_method
            if payment.payment_method.token is not None:
                method = CardMethod(token=payment.payment_method.token)
            return await self._authorize(
                merchant, payment, new, method, [payment.connector], correlation_id
            )
        return payment

    # -- follow-up operations -----------------------------------------------------------------

    async def capture(
        self,
        merchant: Merchant,
        payment_id: str,
        amount: Money | None,
        *,
        correlation_id: str | None = None,
    ) -> OperationOutcome:
        payment = await self._store.get_payment(merchant.id, payment_id)
        # Omitted: the rest. Nothing left: the full amount, so the state check says why (409).
        amount = amount or Money.of(
            payment.state.capturable or payment.amount.value, payment.amount.currency
        )
        transition(payment.state, Capture(amount))  # 409/422 before any network call
        attempt, result = await self._follow_up(
            merchant, payment, Operation.CAPTURE, correlation_id, amount=amount,
            build=lambda key: CaptureRequest(
                payment_id=payment.id, provider_reference=payment.provider_reference,
                amount=amount, final=False, idempotency_key=key, reference=payment.reference,
            ),
        )  # fmt: skip
        if result.outcome is Outcome.SUCCEEDED:
            payment = await self._settle(payment, result, event=Capture(amount))
        return OperationOutcome(payment, attempt, result)

    async def void(
        self, merchant: Merchant, payment_id: str, *, correlation_id: str | None = None
    ) -> OperationOutcome:
        payment = await self._store.get_payment(merchant.id, payment_id)
        transition(payment.state, Void())
        attempt, result = await self._follow_up(
            merchant, payment, Operation.VOID, correlation_id,
            build=lambda key: VoidRequest(
                payment_id=payment.id, provider_reference=payment.provider_reference,
                idempotency_key=key, reference=payment.reference,
            ),
        )  # fmt: skip
        if result.outcome is Outcome.SUCCEEDED:
            payment = await self._settle(payment, result, event=Void())
        return OperationOutcome(payment, attempt, result)

    async def refund(
        self,
        merchant: Merchant,
        payment_id: str,
        amount: Money | None,
        *,
        correlation_id: str | None = None,
    ) -> OperationOutcome:
        payment = await self._store.get_payment(merchant.id, payment_id)
        amount = amount or Money.of(
            payment.state.refundable or payment.amount.value, payment.amount.currency
        )
        transition(payment.state, Refund(amount))
        refund = await self._store.add_refund(payment, amount)
        try:
            attempt, result = await self._follow_up(
                merchant, payment, Operation.REFUND, correlation_id, amount=amount,
                refund_id=refund.id,
                build=lambda key: RefundRequest(
                    payment_id=payment.id, provider_reference=payment.provider_reference,
                    amount=amount, idempotency_key=key, reference=payment.reference,
                ),
            )  # fmt: skip
        except TesseraError:
            await self._store.update_refund(refund.id, status=RefundStatus.FAILED)
            raise
        refund = await self._finish_refund(refund.id, result)
        if result.outcome is Outcome.SUCCEEDED and result.status is not PaymentStatus.PENDING:
            payment = await self._settle(payment, result, event=Refund(amount))
        return OperationOutcome(payment, attempt, result, refund)

    async def _finish_refund(self, refund_id: str, result: PaymentResult) -> RefundRecord:
        if result.outcome is Outcome.SUCCEEDED:
            status = (
                RefundStatus.PENDING
                if result.status is PaymentStatus.PENDING
                else RefundStatus.SUCCEEDED
            )
        elif result.outcome is Outcome.UNKNOWN:
            status = RefundStatus.PENDING
        else:
            status = RefundStatus.FAILED
        return await self._store.update_refund(
            refund_id, status=status, provider_reference=result.provider_reference
        )

    async def sync(
        self, merchant: Merchant, payment_id: str, *, correlation_id: str | None = None
    ) -> PaymentRecord:
        """Ask the provider for the payment's state and converge on it."""
        payment = await self._store.get_payment(merchant.id, payment_id)
        if payment.connector is None or payment.provider_reference is None:
            return payment
        _, result = await self._follow_up(
            merchant, payment, Operation.SYNC, correlation_id,
            build=lambda key: SyncRequest(
                payment_id=payment.id, provider_reference=payment.provider_reference,
                idempotency_key=key,
            ),
        )  # fmt: skip
        if result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED):
            payment = await self._observe(payment, result)
        return payment

    async def complete(
        self,
        merchant: Merchant,
        payment_id: str,
        params: Mapping[str, str],
        *,
        correlation_id: str | None = None,
    ) -> PaymentRecord:
        """The customer is back from a redirect (3-D Secure, bank): finish the authorization."""
        payment = await self._store.get_payment(merchant.id, payment_id)
        if payment.status is not PaymentStatus.REQUIRES_ACTION or payment.connector is None:
            raise IllegalTransitionError(
                f"Only a payment that requires action can be completed; this one is "
                f"{payment.status.value if payment.status else 'new'}."
            )
        manifest = self._pool.manifest(payment.connector)
        if not manifest.supports(Operation.COMPLETE_AUTHORIZATION):
            return await self.sync(merchant, payment_id, correlation_id=correlation_id)
        _, result = await self._follow_up(
            merchant, payment, Operation.COMPLETE_AUTHORIZATION, correlation_id,
            build=lambda key: CompleteAuthorizationRequest(
                payment_id=payment.id, provider_reference=payment.provider_reference,
                callback_parameters=dict(params), idempotency_key=key,
            ),
        )  # fmt: skip
        if result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED):
            payment = await self._observe(payment, result)
        return payment

    # -- reconciliation -------------------------------------------------------------------------

    async def reconcile(self, attempt: AttemptRecord, *, correlation_id: str | None = None) -> bool:
        """Try to settle one open attempt (``unknown``, ``pending`` or never answered).

        The connector's ``sync`` is asked for the truth: by provider reference, or, for an
        authorization whose answer was lost before any reference came back, by the payment id
        it was sent with. A connector without ``sync`` gets the attempt replayed with its own
        provider idempotency key (the provider answers with what it did the first time). True
        when the attempt is final now; otherwise it is scheduled again with backoff.
        """
        merchant_id = await self._db.fetchval(
            "SELECT merchant_id FROM payments WHERE id = $1", attempt.payment_id
        )
        payment = await self._store.get_payment(str(merchant_id), attempt.payment_id)
        manifest = self._pool.manifest(attempt.connector)
        token = payment.payment_method.token
        if manifest.supports(Operation.SYNC):
            sync = SyncRequest(
                payment_id=payment.id,
                provider_reference=attempt.provider_reference or payment.provider_reference,
                reference=payment.id,
            )
            result = await self._invoke(
                payment.merchant_id, attempt.connector, Operation.SYNC, sync, correlation_id
            )
            if result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED):
                await self._store.finish_attempt(attempt.id, result)
        elif attempt.operation == "authorize" and manifest.idempotency is not None and token:
            new = NewPayment(amount=payment.amount, payment_method=CardMethod(token=token))
            request = self._authorize_request(
                payment, new, new.payment_method, attempt.provider_idempotency_key
            )
            result, _ = await self._call(
                payment.merchant_id, attempt, Operation.AUTHORIZE, request, correlation_id
            )
        else:
            await self._store.schedule_reconcile(attempt.id)
            return False
        if result.outcome in (Outcome.UNKNOWN, Outcome.NOT_SENT) or (
            result.status is PaymentStatus.PENDING
        ):
            await self._store.schedule_reconcile(attempt.id)
            return False
        if attempt.operation == "authorize":
            await self._settle(payment, result, connector=attempt.connector)
        else:
            await self._observe(payment, result)
        if attempt.refund_id is not None:
            await self._finish_refund(attempt.refund_id, result)
        return True

    async def apply_webhook_event(self, connector_id: str, event: WebhookEvent) -> bool:
        """Converge the payment an event is about on the state it reports; True if it did."""
        if event.result is None or event.provider_reference is None:
            return False
        payment = await self._store.find_by_provider_reference(
            connector_id, event.provider_reference
        )
        if payment is None:
            log.info("webhook_for_unknown_payment", connector=connector_id, event=event.event_type)
            return False
        for attempt in await self._store.attempts(payment.id):
            settles = event.result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED)
            ours = attempt.provider_reference in (None, event.provider_reference)
            if settles and ours and attempt.needs_reconciliation:
                await self._store.finish_attempt(attempt.id, event.result)
        before = payment.status
        updated = await self._observe(payment, event.result)
        return updated.status != before

    # -- plumbing -------------------------------------------------------------------------------

    async def _follow_up(
        self,
        merchant: Merchant,
        payment: PaymentRecord,
        operation: Operation,
        correlation_id: str | None,
        *,
        build: Any,
        amount: Money | None = None,
        refund_id: str | None = None,
    ) -> tuple[AttemptRecord, PaymentResult]:
        if payment.connector is None:
            raise IllegalTransitionError("The payment has no connector yet.")
        attempt = await self._store.start_attempt(
            payment, payment.connector, operation.value, amount=amount, refund_id=refund_id
        )
        request = build(attempt.provider_idempotency_key)
        result, attempt = await self._call(merchant.id, attempt, operation, request, correlation_id)
        return attempt, result

    async def _invoke(
        self,
        tenant: str,
        connector_id: str,
        operation: Operation,
        request: Any,
        correlation_id: str | None,
    ) -> PaymentResult:
        runtime = self._pool.runtime(connector_id)
        config = self._pool.config(connector_id)
        with span(
            f"connector {operation.value}", connector=connector_id, operation=operation.value
        ) as current:
            result = await runtime.invoke(
                operation,
                request,
                deadline=Deadline.after(config.deadline_seconds),
                tenant=tenant,
                correlation_id=correlation_id,
            )
            if current is not None:
                current.set_attribute("outcome", result.outcome.value)
        return result

    async def _call(
        self,
        tenant: str,
        attempt: AttemptRecord,
        operation: Operation,
        request: Any,
        correlation_id: str | None,
    ) -> tuple[PaymentResult, AttemptRecord]:
        """Invoke and record. Errors the runtime raises mean nothing was sent: ``not_sent``."""
        error_code: str | None = None
        try:
            result = await self._invoke(
                tenant, attempt.connector, operation, request, correlation_id
            )
        except TesseraError as exc:
            result, error_code = PaymentResult.not_sent(), exc.code
            await self._store.finish_attempt(attempt.id, result, error_code=error_code)
            raise
        attempt = await self._store.finish_attempt(attempt.id, result, error_code=error_code)
        return result, attempt

    async def _settle(
        self,
        payment: PaymentRecord,
        result: PaymentResult,
        *,
        connector: str | None = None,
        event: Capture | Void | Refund | None = None,
    ) -> PaymentRecord:
        """Apply an authorization result (or a follow-up's event) and notify, atomically."""
        changes: dict[str, Any] = {}
        if connector is not None:
            changes["connector"] = connector
        if event is None:
            changes.update(
                provider_reference=result.provider_reference or payment.provider_reference,
                next_action=result.next_action,
                decline=result.decline,
            )
        async with self._db.transaction() as tx:
            updated = await self._store.apply(
                payment, event if event is not None else result.status, retries=3, tx=tx, **changes
            )
            await self._notify(tx, payment, updated)
        return updated

    async def _observe(self, payment: PaymentRecord, result: PaymentResult) -> PaymentRecord:
        """Converge on a status a provider reported (sync, webhook); ignore impossible ones."""
        try:
            async with self._db.transaction() as tx:
                updated = await self._store.apply(
                    payment,
                    result.status,
                    retries=3,
                    next_action=result.next_action,
                    decline=result.decline or payment.decline,
                    provider_reference=result.provider_reference or payment.provider_reference,
                    tx=tx,
                )
                await self._notify(tx, payment, updated)
        except IllegalTransitionError:
            log.warning(
                "provider_status_ignored",
                payment_id=payment.id,
                current=payment.status.value if payment.status else None,
                reported=result.status.value,
            )
            return payment
        return updated

    async def _notify(self, tx: Connection, before: PaymentRecord, after: PaymentRecord) -> None:
        if after.status is None or after.status == before.status:
            return
        await self._outbox.enqueue(
            tx,
            after.merchant_id,
            f"payment.{after.status.value}",
            {
                "id": after.id,
                "status": after.status.value,
                "amount": after.amount.model_dump(),
                "captured": after.captured,
                "refunded": after.refunded,
                "reference": after.reference,
            },
        )
