"""The payments service: from a merchant's request to a connector call and back, exactly once.

``PaymentService`` is what the payment views call. For each operation it

1. loads the payment and checks the move against the state machine before any network call
   (an illegal capture is a 409 that never reaches a provider);
2. records an attempt **before** sending (its provider idempotency key is derived from merchant,
   payment, attempt number and operation, so a retry after a crash re-sends the same key);
3. calls the connector through its ``ConnectorRuntime`` (breaker, bulkhead, deadline, retries);
4. records the outcome, and moves the payment through the state machine in one transaction with
   the merchant notification (outbox).

Failover (the first operation only): the next routed connector is tried only when nothing was
sent (``not_sent``, breaker open, bulkhead full). ``unknown`` stops the payment where it is: the
reconciler (``reconcile``) settles it by replaying the attempt with the same provider key where
the connector honours idempotency keys, or by a sync.

The first operation depends on the payment method (``gateway.routing.CREATE_OPERATIONS``): a card
is authorized; a bank account is authorized, or debited on a bank rail (``pending`` until sync or
a webhook settles it); an open-banking payer gets a consent (``requires_action`` with the bank's
redirect). ``complete`` then sends ``complete_authorization`` with the bank's callback and, once
the consent is authorized, ``submit`` (its own attempt and provider key, started in the same
transaction that records the authorization): the payment goes from ``requires_action`` straight
to the submission's result. A submit whose answer was lost, or that never left, stays an open
attempt: reconciliation syncs the consent and replays the submit with the same provider key only
when the consent is authorized and carries no payment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from gateway.connector_pool import ConnectorPool, reveal_scope
from gateway.merchants import Merchant
from gateway.payments import (
    AttemptRecord,
    IdempotencyClaim,
    OperationInProgressError,
    Outbox,
    PaymentMethodSummary,
    PaymentRecord,
    PaymentStore,
    RefundRecord,
    RefundStatus,
)
from gateway.payments.records import ConcurrentUpdateError
from gateway.routing import CREATE_OPERATIONS, RouteQuery, Router
from gateway.tracing import span
from normalization import (
    AuthorizeRequest,
    Capture,
    CaptureRequest,
    CardMethod,
    ConnectorBusyError,
    ConnectorUnavailableError,
    ConsentRequest,
    DebitRequest,
    DeclineCode,
    IllegalTransitionError,
    InvalidRequestError,
    Money,
    MultipleRefundsNotSupportedError,
    Observe,
    Outcome,
    PartialCaptureNotSupportedError,
    PartialRefundNotSupportedError,
    PaymentResult,
    PaymentStatus,
    Refund,
    RefundExceedsCapturedError,
    RefundRequest,
    SyncRequest,
    TesseraError,
    TokenIntegrityError,
    VaultSealedError,
    VaultUnavailableError,
    Void,
    VoidRequest,
    contains_pan,
    transition,
)
from normalization.methods import (
    BankAccountMethod,
    OpenBankingMethod,
    PaymentMethod,
    PaymentMethodType,
)
from sdk import (
    CompleteAuthorizationRequest,
    Deadline,
    Manifest,
    MultiSupport,
    Operation,
    SubmitRequest,
)
from sdk.webhooks import WebhookEvent
from vault.audit import AuditLog
from vault.database import Connection, PostgresDatabase, SqliteDatabase, in_transaction
from vault.token_store import TokenRecord
from vault.tokenization import TokenizationService

__all__ = ["CreatedPayment", "NewPayment", "OperationOutcome", "PaymentService"]

log = structlog.get_logger("tessera.payments")

#: The operations that start a payment (its first attempts, failover included), by value.
_CREATE_OPERATIONS = {op.value: op for ops in CREATE_OPERATIONS.values() for op in ops}
_OPEN_BANKING = PaymentMethodType.OPEN_BANKING.value
#: The open-banking steps after the consent: a sync finding it authorized and unpaid settles
#: them (``_reconcile_consent``); for any other attempt it only says that nothing was paid.
_CONSENT_STEPS = frozenset({Operation.COMPLETE_AUTHORIZATION.value, Operation.SUBMIT.value})
#: A bank debit's description, at most (``DebitRequest``).
_DEBIT_DESCRIPTION_MAX = 140


class ReturnUrlRequiredError(InvalidRequestError):
    code = "return_url_required"
    default_detail = (
        "An open-banking payment needs a return_url (in the request or the payer): where the "
        "bank sends the customer back."
    )


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
class CreatedPayment:
    """What ``create`` answers: the payment and, when this run made them all, its attempts.

    ``attempts`` is None for a payment resumed from an earlier run (read them); otherwise it is
    every attempt of the payment, and the payment has no refunds yet.
    """

    payment: PaymentRecord
    attempts: list[AttemptRecord] | None = None


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """A follow-up operation's result: the payment after it, and the attempt that did it."""

    payment: PaymentRecord
    attempt: AttemptRecord
    result: PaymentResult
    refund: RefundRecord | None = None


#: Refusals before anything reached a provider that a retry may get past: a breaker open, a
#: full bulkhead, a Vault that is down or sealed (not one that refuses the reveal for good).
_RETRYABLE_REFUSALS = (
    ConnectorBusyError,
    ConnectorUnavailableError,
    VaultUnavailableError,
    VaultSealedError,
)


