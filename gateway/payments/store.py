"""The payment store: payments, attempts, refunds and received webhook events, on SQLite or
PostgreSQL through ``vault.database`` (the same SQL on both; instants as integer microseconds).

Guarantees the gateway builds on:

- **Merchant isolation.** Every read by payment id also names the merchant; another merchant's
  payment is ``PaymentNotFoundError``, indistinguishable from a missing one.
- **Legal transitions only.** ``apply`` runs the normalization state machine (``transition``) on
  the stored state; an illegal move raises ``IllegalTransitionError`` and writes nothing.
- **Optimistic concurrency.** A payment carries a ``version``; ``apply`` updates only the
  version it read, so two requests (or a request and a webhook) racing on one payment cannot
  both win: the loser gets ``ConcurrentUpdateError`` (retryable) and may re-read and re-apply.
- **Attempts are numbered per payment** (``seq``, unique) and carry a provider idempotency key
  derived from their identity. An attempt that never finished, one whose outcome was
  ``unknown`` and one left ``pending`` by the provider are due for reconciliation
  (``due_for_reconciliation`` / ``claim_for_reconciliation``) with exponential backoff.
- **One money-moving operation at a time.** A capture, void, refund, authorization completion
  or submit cannot start (``OperationInProgressError``, 409) while another of them on the same
  payment is open: sent and unanswered, or ``unknown`` until reconciliation settles it; and a
  payment is submitted once. A unique index decides (migration 2), so it holds across
  processes; the caller re-checks the payment's state inside the transaction that started the
  attempt, so a decision made on a stale read never reaches the provider.
- **Webhook events are recorded once** (primary key on connector + event id): of concurrent
  deliveries of one event, exactly one ``record_webhook_event`` returns True.

Every mutating method takes an optional ``tx`` (a ``Connection`` from ``db.transaction()``), so
a state change, its attempt and its merchant notification (``Outbox.enqueue``) commit together.
On SQLite the transaction holds the database's only connection: inside it, use ``tx`` for
everything (the store does), never the ``Database`` itself.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from gateway.payments.backoff import ReconcilePolicy
from gateway.payments.instants import Clock, SystemClock, from_micros, to_micros
from gateway.payments.records import (
    KEEP,
    AttemptRecord,
    ConcurrentUpdateError,
    MigrationConflictError,
    OperationInProgressError,
    PaymentMethodSummary,
    PaymentRecord,
    RefundRecord,
    RefundStatus,
    Unchanged,
    new_id,
    provider_idempotency_key,
)
from gateway.payments.schema import (
    FINISH_ATTEMPT,
    INSERT_ATTEMPT,
    INSERT_PAYMENT,
    INSERT_REFUND,
    LEASE_ATTEMPT,
    LOCKING_OPERATIONS,
    MIGRATIONS,
    SELECT_ATTEMPTS,
    SELECT_PAYMENT_BY_ATTEMPT,
    SELECT_PAYMENTS,
    SELECT_REFUNDS,
    SETTLE_PENDING_REFUND,
    UPDATE_REFUND,
    attempt_from_row,
    enum_value,
    model_json,
    payment_from_row,
    refund_from_row,
    to_json,
)
from normalization import (
    Decline,
    IllegalTransitionError,
    InvalidRequestError,
    Money,
    NextAction,
    NotFoundError,
    Observe,
    Outcome,
    PaymentEvent,
    PaymentNotFoundError,
    PaymentResult,
    PaymentStatus,
    contains_pan,
    transition,
)
from vault.database import (
    Connection,
    PostgresDatabase,
    Row,
    SqliteDatabase,
    in_transaction,
    keyset_page,
    migrate,
)

__all__ = ["PaymentStore"]

_COMPONENT = "gateway.payments"
_LOCKING = ", ".join(f"'{op}'" for op in sorted(LOCKING_OPERATIONS))
#: Payments holding what migration 2's unique indexes forbid (at most 20 shown).
_LOCK_CONFLICTS = (
    "SELECT payment_id, 'open operations' AS what FROM payment_attempts "  # noqa: S608
    f"WHERE operation IN ({_LOCKING}) AND (outcome IS NULL OR outcome = 'unknown') "
    "GROUP BY payment_id HAVING COUNT(*) > 1 "
    "UNION ALL SELECT payment_id, 'submits' AS what FROM payment_attempts "
    "WHERE operation = 'submit' GROUP BY payment_id HAVING COUNT(*) > 1 LIMIT 20"
)
_MAX_SEQ_RACES = 10


async def _refuse_if_locked(conn: Connection, payment_id: str, operation: str) -> None:
    """After an attempt insert that returned no row: ``OperationInProgressError`` if the reason
    is migration 2's guard (an open money-moving operation, or a second submit) rather than a
    ``seq`` taken meanwhile (then it returns, and the caller takes the next number)."""
    rows = await conn.fetchall(
        "SELECT operation, outcome FROM payment_attempts WHERE payment_id = $1", payment_id
    )
    if operation == "submit" and any(row["operation"] == "submit" for row in rows):
        raise OperationInProgressError("The payment was submitted already.")
    for row in rows:
        if row["operation"] in LOCKING_OPERATIONS and row["outcome"] in (None, "unknown"):
            raise OperationInProgressError(
                f"A {row['operation']} of this payment is in progress or its outcome is not "
                "known yet; nothing was done. Retry once it has settled."
            )


class PaymentStore:
    """Payments, attempts, refunds and webhook events over one ``Database``."""

    def __init__(
        self,
        db: SqliteDatabase | PostgresDatabase,
        *,
        clock: Clock | None = None,
        reconcile_policy: ReconcilePolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._policy = reconcile_policy or ReconcilePolicy()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    @property
    def reconcile_policy(self) -> ReconcilePolicy:
        return self._policy

    def now(self) -> datetime:
        """The store's clock (what its timestamps are written with)."""
        return self._clock.now()

    async def migrate(self) -> None:
        """Apply the payment schema's migrations. ``MigrationConflictError`` when migration 2
        meets what its unique indexes forbid (two open money-moving attempts or two submits of
        one payment, which earlier builds could record), naming the payments."""
        try:
            await migrate(self._db, _COMPONENT, MIGRATIONS)
        except Exception as exc:
            try:
                conflicts = await self._db.fetchall(_LOCK_CONFLICTS)
            except Exception:  # noqa: BLE001 - the migration's own error is the one to show
                raise exc from None
            if not conflicts:
                raise
            shown = ", ".join(f"{row['payment_id']} ({row['what']})" for row in conflicts)
            raise MigrationConflictError(
                "payments migration 2 (one money-moving operation at a time per payment) cannot "
                "be applied: these payments hold what it forbids, recorded by an earlier build: "
                f"{shown}. Settle them with the provider and record the outcome as "
                "docs/operating.md, 'Upgrading: payments migration 2', says; then start again."
            ) from exc

    def _tx(self, tx: Connection | None) -> AbstractAsyncContextManager[Connection]:
        return in_transaction(self._db, tx)

    def _now(self) -> int:
        return to_micros(self._clock.now())

    # -- payments -------------------------------------------------------------------------------

    async def create_payment(
        self,
        merchant_id: str,
        amount: Money,
        *,
        payment_method: PaymentMethodSummary,
        capture: bool = False,
        connector: str | None = None,
        reference: str | None = None,
        metadata: Mapping[str, str] | None = None,
        return_url: str | None = None,
        tx: Connection | None = None,
    ) -> PaymentRecord:
        """Insert a new payment (status ``None``: no connector has answered yet)."""
        metadata = dict(metadata or {})
        _refuse_card_numbers(reference, metadata)
        now = self._now()
        payment_id = new_id("pay")
        async with self._tx(tx) as conn:
            await conn.execute(
                INSERT_PAYMENT,
                payment_id,
                merchant_id,
                amount.value,
                amount.currency,
                capture,
                connector,
                reference,
                to_json(metadata),
                to_json(payment_method.to_json()),
                return_url,
                now,
            )
        moment = from_micros(now)
        return PaymentRecord(
            id=payment_id,
            merchant_id=merchant_id,
            status=None,
            amount=amount,
            captured=0,
            refunded=0,
            capture=capture,
            connector=connector,
            reference=reference,
            metadata=metadata,
            payment_method=payment_method,
            return_url=return_url,
            provider_reference=None,
            next_action=None,
            decline=None,
            created_at=moment,
            updated_at=moment,
            version=1,
        )

    async def get_payment(
        self, merchant_id: str, payment_id: str, *, tx: Connection | None = None
    ) -> PaymentRecord:
        """The merchant's payment; ``PaymentNotFoundError`` if missing or someone else's."""
        row = await (tx or self._db).fetchone(
            SELECT_PAYMENTS + " WHERE id = $1 AND merchant_id = $2", payment_id, merchant_id
        )
        if row is None:
            raise PaymentNotFoundError()
        return payment_from_row(row)

    async def payment_of(
        self, attempt: AttemptRecord, *, tx: Connection | None = None
    ) -> PaymentRecord:
        """The payment ``attempt`` belongs to, whoever's it is (reconciler, operator)."""
        row = await (tx or self._db).fetchone(
            SELECT_PAYMENTS + " WHERE id = $1", attempt.payment_id
        )
        if row is None:
            raise PaymentNotFoundError()
        return payment_from_row(row)

    async def find_by_reference(
        self,
        merchant_id: str,
        reference: str,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[PaymentRecord]:
        """The merchant's payments carrying ``reference``, newest first: after the position
        ``after`` (created at, id: the last payment of a previous page), at most ``limit``."""
        sql = SELECT_PAYMENTS + " WHERE merchant_id = $1 AND reference = $2"
        args: list[object] = [merchant_id, reference]
        position = None if after is None else (to_micros(after[0]), after[1])
        sql = keyset_page(sql, args, after=position, limit=limit, newest_first=True)
        rows = await self._db.fetchall(sql, *args)
        return [payment_from_row(row) for row in rows]

    async def find_by_provider_reference(
        self, connector: str, provider_reference: str
    ) -> PaymentRecord | None:
        """The payment a provider's webhook is about (by the payment's or an attempt's ref)."""
        row = await self._db.fetchone(
            SELECT_PAYMENTS + " WHERE connector = $1 AND provider_reference = $2",
            connector,
            provider_reference,
        )
        if row is None:
            row = await self._db.fetchone(
                SELECT_PAYMENT_BY_ATTEMPT + " WHERE a.connector = $1 AND a.provider_reference = $2 "
                "ORDER BY a.seq DESC LIMIT 1",
                connector,
                provider_reference,
            )
        return None if row is None else payment_from_row(row)

    async def apply(
        self, payment: PaymentRecord, event: PaymentEvent | PaymentStatus, **changes: Any
    ) -> PaymentRecord:
        """``apply_seen``'s result alone (what changed does not matter to the caller)."""
        _, updated = await self.apply_seen(payment, event, **changes)
        return updated

    async def apply_seen(
        self,
        payment: PaymentRecord,
        event: PaymentEvent | PaymentStatus,
        *,
        connector: str | Unchanged | None = KEEP,
        provider_reference: str | Unchanged | None = KEEP,
        next_action: NextAction | Unchanged | None = KEEP,
        decline: Decline | Unchanged | None = KEEP,
        metadata: Mapping[str, str] | Unchanged = KEEP,
        retries: int = 0,
        tx: Connection | None = None,
    ) -> tuple[PaymentRecord, PaymentRecord]:
        """Run ``event`` (a status means ``Observe(status)``) through the state machine and save;
        the stored record it was applied to, and the result.

        Writes only if ``payment.version`` is still the stored version; otherwise, after
        ``retries`` re-reads and re-applications, raises ``ConcurrentUpdateError``. An event that
        changes nothing (a duplicate ``Observe``) with no field changes writes nothing (the two
        records returned are equal). After a re-read the first record is not ``payment`` (a
        caller's snapshot): what changed (a notification, say) is the difference between the
        two records returned, not between ``payment`` and the result."""
        step = Observe(event) if isinstance(event, PaymentStatus) else event
        if metadata is not KEEP:
            _refuse_card_numbers(None, dict(metadata))
        async with self._tx(tx) as conn:
            current = payment
            for remaining in range(retries, -1, -1):
                state = transition(current.state, step)
                updated = replace(
                    current,
                    status=state.status,
                    captured=state.captured,
                    refunded=state.refunded,
                    connector=current.connector if connector is KEEP else connector,
                    provider_reference=(
                        current.provider_reference
                        if provider_reference is KEEP
                        else provider_reference
                    ),
                    next_action=current.next_action if next_action is KEEP else next_action,
                    decline=current.decline if decline is KEEP else decline,
                    metadata=current.metadata if metadata is KEEP else dict(metadata),
                )
                if updated == current:
                    return current, current
                now = self._now()
                version = await conn.fetchval(
                    "UPDATE payments SET status = $1, captured = $2, refunded = $3, "
                    "connector = $4, provider_reference = $5, next_action = $6, decline = $7, "
                    "metadata = $8, updated_at = $9, version = version + 1 "
                    "WHERE id = $10 AND merchant_id = $11 AND version = $12 RETURNING version",
                    enum_value(updated.status),
                    updated.captured,
                    updated.refunded,
                    updated.connector,
                    updated.provider_reference,
                    model_json(updated.next_action),
                    model_json(updated.decline),
                    to_json(updated.metadata),
                    now,
                    current.id,
                    current.merchant_id,
                    current.version,
                )
                if version is not None:
                    return current, replace(
                        updated, updated_at=from_micros(now), version=int(version)
                    )
                if remaining:
                    current = await self.get_payment(current.merchant_id, current.id, tx=conn)
        raise ConcurrentUpdateError()

    # -- attempts -------------------------------------------------------------------------------

    async def start_attempt(
        self,
        payment: PaymentRecord,
        connector: str,
        operation: str,
        *,
        amount: Money | None = None,
        refund_id: str | None = None,
        seq: int | None = None,
        tx: Connection | None = None,
    ) -> AttemptRecord:
        """Record a connector call about to be made; its provider key comes with it.

        Call it (and commit) before sending: if the process dies mid-call, the attempt stays
        ``in_flight`` and becomes due for reconciliation after ``in_flight_grace``.

        ``seq``: the number the caller expects the attempt to get (it knows the payment's
        attempts, e.g. it created the payment in ``tx``); tried first, which saves reading
        ``MAX(seq)``. Taken meanwhile: the next free number, as without it.
        """
        now = self._now()
        grace = to_micros(from_micros(now) + self._policy.in_flight_grace)
        return await self._insert_attempt(
            payment, connector, str(operation), amount, refund_id, seq, now, grace, None, tx
        )

    async def refused_attempt(
        self,
        payment: PaymentRecord,
        connector: str,
        operation: str,
        *,
        error_code: str,
        amount: Money | None = None,
        seq: int | None = None,
        tx: Connection | None = None,
    ) -> AttemptRecord:
        """Record a call refused before anything was sent (breaker open): settled ``not_sent``.

        For a connector the gateway skips without calling it: the payment still shows why it
        did not go there. Nothing to reconcile.
        """
        return await self._insert_attempt(
            payment,
            connector,
            str(operation),
            amount,
            None,
            seq,
            self._now(),
            None,
            (PaymentResult.not_sent(), error_code),
            tx,
        )

    async def _insert_attempt(
        self,
        payment: PaymentRecord,
        connector: str,
        operation: str,
        amount: Money | None,
        refund_id: str | None,
        seq_hint: int | None,
        now: int,
        next_at: int | None,
        finished: tuple[PaymentResult, str] | None,
        tx: Connection | None,
    ) -> AttemptRecord:
        attempt_id = new_id("att")
        result, error_code = finished if finished is not None else (None, None)
        async with self._tx(tx) as conn:
            seq = seq_hint
            for _ in range(_MAX_SEQ_RACES):
                if seq is None:
                    last = await conn.fetchval(
                        "SELECT MAX(seq) FROM payment_attempts WHERE payment_id = $1", payment.id
                    )
                    seq = int(last or 0) + 1
                key = provider_idempotency_key(payment.merchant_id, payment.id, seq, operation)
                inserted = await conn.fetchval(
                    INSERT_ATTEMPT,
                    attempt_id,
                    payment.id,
                    seq,
                    connector,
                    operation,
                    key,
                    None if amount is None else amount.value,
                    None if amount is None else amount.currency,
                    refund_id,
                    now,
                    next_at,
                    None if result is None else result.outcome.value,
                    None if result is None else result.status.value,
                    error_code,
                    None if result is None else now,
                )
                if inserted is not None:
                    break
                if operation in LOCKING_OPERATIONS:
                    await _refuse_if_locked(conn, payment.id, operation)
                seq = None
            else:  # pragma: no cover - needs _MAX_SEQ_RACES concurrent starts on one payment
                raise ConcurrentUpdateError("Too many concurrent attempts on one payment.")
        return AttemptRecord(
            id=attempt_id,
            payment_id=payment.id,
            seq=seq,
            connector=connector,
            operation=operation,
            provider_idempotency_key=key,
            outcome=None if result is None else result.outcome,
            status=None if result is None else result.status,
            provider_reference=None,
            error_code=error_code,
            amount=amount,
            refund_id=refund_id,
            started_at=from_micros(now),
            finished_at=None if result is None else from_micros(now),
            next_reconcile_at=None if next_at is None else from_micros(next_at),
            reconcile_count=0,
        )

    async def reserved_refunds(self, payment_id: str, *, tx: Connection | None = None) -> int:
        """Minor units of the payment's refunds still ``pending`` (requested, not yet settled):
        not in ``refunded`` yet, but not refundable a second time either."""
        total = await (tx or self._db).fetchval(
            "SELECT COALESCE(SUM(amount_value), 0) FROM payment_refunds "
            "WHERE payment_id = $1 AND status = $2",
            payment_id,
            RefundStatus.PENDING.value,
        )
        return int(total)

    async def get_attempt(self, attempt_id: str, *, tx: Connection | None = None) -> AttemptRecord:
        row = await (tx or self._db).fetchone(SELECT_ATTEMPTS + " WHERE id = $1", attempt_id)
        if row is None:
            raise NotFoundError("No such attempt.")
        return attempt_from_row(row)

    async def finish_attempt(
        self,
        attempt: str | AttemptRecord,
        result: PaymentResult,
        *,
        error_code: str | None = None,
        tx: Connection | None = None,
    ) -> AttemptRecord:
        """``settle_attempt`` for callers that act on the answer whoever recorded it."""
        settled, _ = await self.settle_attempt(attempt, result, error_code=error_code, tx=tx)
        return settled

    async def settle_attempt(
        self,
        attempt: str | AttemptRecord,
        result: PaymentResult,
        *,
        error_code: str | None = None,
        tx: Connection | None = None,
    ) -> tuple[AttemptRecord, bool]:
        """Record the answer of a connector call (or of the sync that settled it); the attempt,
        and whether this call recorded it (False: it was already settled with this answer, by
        the reconciler, a sync or a webhook, which counted whatever it moved).

        ``attempt``: its id, or the record (saves a read when the answer needs no
        reconciliation; its ``reconcile_count`` sets the backoff when it does). An ``unknown``
        outcome or a ``pending`` status schedules reconciliation; anything else clears it.
        Finishing an attempt that is already settled with the same answer is a no-op
        (duplicate webhook, repeated sync); with a different answer it is
        ``IllegalTransitionError``. One conditional ``UPDATE``: of two concurrent finishers,
        one settles the attempt.
        """
        if error_code is None and result.decline is not None:
            error_code = result.decline.code.value
        async with self._tx(tx) as conn:
            known = attempt if isinstance(attempt, AttemptRecord) else None
            attempt_id = attempt.id if isinstance(attempt, AttemptRecord) else attempt
            now = self._now()
            next_at: int | None = None
            if result.outcome is Outcome.UNKNOWN or result.status is PaymentStatus.PENDING:
                if known is None:
                    known = await self.get_attempt(attempt_id, tx=conn)
                delay = self._policy.backoff.delay(known.reconcile_count, self._rng)
                next_at = to_micros(from_micros(now) + delay)
            row = await conn.fetchone(
                FINISH_ATTEMPT,
                result.outcome.value,
                result.status.value,
                result.provider_reference,
                error_code,
                now,
                next_at,
                attempt_id,
                Outcome.UNKNOWN.value,
                PaymentStatus.PENDING.value,
            )
            if row is not None:
                return attempt_from_row(row), True
            settled = await self.get_attempt(attempt_id, tx=conn)
        if (settled.outcome, settled.status) == (result.outcome, result.status):
            return settled, False
        raise IllegalTransitionError(
            f"The {settled.operation} attempt is already settled as "
            f"{settled.outcome} / {settled.status}."
        )

    async def attempts(
        self, payment_id: str, *, tx: Connection | None = None
    ) -> list[AttemptRecord]:
        rows = await (tx or self._db).fetchall(
            SELECT_ATTEMPTS + " WHERE payment_id = $1 ORDER BY seq",
            payment_id,
        )
        return [attempt_from_row(row) for row in rows]

    async def due_for_reconciliation(
        self, now: datetime | None = None, limit: int = 100
    ) -> list[AttemptRecord]:
        """Open attempts (in flight too long, ``unknown`` or ``pending``) whose time has come."""
        at = to_micros(now or self._clock.now())
        rows = await self._db.fetchall(
            SELECT_ATTEMPTS + " WHERE next_reconcile_at IS NOT NULL AND next_reconcile_at <= $1 "
            "ORDER BY next_reconcile_at, id LIMIT $2",
            at,
            limit,
        )
        return [attempt_from_row(row) for row in rows]

    async def open_attempts(self, limit: int = 100) -> list[AttemptRecord]:
        """Every attempt still open (in flight, ``unknown`` or ``pending``), oldest first: what
        ``tessera attempts list`` shows."""
        rows = await self._db.fetchall(
            SELECT_ATTEMPTS + " WHERE next_reconcile_at IS NOT NULL ORDER BY started_at, id "
            "LIMIT $1",
            limit,
        )
        return [attempt_from_row(row) for row in rows]

    async def claim_for_reconciliation(
        self,
        now: datetime | None = None,
        limit: int = 100,
        *,
        lease: timedelta = timedelta(seconds=60),
    ) -> list[AttemptRecord]:
        """Like ``due_for_reconciliation``, but hides the attempts from other reconcilers.

        Each returned attempt's ``next_reconcile_at`` moves ``lease`` ahead, so two reconciler
        processes never sync the same attempt at once; a reconciler that dies mid-sync leaves the
        attempt due again when the lease runs out. After the sync, ``finish_attempt`` (final
        answer) or ``schedule_reconcile`` (still open) replaces the lease.
        """
        moment = now or self._clock.now()
        at, until = to_micros(moment), to_micros(moment + lease)
        # PostgreSQL: rows another reconciler is leasing right now are skipped, not waited for.
        # SQLite has one writer at a time, so its transaction alone keeps the claim atomic.
        due = (
            "SELECT id FROM payment_attempts WHERE next_reconcile_at IS NOT NULL "
            "AND next_reconcile_at <= $1 ORDER BY next_reconcile_at, id LIMIT $2"
        )
        if self._db.dialect == "postgresql":
            due += " FOR UPDATE SKIP LOCKED"
        async with self._db.transaction() as conn:
            rows = await conn.fetchall(
                due,
                at,
                limit,
            )
            claimed: list[AttemptRecord] = []
            for row in rows:
                updated = await conn.fetchone(
                    LEASE_ATTEMPT,
                    until,
                    row["id"],
                    at,
                )
                if updated is not None:
                    claimed.append(attempt_from_row(updated))
        return claimed

    async def schedule_reconcile(
        self, attempt_id: str, at: datetime | None = None, *, tx: Connection | None = None
    ) -> AttemptRecord:
        """Count one more reconciliation try and set the next one (default: the backoff)."""
        async with self._tx(tx) as conn:
            attempt = await self.get_attempt(attempt_id, tx=conn)
            count = attempt.reconcile_count + 1
            when = at or (self._clock.now() + self._policy.backoff.delay(count, self._rng))
            await conn.execute(
                "UPDATE payment_attempts SET next_reconcile_at = $1, reconcile_count = $2 "
                "WHERE id = $3",
                to_micros(when),
                count,
                attempt_id,
            )
        return replace(attempt, next_reconcile_at=when, reconcile_count=count)

    # -- refunds --------------------------------------------------------------------------------

    async def add_refund(
        self, payment: PaymentRecord, amount: Money, *, tx: Connection | None = None
    ) -> RefundRecord:
        """Record a refund about to be requested (``pending``) for ``payment``."""
        if amount.currency != payment.amount.currency:
            raise InvalidRequestError("The refund must be in the payment's currency.")
        refund_id = new_id("re")
        now = self._now()
        async with self._tx(tx) as conn:
            await conn.execute(
                INSERT_REFUND,
                refund_id,
                payment.id,
                amount.value,
                amount.currency,
                RefundStatus.PENDING.value,
                now,
            )
        moment = from_micros(now)
        return RefundRecord(
            id=refund_id,
            payment_id=payment.id,
            amount=amount,
            status=RefundStatus.PENDING,
            provider_reference=None,
            created_at=moment,
            updated_at=moment,
        )

    async def update_refund(
        self,
        refund_id: str,
        *,
        status: RefundStatus,
        provider_reference: str | Unchanged | None = KEEP,
        tx: Connection | None = None,
    ) -> RefundRecord:
        row = await self._write_refund(UPDATE_REFUND, refund_id, status, provider_reference, tx)
        if row is None:
            raise NotFoundError("No such refund.")
        return refund_from_row(row)

    async def settle_pending_refund(
        self,
        refund_id: str,
        *,
        status: RefundStatus,
        provider_reference: str | None = None,
        tx: Connection | None = None,
    ) -> RefundRecord | None:
        """Move a ``pending`` refund to ``status``; None if it was not pending (any more): of
        concurrent settlers (a sync, the reconciler), exactly one gets the record."""
        reference: str | Unchanged = KEEP if provider_reference is None else provider_reference
        row = await self._write_refund(
            SETTLE_PENDING_REFUND, refund_id, status, reference, tx, RefundStatus.PENDING.value
        )
        return None if row is None else refund_from_row(row)

    async def _write_refund(
        self,
        statement: str,
        refund_id: str,
        status: RefundStatus,
        provider_reference: str | Unchanged | None,
        tx: Connection | None,
        *extra: object,
    ) -> Row | None:
        reference = None if provider_reference is KEEP else provider_reference
        async with self._tx(tx) as conn:
            return await conn.fetchone(
                statement,
                status.value,
                provider_reference is KEEP,
                reference,
                self._now(),
                refund_id,
                *extra,
            )

    async def get_refund(self, refund_id: str, *, tx: Connection | None = None) -> RefundRecord:
        row = await (tx or self._db).fetchone(SELECT_REFUNDS + " WHERE id = $1", refund_id)
        if row is None:
            raise NotFoundError("No such refund.")
        return refund_from_row(row)

    async def refunds(self, payment_id: str) -> list[RefundRecord]:
        rows = await self._db.fetchall(
            SELECT_REFUNDS + " WHERE payment_id = $1 ORDER BY created_at, id",
            payment_id,
        )
        return [refund_from_row(row) for row in rows]

    # -- webhook events -------------------------------------------------------------------------

    async def record_webhook_event(
        self, connector: str, event_id: str, *, tx: Connection | None = None
    ) -> bool:
        """True the first time ``(connector, event_id)`` is seen; False for every duplicate."""
        async with self._tx(tx) as conn:
            inserted = await conn.fetchval(
                "INSERT INTO webhook_events (connector, event_id, received_at) "
                "VALUES ($1, $2, $3) ON CONFLICT (connector, event_id) DO NOTHING "
                "RETURNING event_id",
                connector,
                event_id,
                self._now(),
            )
        return inserted is not None

    async def forget_webhook_event(
        self, connector: str, event_id: str, *, tx: Connection | None = None
    ) -> None:
        """Undo ``record_webhook_event`` when applying the event failed, so a redelivery runs."""
        async with self._tx(tx) as conn:
            await conn.execute(
                "DELETE FROM webhook_events WHERE connector = $1 AND event_id = $2",
                connector,
                event_id,
            )

    async def purge_webhook_events(self, before: datetime) -> int:
        """Forget events received before ``before`` (providers stop redelivering after days)."""
        async with self._db.transaction() as conn:
            rows = await conn.fetchall(
                "DELETE FROM webhook_events WHERE received_at < $1 RETURNING event_id",
                to_micros(before),
            )
        return len(rows)


def _refuse_card_numbers(reference: str | None, metadata: Mapping[str, str]) -> None:
    # Merchants sometimes paste card numbers into free-text fields; none may reach the store.
    if reference is not None and contains_pan(reference):
        raise InvalidRequestError("reference looks like a card number; it is not stored.")
    for key, value in metadata.items():
        if contains_pan(key) or contains_pan(value):
            raise InvalidRequestError("metadata looks like it holds a card number; not stored.")