class PaymentService:
    def __init__(
        self,
        db: SqliteDatabase | PostgresDatabase,
        store: PaymentStore,
        tokens: TokenizationService,
        pool: ConnectorPool,
        router: Router,
        outbox: Outbox,
        audit: AuditLog,
    ) -> None:
        self._db = db
        self._store = store
        self._tokens = tokens
        self._pool = pool
        self._router = router
        self._outbox = outbox
        self._audit = audit

    # -- create ---------------------------------------------------------------------------------

    async def create(
        self,
        merchant: Merchant,
        new: NewPayment,
        *,
        claim: IdempotencyClaim,
        correlation_id: str | None = None,
    ) -> CreatedPayment:
        """Create and authorize (or purchase) a payment; resumes a crashed earlier run.

        Every routed connector's breaker open: ``ConnectorUnavailableError`` before anything is
        written (no payment, no attempt, no reveal), so the key is released and a retry runs.
        """
        if claim.resource_id is not None:
            payment = await self._store.get_payment(merchant.id, claim.resource_id)
            if not await self._refused_everywhere(payment):
                return CreatedPayment(await self._resume(merchant, payment, new, correlation_id))
            # The earlier run answered 503: every connector refused before sending. That payment
            # stays failed (nothing reached a provider); this retry is a new payment.
        method, summary, route, record = await self._prepare_method(merchant, new)
        candidates = self._router.candidates(route)
        if not isinstance(method, CardMethod):
            new = self._check_bank_payment(new, method, candidates)
        refusals = [self._pool.breaker_refusal(c) for c in candidates]
        if all(refusal is not None for refusal in refusals):
            raise self._all_open(candidates, refusals, summary.type)
        queue = list(candidates)
        attempts: list[AttemptRecord] = []
        # The payment, its idempotency binding and its first attempt (with the provider key it
        # will send) commit together, before any call.
        async with self._db.transaction() as tx:
            payment = await self._store.create_payment(
                merchant.id,
                new.amount,
                payment_method=summary,
                capture=new.capture,
                connector=candidates[refusals.index(None)],
                reference=new.reference,
                metadata=new.metadata,
                return_url=new.return_url,
                tx=tx,
            )
            await claim.bind_resource(payment.id, tx=tx)
            refusal = await self._next_attempt(tx, payment, queue, attempts)
            if refusal is not None:  # a breaker opened since the check above
                await self._settle(
                    payment, PaymentResult.not_sent(), connector=attempts[-1].connector, tx=tx
                )
        if refusal is not None:
            raise refusal
        payment = await self._authorize(
            merchant, payment, new, method, attempts, queue, correlation_id, record=record
        )
        # Every attempt of this payment was made by this run, and a new payment has no refunds.
        return CreatedPayment(payment, attempts)

    def _check_bank_payment(
        self, new: NewPayment, method: PaymentMethod, candidates: list[str]
    ) -> NewPayment:
        """What a bank-account or open-banking payment needs, checked before anything is
        written: an open-banking payment's return URL (the request's, else the payer's, kept on
        the payment), a debit's shorter description."""
        if isinstance(method, OpenBankingMethod):
            return_url = new.return_url or method.return_url
            if return_url is None:
                raise ReturnUrlRequiredError()
            return replace(new, return_url=return_url)
        starts = self._router.start_operations[method.type]
        debits = any(starts[c] is Operation.DEBIT for c in candidates)
        if debits and new.description is not None and len(new.description) > _DEBIT_DESCRIPTION_MAX:
            raise InvalidRequestError(
                f"A bank debit's description is at most {_DEBIT_DESCRIPTION_MAX} characters."
            )
        return new

    def _all_open(
        self,
        candidates: list[str],
        refusals: list[ConnectorUnavailableError | None],
        method_type: str,
    ) -> ConnectorUnavailableError:
        starts = self._router.start_operations[method_type]
        for connector_id in candidates:
            self._pool.count_refusal(connector_id, starts[connector_id].value)
        if len(candidates) == 1 and refusals[0] is not None:
            return refusals[0]
        waits = [r.retry_after for r in refusals if r is not None and r.retry_after is not None]
        return ConnectorUnavailableError(
            "Every connector for this payment is unavailable (circuit open).",
            retry_after=min(waits, default=None),
        )

    async def _refused_everywhere(self, payment: PaymentRecord) -> bool:
        if payment.status is not PaymentStatus.FAILED:
            return False
        attempts = await self._store.attempts(payment.id)
        return bool(attempts) and all(a.outcome is Outcome.NOT_SENT for a in attempts)

    async def _prepare_method(
        self, merchant: Merchant, new: NewPayment
    ) -> tuple[PaymentMethod, PaymentMethodSummary, RouteQuery, TokenRecord | None]:
        """The method as it will be sent, its summary, its route and, for a card, the token
        record just read (or made), which the authorization's reveal reuses."""
        method = new.payment_method
        brand = bin_ = None
        record: TokenRecord | None = None
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
        return method, summary, route, record

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

    def _bank_request(
        self,
        operation: Operation,
        payment: PaymentRecord,
        new: NewPayment,
        method: PaymentMethod,
        key: str,
    ) -> DebitRequest | ConsentRequest:
        """A debit's or a consent's request; the provider reference and key as for a card."""
        common: dict[str, Any] = {
            "amount": payment.amount,
            "reference": payment.id,
            "idempotency_key": key,
            "metadata": dict(payment.metadata),
        }
        if operation is Operation.DEBIT:
            assert isinstance(method, BankAccountMethod)
            return DebitRequest(source=method, description=new.description, **common)
        assert operation is Operation.CREATE_CONSENT
        assert isinstance(method, OpenBankingMethod) and payment.return_url is not None
        return ConsentRequest(payer=method, return_url=payment.return_url, **common)

    async def _next_attempt(
        self,
        tx: Connection,
        payment: PaymentRecord,
        queue: list[str],
        attempts: list[AttemptRecord],
    ) -> ConnectorUnavailableError | None:
        """Start the first operation's attempt (authorize, debit or create_consent) on the next
        connector of ``queue`` (appended to ``attempts``), recording those skipped for an open
        breaker on the way.

        None when an attempt was started; the last refusal when every remaining connector was
        skipped. ``attempts`` must hold the payment's attempts (their count is the next ``seq``).
        """
        refusal: ConnectorUnavailableError | None = None
        starts = self._router.start_operations[payment.payment_method.type]
        while queue:
            connector_id = queue.pop(0)
            operation = starts[connector_id].value
            refusal = self._pool.breaker_refusal(connector_id)
            if refusal is None:
                attempt = await self._store.start_attempt(
                    payment, connector_id, operation, amount=payment.amount,
                    seq=len(attempts) + 1, tx=tx,
                )  # fmt: skip
                attempts.append(attempt)
                return None
            self._pool.count_refusal(connector_id, operation)
            skipped = await self._store.refused_attempt(
                payment, connector_id, operation, error_code=refusal.code,
                amount=payment.amount, seq=len(attempts) + 1, tx=tx,
            )  # fmt: skip
            attempts.append(skipped)
            log.info("failover", payment_id=payment.id, connector=connector_id, code=refusal.code)
        return refusal

    async def _authorize(
        self,
        merchant: Merchant,
        payment: PaymentRecord,
        new: NewPayment,
        method: PaymentMethod,
        attempts: list[AttemptRecord],
        queue: list[str],
        correlation_id: str | None,
        *,
        record: TokenRecord | None = None,
    ) -> PaymentRecord:
        """Send ``attempts[-1]`` (started and committed); fail over down ``queue`` on ``not_sent``.

        Each answer is written in one transaction with what follows from it: the next attempt
        (failover), or the payment's new state and its notification. ``attempts`` is updated.
        """
        rejection: TesseraError | None = None
        # One reveal for the whole authorization: a candidate that revealed the card and then
        # could not connect must not have consumed the CVV the next candidate needs.
        with reveal_scope(record):
            while True:
                attempt = attempts[-1]
                operation = _CREATE_OPERATIONS[attempt.operation]
                key = attempt.provider_idempotency_key
                request: AuthorizeRequest | DebitRequest | ConsentRequest = (
                    self._authorize_request(payment, new, method, key)
                    if operation is Operation.AUTHORIZE
                    else self._bank_request(operation, payment, new, method, key)
                )
                error_code: str | None = None
                try:
                    result = await self._invoke(
                        merchant.id, attempt.connector, operation, request, correlation_id
                    )
                    rejection = None
                    if result.outcome is Outcome.NOT_SENT:
                        # Refused without an error (throttled until the retries ran out): as
                        # for a refusal, the next candidate, or a 503 the key may retry.
                        rejection = _not_taken(operation.value)
                        error_code = rejection.code
                except TesseraError as exc:  # raised by the runtime only when nothing was sent
                    result, error_code, rejection = PaymentResult.not_sent(), exc.code, exc
                # A token whose row does not describe its card fails the same way everywhere.
                failover = (
                    result.outcome is Outcome.NOT_SENT
                    and bool(queue)
                    and not isinstance(rejection, TokenIntegrityError)
                )
                async with self._db.transaction() as tx:
                    attempts[-1], result, own = await self._record_answer(
                        attempt, result, tx, error_code=error_code
                    )
                    if not own:  # settled meanwhile (reconciler, operator): as recorded
                        failover, rejection = False, None
                        payment = await self._store.get_payment(merchant.id, payment.id, tx=tx)
                        break
                    if failover:
                        log.info(
                            "failover",
                            payment_id=payment.id,
                            connector=attempt.connector,
                            code=error_code,
                        )
                        refusal = await self._next_attempt(tx, payment, queue, attempts)
                        failover = refusal is None
                        rejection = refusal or rejection
                    if not failover:  # also when every remaining candidate refused
                        payment = await self._settle(
                            payment, result, connector=attempts[-1].connector, tx=tx
                        )
                if not failover:
                    break
        if isinstance(rejection, _RETRYABLE_REFUSALS):
            # Every connector refused before sending (bulkhead full, breaker open), or the card
            # could not be revealed (Vault unreachable, sealed): a fast 503 the merchant may
            # retry with the same key, rather than a payment that merely failed. The payment
            # stays failed (nothing reached a provider); the retry makes a new one.
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
        attempts = [
            a for a in await self._store.attempts(payment.id) if a.operation in _CREATE_OPERATIONS
        ]
        open_attempt = next((a for a in reversed(attempts) if a.needs_reconciliation), None)
        if open_attempt is not None:
            await self.reconcile(open_attempt, correlation_id=correlation_id)
            return await self._store.get_payment(merchant.id, payment.id)
        if payment.status is None and not attempts and payment.connector is not None:
            method: PaymentMethod = new.payment_method
            if payment.payment_method.token is not None:
                method = CardMethod(token=payment.payment_method.token)
            starts = self._router.start_operations[payment.payment_method.type]
            operation = starts.get(payment.connector, Operation.AUTHORIZE)
            first = await self._store.start_attempt(
                payment, payment.connector, operation.value, amount=payment.amount
            )
            return await self._authorize(
                merchant, payment, new, method, [first], [], correlation_id
            )
        return payment

    # -- follow-up operations -----------------------------------------------------------------

    async def capture(
        self,
        merchant: Merchant,
        payment_id: str,
        amount: Money | None,
        *,
        final: bool = False,
        correlation_id: str | None = None,
    ) -> OperationOutcome:
        """Capture ``amount`` (omitted: what is left). ``final`` releases the rest of the
        authorization after it; a connector that takes one capture per payment always does."""
        payment = await self._store.get_payment(merchant.id, payment_id)
        # Omitted: the rest. Nothing left: the full amount, so the state check says why (409).
        amount = amount or Money.of(
            payment.state.capturable or payment.amount.value, payment.amount.currency
        )
        transition(payment.state, Capture(amount, final=final))  # 409/422 before any write
        if payment.connector is not None:
            final = _capture_terms(self._pool.manifest(payment.connector), payment, amount, final)
        event = Capture(amount, final=final)
        payment, attempt = await self._begin(payment, Operation.CAPTURE, event, amount=amount)
        request = CaptureRequest(
            payment_id=payment.id, provider_reference=payment.provider_reference, amount=amount,
            final=final, idempotency_key=attempt.provider_idempotency_key,
            reference=payment.reference,
        )  # fmt: skip
        result = await self._send(merchant.id, attempt, Operation.CAPTURE, request, correlation_id)
        async with self._db.transaction() as tx:
            attempt, result, own = await self._record_answer(attempt, result, tx)
            if not own:
                payment = await self._store.get_payment(merchant.id, payment.id, tx=tx)
            elif result.outcome is Outcome.SUCCEEDED:
                payment = await self._count(payment, result, event, tx)
        return _answered(OperationOutcome(payment, attempt, result))

    async def void(
        self, merchant: Merchant, payment_id: str, *, correlation_id: str | None = None
    ) -> OperationOutcome:
        payment = await self._store.get_payment(merchant.id, payment_id)
        transition(payment.state, Void())
        payment, attempt = await self._begin(payment, Operation.VOID, Void())
        request = VoidRequest(
            payment_id=payment.id, provider_reference=payment.provider_reference,
            idempotency_key=attempt.provider_idempotency_key, reference=payment.reference,
        )  # fmt: skip
        result = await self._send(merchant.id, attempt, Operation.VOID, request, correlation_id)
        async with self._db.transaction() as tx:
            attempt, result, own = await self._record_answer(attempt, result, tx)
            if not own:
                payment = await self._store.get_payment(merchant.id, payment.id, tx=tx)
            elif result.outcome is Outcome.SUCCEEDED:
                payment = await self._settle(payment, result, event=Void(), tx=tx)
        return _answered(OperationOutcome(payment, attempt, result))

    async def refund(
        self,
        merchant: Merchant,
        payment_id: str,
        amount: Money | None,
        *,
        correlation_id: str | None = None,
    ) -> OperationOutcome:
        payment = await self._store.get_payment(merchant.id, payment_id)
        reserved = await self._store.reserved_refunds(payment.id)
        if amount is None:
            left = _refundable(payment, reserved)
            if not left and reserved and payment.state.refundable:
                raise _refunds_pending(0, reserved, payment.state.refundable)
            # Nothing refundable at all: the whole amount, for the state's own refusal.
            amount = Money.of(left or payment.amount.value, payment.amount.currency)
        _check_refund(payment, amount, reserved)
        terms = self._pool.manifest(payment.connector).refund if payment.connector else None
        _check_refund_terms(terms, payment, amount, reserved)
        # The refund, the attempt that requests it and its audit entry (RELIABILITY 33: every
        # refund is in the audit log) commit together, before the call.
        async with self._db.transaction() as tx:
            refund = await self._store.add_refund(payment, amount, tx=tx)
            payment, attempt = await self._begin(
                payment, Operation.REFUND, Refund(amount), amount=amount, refund_id=refund.id,
                tx=tx,
            )  # fmt: skip
            # Under the operation's lock: refunds still pending elsewhere (this one aside).
            reserved = await self._store.reserved_refunds(payment.id, tx=tx) - amount.value
            _check_refund(payment, amount, reserved)
            _check_refund_terms(terms, payment, amount, reserved)
            await self._audit.append(
                actor=f"merchant:{merchant.id}",
                action="payment.refund",
                tenant=merchant.id,
                target=payment.id,
                purpose="refund",
                detail=f"{refund.id} {amount.value} {amount.currency}",
                tx=tx,
            )
        request = RefundRequest(
            payment_id=payment.id, provider_reference=payment.provider_reference, amount=amount,
            idempotency_key=attempt.provider_idempotency_key, reference=payment.reference,
        )  # fmt: skip
        try:
            result = await self._send(
                merchant.id, attempt, Operation.REFUND, request, correlation_id
            )
        except TesseraError:
            # Nothing was sent (and nothing else settled the attempt: ``_send`` returns the
            # recorded answer then): the refund failed.
            await self._store.update_refund(refund.id, status=RefundStatus.FAILED)
            raise
        async with self._db.transaction() as tx:
            attempt, result, own = await self._record_answer(attempt, result, tx)
            if not own:
                payment = await self._store.get_payment(merchant.id, payment.id, tx=tx)
                refund = await self._store.get_refund(refund.id, tx=tx)
            else:
                refund = await self._finish_refund(refund.id, result, tx=tx)
                if (
                    result.outcome is Outcome.SUCCEEDED
                    and result.status is not PaymentStatus.PENDING
                ):
                    payment = await self._count(payment, result, Refund(amount), tx)
        return _answered(OperationOutcome(payment, attempt, result, refund))

    async def _finish_refund(
        self, refund_id: str, result: PaymentResult, *, tx: Connection | None = None
    ) -> RefundRecord:
        return await self._store.update_refund(
            refund_id, status=_refund_status(result), provider_reference=result.provider_reference,
            tx=tx,
        )  # fmt: skip

    async def sync(
        self, merchant: Merchant, payment_id: str, *, correlation_id: str | None = None
    ) -> PaymentRecord:
        """Ask the provider for the payment's state and converge on it."""
        payment = await self._store.get_payment(merchant.id, payment_id)
        if payment.connector is None:
            return payment
        if payment.provider_reference is None:
            # No provider id yet: the authorization's answer was lost (``unknown``). Settle it
            # now as the reconciler would (a sync by the payment id it was sent with, or a
            # replay with its own provider key) instead of leaving the merchant to wait.
            attempts = await self._store.attempts(payment.id)
            lost = [a for a in attempts if a.operation in _CREATE_OPERATIONS]
            if lost and lost[-1].outcome is Outcome.UNKNOWN:
                await self.reconcile(lost[-1], correlation_id=correlation_id)
            # Read again: the reconciler or a webhook may have settled it since the read above.
            return await self._store.get_payment(merchant.id, payment_id)
        attempt = await self._start_follow_up(payment, Operation.SYNC)
        request = SyncRequest(
            payment_id=payment.id, provider_reference=payment.provider_reference,
            idempotency_key=attempt.provider_idempotency_key,
        )  # fmt: skip
        result = await self._send(merchant.id, attempt, Operation.SYNC, request, correlation_id)
        await self._store.finish_attempt(attempt, result)
        if result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED) and not _unsubmitted(
            payment, result
        ):
            # Follow-ups first: they count their amounts by the provider's totals, which the
            # reported status alone (applied next, a no-op when they already reached it) cannot.
            if result.status is not PaymentStatus.PENDING:
                payment = await self._settle_unknown(payment, result)
            payment = await self._observe(payment, result)
        return payment

    async def _settle_unknown(self, payment: PaymentRecord, result: PaymentResult) -> PaymentRecord:
        """A final answer from the provider settles the payment's follow-ups whose outcome was
        ``unknown`` as the reconciler would, so that they stop holding the payment's operation
        lock at once (calls still in flight are left alone: their answer is on its way)."""
        settled = False
        for attempt in await self._store.attempts(payment.id):
            if attempt.outcome is not Outcome.UNKNOWN or attempt.operation in _CREATE_OPERATIONS:
                continue
            if attempt.refund_id is not None and (
                await self._refund_verdict(payment, attempt, result) is None
            ):
                continue  # the total cannot tell it from other open refunds: the reconciler's
            async with self._db.transaction() as tx:
                _, recorded = await self._store.settle_attempt(attempt, result, tx=tx)
                if recorded:  # else settled meanwhile, by a settler that moved the payment
                    await self._settle_follow_up(payment, attempt, result, tx)
            settled = True
        if not settled:
            return payment
        return await self._store.get_payment(payment.merchant_id, payment.id)

    async def complete(
        self,
        merchant: Merchant,
        payment_id: str,
        params: Mapping[str, str],
        *,
        correlation_id: str | None = None,
    ) -> PaymentRecord:
        """The customer is back from a redirect (3-D Secure, bank): finish the authorization.

        A payment that went through the redirect and has moved on already (a webhook, a sync
        or the reconciler got there first) is returned as it is: the customer's return is
        not an error."""
        payment = await self._store.get_payment(merchant.id, payment_id)
        if payment.status is not PaymentStatus.REQUIRES_ACTION and payment.connector is not None:
            attempts = await self._store.attempts(payment.id)
            if any(a.status is PaymentStatus.REQUIRES_ACTION for a in attempts):
                return payment
        if payment.status is not PaymentStatus.REQUIRES_ACTION or payment.connector is None:
            raise IllegalTransitionError(
                f"Only a payment that requires action can be completed; this one is "
                f"{payment.status.value if payment.status else 'new'}."
            )
        manifest = self._pool.manifest(payment.connector)
        try:
            if payment.payment_method.type == _OPEN_BANKING and manifest.supports(Operation.SUBMIT):
                return await self._complete_consent(merchant, payment, params, correlation_id)
            if not manifest.supports(Operation.COMPLETE_AUTHORIZATION):
                return await self.sync(merchant, payment_id, correlation_id=correlation_id)
            payment, attempt, result = await self._complete_authorization(
                merchant, payment, params, correlation_id
            )
        except OperationInProgressError:
            raise  # another ``complete`` is running: 409, retried after Retry-After
        except ConcurrentUpdateError:
            # Another ``complete``, a webhook or a sync moved it on while this one started:
            # the customer's return is answered with the payment as it is now.
            return await self._store.get_payment(merchant.id, payment_id)
        async with self._db.transaction() as tx:
            _, result, own = await self._record_answer(attempt, result, tx)
            if not own:
                payment = await self._store.get_payment(merchant.id, payment.id, tx=tx)
            elif result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED):
                payment = await self._observe(payment, result, tx=tx)
        return payment

    async def _complete_authorization(
        self,
        merchant: Merchant,
        payment: PaymentRecord,
        params: Mapping[str, str],
        correlation_id: str | None,
        *,
        reference: str | None = None,
    ) -> tuple[PaymentRecord, AttemptRecord, PaymentResult]:
        """Start ``complete_authorization`` (under the payment's operation lock) and send it with
        the redirect's callback parameters; the payment, the attempt and the answer."""
        operation = Operation.COMPLETE_AUTHORIZATION
        payment, attempt = await self._begin(payment, operation)
        request = CompleteAuthorizationRequest(
            payment_id=payment.id, provider_reference=payment.provider_reference,
            callback_parameters=dict(params), idempotency_key=attempt.provider_idempotency_key,
            reference=reference,
        )  # fmt: skip
        result = await self._send(merchant.id, attempt, operation, request, correlation_id)
        return payment, attempt, result

    async def _complete_consent(
        self,
        merchant: Merchant,
        payment: PaymentRecord,
        params: Mapping[str, str],
        correlation_id: str | None,
    ) -> PaymentRecord:
        """Open banking: the customer is back from the bank. ``complete_authorization`` with the
        callback, then, once the consent is authorized, ``submit``.

        Resumes where an earlier call stopped: a submit already started is reconciled (synced,
        replayed with its own key only if the consent carries no payment), never sent anew, and
        left alone while its call may still be running (started less than the in-flight grace
        ago: its answer is on its way); a consent already authorized is submitted without asking
        the bank again.
        """
        if payment.provider_reference is None:
            raise IllegalTransitionError("The payment has no consent to complete yet.")
        attempts = await self._store.attempts(payment.id)
        submit = next((a for a in reversed(attempts) if a.operation == "submit"), None)
        if submit is not None:
            if submit.needs_reconciliation and not self._may_be_running(submit):
                await self.reconcile(submit, correlation_id=correlation_id)
            return await self._store.get_payment(merchant.id, payment.id)
        authorized = any(
            a.operation == Operation.COMPLETE_AUTHORIZATION.value
            and _authorized(a.outcome, a.status)
            for a in attempts
        )
        if authorized:
            try:
                payment, submit = await self._begin(payment, Operation.SUBMIT)
            except OperationInProgressError:  # a concurrent ``complete`` submitted it
                return await self._store.get_payment(merchant.id, payment.id)
        else:
            payment, attempt, result = await self._complete_authorization(
                merchant, payment, params, correlation_id, reference=payment.id
            )
            # The authorization and the submit attempt commit together: a crash after this
            # leaves an open submit attempt, which reconciliation finishes.
            async with self._db.transaction() as tx:
                _, result, own = await self._record_answer(attempt, result, tx)
                if own and _authorized(result.outcome, result.status):
                    submit = await self._start_follow_up(payment, Operation.SUBMIT, tx=tx)
                elif own and result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED):
                    # With the answer, as every settler does: one that finds it recorded
                    # moves nothing.
                    payment = await self._observe(payment, result, tx=tx)
            if not own:
                # Settled while the call ran (the reconciler presumed it abandoned, or an
                # operator): whatever settled it moved the payment, and submitted the consent
                # if it was authorized; resume from there (submits only if nothing did).
                payment = await self._store.get_payment(merchant.id, payment.id)
                if not _authorized(result.outcome, result.status):
                    return payment
                return await self._complete_consent(merchant, payment, params, correlation_id)
            if submit is None:
                return payment
        return await self._submit(payment, submit, correlation_id)

    def _may_be_running(self, attempt: AttemptRecord) -> bool:
        """Started and unanswered for less than the in-flight grace: its call may still be
        running (another ``complete``, the reconciler), and its answer is on its way. Syncing
        it now could send it a second time alongside."""
        grace = self._store.reconcile_policy.in_flight_grace
        return attempt.in_flight and self._store.now() - attempt.started_at < grace

    async def _submit(
        self, payment: PaymentRecord, submit: AttemptRecord, correlation_id: str | None
    ) -> PaymentRecord:
        """Send ``submit`` (started and committed) and settle the payment on its answer.

        Refused before sending (breaker, bulkhead, deadline): the error propagates and the
        attempt stays open, so the reconciler submits it later with the same provider key.
        """
        assert payment.provider_reference is not None
        request = SubmitRequest(
            payment_id=payment.id, provider_reference=payment.provider_reference,
            consent_reference=payment.provider_reference, reference=payment.id,
            idempotency_key=submit.provider_idempotency_key, metadata=dict(payment.metadata),
        )  # fmt: skip
        result = await self._invoke(
            payment.merchant_id, submit.connector, Operation.SUBMIT, request, correlation_id
        )
        if result.outcome is Outcome.NOT_SENT:
            return payment  # still open: the reconciler sends it
        async with self._db.transaction() as tx:
            _, _, own = await self._record_answer(submit, result, tx)
            if not own:
                return await self._store.get_payment(payment.merchant_id, payment.id, tx=tx)
            return await self._settle(payment, result, tx=tx)

    async def _reconcile_consent(
        self,
        attempt: AttemptRecord,
        payment: PaymentRecord,
        result: PaymentResult,
        correlation_id: str | None,
    ) -> bool:
        """A sync says the consent is authorized and carries no payment: nothing was submitted.

        A submit attempt is replayed with its own provider key (a provider that honours it pays
        once even if the first call did arrive); the attempt that saw the authorization
        (``complete_authorization`` whose answer was lost) is settled and a submit started, unless
        one exists already.
        """
        manifest = self._pool.manifest(attempt.connector)
        if attempt.operation == Operation.SUBMIT.value:
            if manifest.idempotency is None:
                await self._store.schedule_reconcile(attempt.id)
                return False
            submit = attempt
        else:
            async with self._db.transaction() as tx:
                await self._store.finish_attempt(attempt, result, tx=tx)
                try:
                    submit = await self._start_follow_up(payment, Operation.SUBMIT, tx=tx)
                except OperationInProgressError:
                    return True  # submitted already: that attempt is reconciled on its own
            try:
                await self._submit(payment, submit, correlation_id)
            except TesseraError as exc:  # not sent: the submit attempt is reconciled later
                log.info("submit_deferred", payment_id=payment.id, code=exc.code)
            return True
        await self._submit(payment, submit, correlation_id)
        settled = await self._store.get_attempt(submit.id)
        if settled.needs_reconciliation:
            await self._store.schedule_reconcile(attempt.id)
            return False
        return True

    # -- reconciliation -------------------------------------------------------------------------

    async def _waits_on_another_movement(self, attempt: AttemptRecord) -> bool:
        """A refund while another capture or refund of the payment is in flight or ``unknown``:
        the provider's refunded total may hold that call's money, so this refund is settled by
        it only once that call has its own answer (it never waits on this one). Rescheduled
        when so."""
        if attempt.refund_id is None or not _in_flight_movement(
            await self._store.attempts(attempt.payment_id), attempt
        ):
            return False
        await self._store.schedule_reconcile(attempt.id)
        return True

    async def reconcile(self, attempt: AttemptRecord, *, correlation_id: str | None = None) -> bool:
        """Try to settle one open attempt (``unknown``, ``pending`` or never answered).

        The connector's ``sync`` is asked for the truth: by provider reference, or, for an
        authorization whose answer was lost before any reference came back, by the payment id
        it was sent with. A connector without ``sync`` gets the attempt replayed with its own
        provider idempotency key (the provider answers with what it did the first time). True
        when the attempt is final now; otherwise it is scheduled again with backoff.
        """
        if await self._waits_on_another_movement(attempt):
            return False  # whatever the provider says now cannot settle it: no call
        payment = await self._store.payment_of(attempt)
        route = self.settled_by(attempt, payment)
        if route == "sync":
            sync = SyncRequest(
                payment_id=payment.id,
                provider_reference=attempt.provider_reference or payment.provider_reference,
                reference=payment.id,
            )
            result = await self._invoke(
                payment.merchant_id, attempt.connector, Operation.SYNC, sync, correlation_id
            )
            if _unsubmitted(payment, result) and attempt.operation in _CONSENT_STEPS:
                return await self._reconcile_consent(attempt, payment, result, correlation_id)
            answered = result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED)
        elif route == "replay" and (token := payment.payment_method.token):
            new = NewPayment(amount=payment.amount, payment_method=CardMethod(token=token))
            request = self._authorize_request(
                payment, new, new.payment_method, attempt.provider_idempotency_key
            )
            # A replay refused before sending (breaker open, bulkhead full) says nothing about
            # the original call: the error propagates and the attempt stays open (rescheduled).
            result = await self._invoke(
                payment.merchant_id, attempt.connector, Operation.AUTHORIZE, request,
                correlation_id,
            )  # fmt: skip
            answered = True  # the replay's own answer, whatever it is
        else:
            # Neither a sync nor a replay can settle it: only a person with the provider's
            # dashboard can (the payment's money-moving operations wait until then).
            _ask_operator(attempt, "neither sync nor replay can settle it")
            await self._store.schedule_reconcile(attempt.id)
            return False
        if result.outcome in (Outcome.UNKNOWN, Outcome.NOT_SENT) or (
            result.status is PaymentStatus.PENDING
        ):
            if answered:
                await self._store.finish_attempt(attempt, result)
            await self._store.schedule_reconcile(attempt.id)
            return False
        if await self._waits_on_another_movement(attempt):
            return False  # again: one may have started while the sync ran
        if attempt.refund_id is not None:
            verdict = await self._refund_verdict(payment, attempt, result)
            # Accepted as pending and not in the provider's refunded total yet: still pending,
            # not failed. Any refund the total cannot tell from the payment's other open ones
            # (300 + 200 or 500?) waits for an answer that can.
            if verdict is None or (verdict is False and _acknowledged_pending(attempt)):
                if attempt.reconcile_count >= _PENDING_TRIES_BEFORE_OPERATOR:
                    _ask_operator(attempt, "refund not told apart in the provider's refunded total")
                await self._store.schedule_reconcile(attempt.id)
                return False
        # The attempt (the payment's operation lock, for a follow-up) is settled in the same
        # transaction that moves the payment: no other operation can start on the old state.
        async with self._db.transaction() as tx:
            _, recorded = await self._store.settle_attempt(attempt, result, tx=tx)
            if not recorded:
                # Settled meanwhile with this answer (a webhook, a merchant's sync, another
                # reconciler past its lease), in the transaction that moved the payment.
                return True
            if attempt.operation in _CREATE_OPERATIONS:
                await self._settle(payment, result, connector=attempt.connector, tx=tx)
            elif _unsubmitted(payment, result):
                pass  # e.g. a void of an authorized consent: it did not happen; nothing moves
            else:
                await self._settle_follow_up(payment, attempt, result, tx)
        return True

    async def _refund_verdict(
        self, payment: PaymentRecord, attempt: AttemptRecord, result: PaymentResult
    ) -> bool | None:
        """``_refund_in_total`` for a refund attempt, on the payment's current amounts and
        attempts (read now, outside any transaction: ``_settle_refund`` weighs them again)."""
        current = await self._store.get_payment(payment.merchant_id, payment.id)
        attempts = await self._store.attempts(payment.id)
        return _refund_in_total(attempt, attempts, current.refunded, result)

    async def _settle_follow_up(
        self,
        payment: PaymentRecord,
        attempt: AttemptRecord,
        result: PaymentResult,
        tx: Connection,
        *,
        decided: bool = False,
    ) -> None:
        """Move the payment for a follow-up (in ``tx``, where its attempt was just finished) on
        a final answer that reports the *payment* (sync, replay, webhook): a refund or capture
        counts by the provider's totals; anything else converges on the reported status.
        ``decided``: an operator saw this refund happen (the totals do not pick which one)."""
        if attempt.refund_id is not None:
            await self._settle_refund(payment, attempt, result, tx, decided=decided)
        elif attempt.operation == Operation.CAPTURE.value:
            await self._settle_capture(payment, attempt.amount, result, tx)
        else:
            await self._observe(payment, result, tx=tx)

    async def _settle_capture(
        self, payment: PaymentRecord, amount: Money | None, result: PaymentResult, tx: Connection
    ) -> None:
        """A capture whose answer was ``unknown`` has a final answer. It happened when the
        provider's captured total covers it on top of what Tessera has counted: then its amount
        joins ``captured``. Otherwise, or without a total, the payment converges on the reported
        status (a whole capture is still seen as ``captured``; a partial one is not guessed from
        a status alone)."""
        current = await self._store.get_payment(payment.merchant_id, payment.id, tx=tx)
        event = _confirmed_capture(current, amount, result)
        if event is None:
            await self._observe(current, result, tx=tx)
        else:
            await self._count(current, result, event, tx)

    def settled_by(self, attempt: AttemptRecord, payment: PaymentRecord) -> str:
        """How the reconciler settles an open attempt: ``sync`` (the connector reports the
        payment), ``replay`` (an authorization sent again with its own provider idempotency
        key) or ``operator`` (neither: ``tessera attempts settle``)."""
        manifest = self._pool.manifest(attempt.connector)
        if manifest.supports(Operation.SYNC):
            return "sync"
        if (
            attempt.operation == Operation.AUTHORIZE.value
            and manifest.idempotency is not None
            and payment.payment_method.token
        ):
            return "replay"
        return "operator"

    async def settle_by_operator(
        self,
        attempt_id: str,
        *,
        happened: bool,
        reason: str,
        actor: str,
        status: PaymentStatus | None = None,
        provider_reference: str | None = None,
    ) -> tuple[PaymentRecord, AttemptRecord]:
        """Settle an open attempt from what a person saw at the provider (its dashboard, a
        support answer), for attempts no sync or replay can settle.

        ``happened``: the provider did what the attempt asked. A capture, refund or void then
        counts exactly as if a sync had confirmed it; an authorization, ``complete`` or submit
        needs the ``status`` the provider shows (``authorized`` or ``captured``). Not happened:
        the attempt is closed as ``not_sent`` (error code ``settled_by_operator``), a refund
        fails, an authorization's payment fails; the payment's lock is released. The attempt,
        the payment and an audit entry (who, why) commit together; an attempt already settled
        (by the reconciler meanwhile, say) is refused and nothing changes.
        """
        if provider_reference is not None and contains_pan(provider_reference):
            raise InvalidRequestError("The provider reference looks like a card number.")
        async with self._db.transaction() as tx:
            attempt = await self._store.get_attempt(attempt_id, tx=tx)
            if not attempt.needs_reconciliation:
                raise IllegalTransitionError(
                    f"The attempt is already settled ({attempt.outcome} / {attempt.status})."
                )
            if self._may_be_running(attempt):
                # Its call may still be running (and answer after the verdict): wait as long
                # as the reconciler does before presuming it abandoned.
                grace = self._store.reconcile_policy.in_flight_grace
                since = self._store.now() - attempt.started_at
                raise OperationInProgressError(
                    f"The {attempt.operation} call may still be running (started "
                    f"{int(since.total_seconds())} s ago); settle it after "
                    f"{int(grace.total_seconds())} s.",
                    retry_after=max(1, int((grace - since).total_seconds()) + 1),
                )
            payment = await self._store.payment_of(attempt, tx=tx)
            merchant_id = payment.merchant_id
            result = _operator_result(payment, attempt, happened, status, provider_reference)
            error_code = None if happened else "settled_by_operator"
            attempt, own = await self._store.settle_attempt(
                attempt, result, error_code=error_code, tx=tx
            )
            if not own:  # the reconciler settled it meanwhile, with this very answer
                raise IllegalTransitionError(
                    f"The attempt is already settled ({attempt.outcome} / {attempt.status})."
                )
            if attempt.operation in _CREATE_OPERATIONS:
                payment = await self._settle(payment, result, connector=attempt.connector, tx=tx)
            elif happened:
                await self._settle_follow_up(payment, attempt, result, tx, decided=True)
            elif attempt.refund_id is not None:
                await self._store.settle_pending_refund(
                    attempt.refund_id, status=RefundStatus.FAILED, tx=tx
                )
            amount = f" {attempt.amount.value} {attempt.amount.currency}" if attempt.amount else ""
            verdict = f"happened ({result.status.value})" if happened else "did not happen"
            await self._audit.append(
                actor=actor,
                action="attempt.settle",
                tenant=merchant_id,
                target=attempt.id,
                purpose=reason,
                detail=f"{payment.id} {attempt.operation}{amount}: {verdict}",
                tx=tx,
            )
            payment = await self._store.get_payment(merchant_id, attempt.payment_id, tx=tx)
        log.warning(
            "attempt_settled_by_operator",
            attempt_id=attempt.id,
            payment_id=payment.id,
            operation=attempt.operation,
            happened=happened,
            actor=actor,
        )
        return payment, attempt

    async def _settle_refund(
        self,
        payment: PaymentRecord,
        attempt: AttemptRecord,
        result: PaymentResult,
        tx: Connection,
        *,
        decided: bool = False,
    ) -> None:
        """A refund whose answer was ``unknown`` or ``pending`` has a final answer, from a sync
        (which reports the *payment*) or a replay. It happened when the provider's refunded
        total holds it on top of what Tessera has counted (``_refund_in_total``, which weighs
        the payment's other open refunds): then its amount joins ``refunded`` (with the
        refund's own status, in ``tx``); otherwise it did not happen (``failed``). Without a
        total, the refund takes the answer's status as before and ``refunded`` is left alone.
        Only one of concurrent settlers moves the refund out of ``pending``, and only that one
        counts it. ``decided``: an operator's verdict, taken as it is."""
        assert attempt.refund_id is not None
        amount = attempt.amount
        current = await self._store.get_payment(payment.merchant_id, payment.id, tx=tx)
        happened = False
        if result.outcome is Outcome.SUCCEEDED and amount and result.amount_refunded:
            if decided:
                happened = True
            else:
                others = await self._store.attempts(payment.id, tx=tx)
                verdict = _refund_in_total(attempt, others, current.refunded, result)
                if verdict is None:
                    # Only if another refund moved since the caller asked: the covering rule,
                    # as when this refund is the payment's only open one.
                    verdict = _covers(result.amount_refunded, current.refunded, amount)
                happened = verdict
            status = RefundStatus.SUCCEEDED if happened else RefundStatus.FAILED
        else:
            status = _refund_status(result)
        settled = await self._store.settle_pending_refund(
            attempt.refund_id, status=status, provider_reference=result.provider_reference, tx=tx
        )
        if settled is not None and happened and amount is not None:
            try:
                transition(current.state, Refund(amount))
            except IllegalTransitionError:
                pass  # the payment moved meanwhile (observed refunded): observe below
            else:
                await self._count(current, result, Refund(amount), tx)
                return
        await self._observe(current, result, tx=tx)

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
        if _unsubmitted(payment, event.result):
            return False  # the consent is authorized: ``complete`` submits it
        result = event.result
        settles = result.outcome in (Outcome.SUCCEEDED, Outcome.DECLINED)
        before = payment.status
        # The payment moves and its answered-but-open attempts settle in one transaction (the
        # operation lock is released only with the new state). A call still in flight is left
        # to its own answer. An event reports the payment, not which refund or how much: a
        # capture settles here only when the event's captured total shows it happened; other
        # open captures and refunds are left to their answer or the reconciler (and while one
        # is open, ``_observe`` does not apply a status that carries amounts).
        async with self._db.transaction() as tx:
            for attempt in await self._store.attempts(payment.id, tx=tx):
                if not attempt.needs_reconciliation:
                    continue
                ours = attempt.provider_reference in (None, event.provider_reference)
                answered = settles and ours and attempt.outcome is not None
                if _moves_amount(attempt):
                    current = await self._store.get_payment(payment.merchant_id, payment.id, tx=tx)
                    confirmed = _confirmed_capture(current, attempt.amount, result)
                    if answered and attempt.refund_id is None and confirmed is not None:
                        await self._store.finish_attempt(attempt, result, tx=tx)
                        await self._count(current, result, confirmed, tx)
                elif answered:
                    await self._store.finish_attempt(attempt, result, tx=tx)
            current = await self._store.get_payment(payment.merchant_id, payment.id, tx=tx)
            updated = await self._observe(current, result, tx=tx)
        return updated.status != before

    # -- plumbing -------------------------------------------------------------------------------

    async def _start_follow_up(
        self,
        payment: PaymentRecord,
        operation: Operation,
        *,
        amount: Money | None = None,
        refund_id: str | None = None,
        tx: Connection | None = None,
    ) -> AttemptRecord:
        if payment.connector is None:
            raise IllegalTransitionError("The payment has no connector yet.")
        return await self._store.start_attempt(
            payment, payment.connector, operation.value, amount=amount, refund_id=refund_id, tx=tx
        )

    async def _begin(
        self,
        payment: PaymentRecord,
        operation: Operation,
        event: Capture | Void | Refund | None = None,
        *,
        amount: Money | None = None,
        refund_id: str | None = None,
        tx: Connection | None = None,
    ) -> tuple[PaymentRecord, AttemptRecord]:
        """Start a money-moving follow-up (in ``tx`` if given, else committed on return); the
        payment as it is now, and the attempt.

        The attempt's insert is the operation's lock (``OperationInProgressError`` while another
        one on the payment is open: ``PaymentStore``). Holding it, the payment is read again: if
        it changed since the caller's check, ``event`` is checked against what it is now (or,
        with no event, its status must be the same), so a decision made on a stale read never
        reaches the provider; raising here rolls the attempt back.
        """
        async with in_transaction(self._db, tx) as conn:
            attempt = await self._start_follow_up(
                payment, operation, amount=amount, refund_id=refund_id, tx=conn
            )
            current = await self._store.get_payment(payment.merchant_id, payment.id, tx=conn)
            if current.version != payment.version:
                if event is not None:
                    transition(current.state, event)
                elif current.status is not payment.status:
                    # A race, not the request's answer (not stored under its key): the retry
                    # decides on the payment as it is then (``complete`` returns it).
                    status = current.status.value if current.status else "new"
                    raise ConcurrentUpdateError(
                        f"The payment changed meanwhile; it is {status} now. Retry."
                    )
        return current, attempt

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

    async def _record_answer(
        self,
        attempt: AttemptRecord,
        result: PaymentResult,
        tx: Connection,
        *,
        error_code: str | None = None,
    ) -> tuple[AttemptRecord, PaymentResult, bool]:
        """Record the answer our own call got; the attempt, the answer to give, and True if
        this answer settled it.

        False: the attempt was settled while the call ran (the reconciler presumed it abandoned
        after the in-flight grace, or an operator settled it). What settled it moved the payment
        already, so the caller moves nothing more (counting this answer's capture or refund as
        well would count it twice), and the answer to give is the recorded one. An answer that
        disagrees with it is logged for an operator.
        """
        try:
            settled, own = await self._store.settle_attempt(
                attempt, result, error_code=error_code, tx=tx
            )
        except IllegalTransitionError:
            settled, own = await self._store.get_attempt(attempt.id, tx=tx), False
        if not own:
            # An ``unknown`` of ours contradicts nothing: the recorded answer knows more.
            agrees = result.outcome is Outcome.UNKNOWN or (settled.outcome, settled.status) == (
                result.outcome,
                result.status,
            )
            (log.warning if agrees else log.error)(
                "attempt_answered_after_settlement" if agrees else "attempt_answer_conflict",
                attempt_id=attempt.id,
                payment_id=attempt.payment_id,
                operation=attempt.operation,
                recorded=f"{settled.outcome} / {settled.status}",
                answered=f"{result.outcome.value} / {result.status.value}",
            )
            result = _as_recorded(settled, result)
        return settled, result, own

    async def _send(
        self,
        tenant: str,
        attempt: AttemptRecord,
        operation: Operation,
        request: Any,
        correlation_id: str | None,
    ) -> PaymentResult:
        """Invoke for ``attempt``. Errors the runtime raises mean nothing was sent: the attempt
        is recorded ``not_sent`` with the error's code, and the error propagates (a 503/504).
        So does a ``not_sent`` answer (the connection was refused, the provider throttled until
        the retries ran out): ``ConnectorUnavailableError``, 503 with ``Retry-After``, rather
        than the unchanged payment with a 200 that reads as if the operation had happened."""
        try:
            result = await self._invoke(
                tenant, attempt.connector, operation, request, correlation_id
            )
            if result.outcome is Outcome.NOT_SENT:
                raise _not_taken(operation.value)
        except TesseraError as exc:
            try:
                await self._store.finish_attempt(
                    attempt, PaymentResult.not_sent(), error_code=exc.code
                )
            except IllegalTransitionError:
                # Settled meanwhile (the reconciler presumed the call abandoned): that answer
                # stands; the caller records it as a late answer and moves nothing.
                recorded = await self._store.get_attempt(attempt.id)
                return _as_recorded(recorded, PaymentResult.not_sent())
            raise
        return result

    async def _settle(
        self,
        payment: PaymentRecord,
        result: PaymentResult,
        *,
        connector: str | None = None,
        event: Capture | Void | Refund | None = None,
        tx: Connection | None = None,
    ) -> PaymentRecord:
        """Apply an authorization result (or a follow-up's event) and notify, atomically (in
        ``tx`` when given, with whatever else the caller writes there)."""
        changes: dict[str, Any] = {}
        if connector is not None:
            changes["connector"] = connector
        if event is None:
            changes.update(
                provider_reference=result.provider_reference or payment.provider_reference,
                next_action=result.next_action,
                decline=result.decline,
            )
        step = event if event is not None else result.status
        async with in_transaction(self._db, tx) as conn:
            return await self._apply(conn, payment, step, changes)

    async def _count(
        self, payment: PaymentRecord, result: PaymentResult, event: Capture | Refund, tx: Connection
    ) -> PaymentRecord:
        """Count a capture or refund that happened, then converge on the whole-payment status
        the answer reported with it (``captured``, ``refunded``) when the answer's own totals
        confirm it: a status held back while this call was open (``_observe``) is applied now
        rather than never. Without totals, or with totals that say less, the status is not
        applied (observing ``refunded`` would count everything captured as refunded)."""
        updated = await self._settle(payment, result, event=event, tx=tx)
        if _totals_confirm(updated, result):
            return await self._observe(updated, result, tx=tx)
        return updated

    async def _apply(
        self,
        tx: Connection,
        payment: PaymentRecord,
        step: Capture | Void | Refund | PaymentStatus,
        changes: dict[str, Any],
    ) -> PaymentRecord:
        before, updated = await self._store.apply_seen(payment, step, retries=3, tx=tx, **changes)
        await self._notify(tx, before, updated)
        return updated

    async def _observe(
        self, payment: PaymentRecord, result: PaymentResult, *, tx: Connection | None = None
    ) -> PaymentRecord:
        """Converge on a status a provider reported (sync, webhook); ignore impossible ones.
        In ``tx`` when given (an impossible status writes nothing, so ``tx`` stays usable).

        A status that stands for amounts (``captured``, ``refunded``, the partial ones) waits
        while a capture or refund of the payment is open (in flight, ``unknown``, ``pending``):
        applied now it would count an amount no one can attribute, and the open call's own
        answer, or its reconciliation by the provider's totals, would then find it counted and
        fail (a 409 for a capture that happened, a refund recorded ``failed``)."""
        try:
            async with in_transaction(self._db, tx) as conn:
                if result.status in _AMOUNT_STATUSES and result.status is not payment.status:
                    attempts = await self._store.attempts(payment.id, tx=conn)
                    if any(_moves_amount(a) and a.needs_reconciliation for a in attempts):
                        log.info(
                            "provider_status_deferred",
                            payment_id=payment.id,
                            reported=result.status.value,
                            reason="a capture or refund is open",
                        )
                        return payment
                before, updated = await self._store.apply_seen(
                    payment,
                    result.status,
                    retries=3,
                    next_action=result.next_action,
                    decline=result.decline or payment.decline,
                    provider_reference=result.provider_reference or payment.provider_reference,
                    tx=conn,
                )
                # Against the record the status was applied to: a snapshot older than a
                # concurrent settler's write would announce that change a second time.
                await self._notify(conn, before, updated)
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
                # The payment's fields as GET /v1/payments/{id} gives them (amounts as
                # {value, currency}: they used to be bare integers here).
                "id": after.id,
                "status": after.status.value,
                "amount": after.amount.model_dump(),
                "captured": {"value": after.captured, "currency": after.amount.currency},
                "refunded": {"value": after.refunded, "currency": after.amount.currency},
                "connector": after.connector,
                "reference": after.reference,
                "metadata": after.metadata,
                "provider_reference": after.provider_reference,
                "decline": after.decline.model_dump() if after.decline else None,
            },
        )


_OPERATOR_STATUSES = frozenset({PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED})
#: Reconciliations of a refund the provider accepted as pending, its refunded total never
#: including it, before each further one also asks for an operator (roughly 20 hours with the
#: default backoff: 5 s doubling to an hourly cap).
_PENDING_TRIES_BEFORE_OPERATOR = 30
#: Statuses that stand for amounts (what was captured or refunded).
_AMOUNT_STATUSES = frozenset(
    {
        PaymentStatus.PARTIALLY_CAPTURED,
        PaymentStatus.CAPTURED,
        PaymentStatus.PARTIALLY_REFUNDED,
        PaymentStatus.REFUNDED,
    }
)


def _ask_operator(attempt: AttemptRecord, reason: str) -> None:
    log.warning(
        "attempt_needs_operator",
        attempt_id=attempt.id,
        payment_id=attempt.payment_id,
        connector=attempt.connector,
        operation=attempt.operation,
        reason=reason,
        settle_with="tessera attempts settle",
    )


def _acknowledged_pending(attempt: AttemptRecord) -> bool:
    """A refund the provider accepted and reported ``pending`` (not a lost answer)."""
    return (
        attempt.refund_id is not None
        and attempt.outcome is Outcome.SUCCEEDED
        and attempt.status is PaymentStatus.PENDING
    )


#: Open refunds weighed together against a provider's refunded total; more, and each refund is
#: judged alone (2**n subsets are tried).
_MAX_REFUNDS_WEIGHED = 12


def _refund_in_total(
    attempt: AttemptRecord, attempts: Sequence[AttemptRecord], counted: int, result: PaymentResult
) -> bool | None:
    """Whether the provider's refunded total in ``result`` holds refund ``attempt`` on top of
    the ``counted`` refunded amount; None when the total cannot tell.

    A total reports the payment, not which refund: with refunds of 300 and 500 open and 500
    more refunded at the provider, the 500 went through, not the 300 (which "the total covers
    it" would credit with the 500's money). So the total is matched against every combination
    of the payment's open refunds (``attempts``: acknowledged ``pending``, ``unknown`` or in
    flight, this one included):

    - no combination adds up to it (a refund made outside Tessera, a provider that reports
      partial settlement): covered or not, as for a single refund;
    - this refund is in every combination that adds up: True; in none: False;
    - the combinations differ only in which of several refunds of the same amount they hold:
      the oldest of those are credited first (the money is the same, and no later answer
      would tell them apart);
    - otherwise (300 + 200, or 500?): None, and a later answer decides.

    True also without a total or an amount: then the answer's status decides, as before.
    """
    total = result.amount_refunded
    if total is None or attempt.amount is None:
        return True
    delta = total.value - counted
    own = attempt.amount.value
    pool = [attempt] + [
        a
        for a in attempts
        if a.refund_id is not None
        and a.refund_id != attempt.refund_id
        and (a.outcome in (None, Outcome.UNKNOWN) or _acknowledged_pending(a))
    ]
    if len(pool) == 1 or len(pool) > _MAX_REFUNDS_WEIGHED or any(a.amount is None for a in pool):
        return delta >= own
    pool.sort(key=lambda a: (a.started_at, a.seq))
    amounts = [a.amount.value if a.amount is not None else 0 for a in pool]  # none is None
    combinations: set[tuple[int, ...]] = set()
    for mask in range(1 << len(pool)):
        chosen = [value for i, value in enumerate(amounts) if mask >> i & 1]
        if sum(chosen) == delta:
            combinations.add(tuple(sorted(chosen)))
    if not combinations:
        return delta >= own
    rank = [a.id for a, value in zip(pool, amounts, strict=True) if value == own].index(attempt.id)
    credited = {rank < combination.count(own) for combination in combinations}
    return credited.pop() if len(credited) == 1 else None


def _covers(total: Money, counted: int, amount: Money) -> bool:
    """A provider's total (captured, refunded) holds ``amount`` on top of what is counted."""
    return total.value >= counted + amount.value


def _totals_confirm(payment: PaymentRecord, result: PaymentResult) -> bool:
    """The answer reports ``captured`` or ``refunded`` with a total that covers what the status
    stands for (everything counted captured, everything captured refunded)."""
    if result.status is PaymentStatus.CAPTURED:
        total = result.amount_captured
        return total is not None and total.value >= payment.captured
    if result.status is PaymentStatus.REFUNDED:
        total = result.amount_refunded
        return total is not None and total.value >= payment.captured
    return False


def _in_flight_movement(attempts: list[AttemptRecord], attempt: AttemptRecord) -> bool:
    """Another capture or refund of the payment is in flight or ``unknown``: money it moved may
    already be in the provider's totals without being Tessera's to count yet."""
    return any(
        a.id != attempt.id and _moves_amount(a) and a.outcome in (None, Outcome.UNKNOWN)
        for a in attempts
    )


def _moves_amount(attempt: AttemptRecord) -> bool:
    """A capture or a refund: an attempt whose success changes ``captured`` or ``refunded``."""
    return attempt.refund_id is not None or attempt.operation == Operation.CAPTURE.value


def _confirmed_capture(
    payment: PaymentRecord, amount: Money | None, result: PaymentResult
) -> Capture | None:
    """The capture of ``amount`` as the provider's captured total confirms it (the total covers
    it on top of what Tessera has counted, and the payment can take it); None otherwise."""
    total = result.amount_captured
    if result.outcome is not Outcome.SUCCEEDED or amount is None or total is None:
        return None
    if not _covers(total, payment.captured, amount):
        return None
    event = Capture(amount, confirmed=True)
    try:
        transition(payment.state, event)
    except IllegalTransitionError:
        return None
    return event


def _operator_result(
    payment: PaymentRecord,
    attempt: AttemptRecord,
    happened: bool,
    status: PaymentStatus | None,
    provider_reference: str | None,
) -> PaymentResult:
    """The answer an operator's verdict stands for, shaped like a sync's: a capture or refund
    carries the provider's new total, so it is counted the way a confirmed one is. Raises
    ``InvalidRequestError`` for a verdict that does not fit the attempt, and the state
    machine's errors for one the payment cannot take."""
    reference = provider_reference or attempt.provider_reference or payment.provider_reference
    operation = attempt.operation
    consent = payment.payment_method.type == _OPEN_BANKING
    moves = operation in (Operation.CAPTURE.value, Operation.REFUND.value, Operation.VOID.value)
    if status is not None and (moves or not happened):
        raise InvalidRequestError(
            "A status is given only for an authorization, complete or submit that happened."
        )
    if not happened:
        if operation == Operation.SUBMIT.value:
            # A consent is submitted once (payments migration 2): closing this attempt would
            # leave the customer's authorized consent unpaid with no way to submit it again.
            raise InvalidRequestError(
                "A submit that did not happen cannot be closed here: settle it once the bank "
                "shows the payment, or revoke the consent at the bank and settle it then."
            )
        return PaymentResult.not_sent()
    if operation == Operation.SYNC.value:
        raise InvalidRequestError("A sync moves no money: settle it as not happened.")
    if operation == Operation.COMPLETE_AUTHORIZATION.value and consent:
        # An authorized consent still has to be submitted, which ``complete`` does.
        raise InvalidRequestError(
            "An open-banking authorization is settled --not-happened: the next `complete` "
            "asks the bank again and submits the consent once it is authorized."
        )
    if operation == Operation.VOID.value:
        transition(payment.state, Void())  # the payment must still be voidable
        return PaymentResult(
            outcome=Outcome.SUCCEEDED, status=PaymentStatus.VOIDED, provider_reference=reference
        )
    if moves:
        amount = attempt.amount
        if amount is None:
            raise InvalidRequestError(f"The {operation} attempt records no amount to count.")
        if operation == Operation.CAPTURE.value:
            after = transition(payment.state, Capture(amount, confirmed=True))
            return PaymentResult(
                outcome=Outcome.SUCCEEDED, status=after.status or PaymentStatus.CAPTURED,
                provider_reference=reference,
                amount_captured=Money.of(after.captured, amount.currency),
            )  # fmt: skip
        after = transition(payment.state, Refund(amount))
        return PaymentResult(
            outcome=Outcome.SUCCEEDED, status=after.status or PaymentStatus.REFUNDED,
            provider_reference=reference, amount_refunded=Money.of(after.refunded, amount.currency),
        )  # fmt: skip
    if status not in _OPERATOR_STATUSES:
        raise InvalidRequestError(
            f"Say what the provider shows for this {operation}: status authorized or captured."
        )
    if consent and status is not PaymentStatus.CAPTURED:
        # ``authorized`` is the consent's state before its submit, not a payment's.
        raise InvalidRequestError(
            "A submitted consent is settled as captured, once the bank shows the payment."
        )
    if reference is None:
        raise InvalidRequestError(
            "Give the provider's id for it (--provider-reference): later captures, voids and "
            "refunds are sent with it."
        )
    transition(payment.state, Observe(status))  # the payment must be able to take it
    return PaymentResult(outcome=Outcome.SUCCEEDED, status=status, provider_reference=reference)


def _refund_status(result: PaymentResult) -> RefundStatus:
    if result.outcome is Outcome.SUCCEEDED:
        if result.status is PaymentStatus.PENDING:
            return RefundStatus.PENDING
        return RefundStatus.SUCCEEDED
    if result.outcome is Outcome.UNKNOWN:
        return RefundStatus.PENDING
    return RefundStatus.FAILED


def _refundable(payment: PaymentRecord, reserved: int) -> int:
    """What may still be refunded: captured, less refunded and less refunds still pending."""
    return max(0, payment.state.refundable - reserved)


#: Retry-After for a refund refused only because of refunds still pending: their outcome, not
#: the request, decides whether it fits, so the refusal is not the idempotency key's answer.
_PENDING_REFUNDS_RETRY_AFTER = 60.0


def _check_refund(payment: PaymentRecord, amount: Money, reserved: int) -> None:
    transition(payment.state, Refund(amount))  # status, currency, amount against captured
    if reserved and amount.value > _refundable(payment, reserved):
        raise _refunds_pending(_refundable(payment, reserved), reserved, amount.value)


def _capture_terms(manifest: Manifest, payment: PaymentRecord, amount: Money, final: bool) -> bool:
    """Whether the capture is final, under what the payment's connector declares (its manifest's
    ``capture``): one that takes one capture per payment releases the rest with the first, so
    Tessera must count it as final too (else the payment waits, ``partially_captured``, for a
    second capture the provider refuses). One that cannot capture part of an authorization is
    refused a partial amount before anything is sent."""
    if amount.value < payment.state.capturable and not manifest.capture.partial:
        raise PartialCaptureNotSupportedError(
            f"Connector {manifest.id!r} captures the whole authorization only: "
            f"{payment.state.capturable} minor units (omit the amount)."
        )
    return final or not manifest.capture.multiple


def _check_refund_terms(
    terms: MultiSupport | None, payment: PaymentRecord, amount: Money, reserved: int
) -> None:
    """Refuse, before anything is sent, a refund the payment's connector does not take (its
    manifest's ``refund``): a partial one, or a second one (``reserved``: refunds still open)."""
    if terms is None:
        return
    if not terms.partial and amount.value != payment.captured - payment.refunded - reserved:
        raise PartialRefundNotSupportedError(
            "The payment's connector refunds the whole captured amount only: "
            f"{payment.captured} minor units (omit the amount)."
        )
    if not terms.multiple and (payment.refunded or reserved):
        raise MultipleRefundsNotSupportedError(
            "The payment's connector takes one refund per payment, and it has one already."
        )


def _refunds_pending(left: int, reserved: int, asked: int) -> RefundExceedsCapturedError:
    """The refusal of a refund that fits only if refunds still pending fail (``Retry-After``:
    not the idempotency key's answer)."""
    return RefundExceedsCapturedError(
        f"Only {left} minor units remain refundable ({reserved} more are in refunds still "
        f"pending); asked {asked}.",
        retry_after=_PENDING_REFUNDS_RETRY_AFTER,
    )


def _authorized(outcome: Outcome | None, status: PaymentStatus | None) -> bool:
    return outcome is Outcome.SUCCEEDED and status is PaymentStatus.AUTHORIZED


def _unsubmitted(payment: PaymentRecord, result: PaymentResult) -> bool:
    """An open-banking consent the customer authorized, with no payment submitted yet: not a
    state of the payment (which stays ``requires_action`` until the submit answers)."""
    return payment.payment_method.type == _OPEN_BANKING and _authorized(
        result.outcome, result.status
    )


def _as_recorded(attempt: AttemptRecord, own: PaymentResult) -> PaymentResult:
    """The answer to give for ``attempt``, settled by someone else before ``own`` (our late
    answer) was recorded: the recorded one, which moved the payment."""
    if (attempt.outcome, attempt.status) == (own.outcome, own.status):
        return own
    if attempt.outcome is Outcome.UNKNOWN or attempt.outcome is None:
        return PaymentResult.unknown(attempt.provider_reference)
    if attempt.outcome is Outcome.NOT_SENT:
        return PaymentResult.not_sent()
    if attempt.outcome is Outcome.DECLINED:
        try:
            code = DeclineCode(attempt.error_code or "")
        except ValueError:
            code = DeclineCode.DO_NOT_HONOR
        return PaymentResult.declined(code, provider_reference=attempt.provider_reference)
    return PaymentResult(
        outcome=Outcome.SUCCEEDED,
        status=attempt.status or PaymentStatus.UNKNOWN,
        provider_reference=attempt.provider_reference,
    )


def _answered(outcome: OperationOutcome) -> OperationOutcome:
    """A capture, void or refund recorded ``not_sent`` (an operator's "did not happen" that
    settled it while our call ran) did not happen: 503 as for a call the provider did not
    take, not the unchanged payment with a 200."""
    if outcome.result.outcome is Outcome.NOT_SENT:
        raise _not_taken(outcome.attempt.operation)
    return outcome


def _not_taken(operation: str) -> ConnectorUnavailableError:
    return ConnectorUnavailableError(
        f"The provider did not take the {operation} (nothing was done); retry it.", retry_after=1
    )
