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
- **Webhook events are recorded once** (primary key on connector + event id): of concurrent
  deliveries of one event, exactly one ``record_webhook_event`` returns True.

Every mutating method takes an optional ``tx`` (a ``Connection`` from ``db.transaction()``), so
a state change, its attempt and its merchant notification (``Outbox.enqueue``) commit together.
On SQLite the transaction holds the database's only connection: inside it, use ``tx`` for
everything (the store does), never the ``Database`` itself.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Final, Literal

import orjson

from gateway.payments.backoff import ExponentialBackoff
from gateway.payments.instants import Clock, SystemClock, from_micros, to_micros
from gateway.payments.records import (
    AttemptRecord,
    PaymentMethodSummary,
    PaymentRecord,
    RefundRecord,
    RefundStatus,
    contains_pan,
    new_id,
    provider_idempotency_key,
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
    TesseraError,
    transition,
)
from vault.database import Connection, Migration, PostgresDatabase, Row, SqliteDatabase, migrate

__all__ = [
    "KEEP",
    "ConcurrentUpdateError",
    "PaymentStore",
    "ReconcilePolicy",
]

_COMPONENT = "gateway.payments"

_MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE payments (
            id TEXT PRIMARY KEY,
            merchant_id TEXT NOT NULL,
            status TEXT,
            amount_value BIGINT NOT NULL,
            currency TEXT NOT NULL,
            captured BIGINT NOT NULL DEFAULT 0,
            refunded BIGINT NOT NULL DEFAULT 0,
            capture BOOLEAN NOT NULL,
            connector TEXT,
            reference TEXT,
            metadata TEXT NOT NULL,
            payment_method TEXT NOT NULL,
            return_url TEXT,
            provider_reference TEXT,
            next_action TEXT,
            decline TEXT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            version INTEGER NOT NULL
        );
        CREATE INDEX payments_reference ON payments (merchant_id, reference)
            WHERE reference IS NOT NULL;
        CREATE INDEX payments_provider_reference ON payments (connector, provider_reference)
            WHERE provider_reference IS NOT NULL;
        CREATE TABLE payment_attempts (
            id TEXT PRIMARY KEY,
            payment_id TEXT NOT NULL REFERENCES payments(id),
            seq INTEGER NOT NULL,
            connector TEXT NOT NULL,
            operation TEXT NOT NULL,
            provider_idempotency_key TEXT NOT NULL,
            outcome TEXT,
            status TEXT,
            provider_reference TEXT,
            error_code TEXT,
            amount_value BIGINT,
            currency TEXT,
            refund_id TEXT,
            started_at BIGINT NOT NULL,
            finished_at BIGINT,
            next_reconcile_at BIGINT,
            reconcile_count INTEGER NOT NULL DEFAULT 0,
            UNIQUE (payment_id, seq)
        );
        CREATE INDEX payment_attempts_due ON payment_attempts (next_reconcile_at)
            WHERE next_reconcile_at IS NOT NULL;
        CREATE INDEX payment_attempts_provider_reference
            ON payment_attempts (connector, provider_reference)
            WHERE provider_reference IS NOT NULL;
        CREATE TABLE payment_refunds (
            id TEXT PRIMARY KEY,
            payment_id TEXT NOT NULL REFERENCES payments(id),
            amount_value BIGINT NOT NULL,
            currency TEXT NOT NULL,
            status TEXT NOT NULL,
            provider_reference TEXT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX payment_refunds_payment ON payment_refunds (payment_id);
        CREATE TABLE webhook_events (
            connector TEXT NOT NULL,
            event_id TEXT NOT NULL,
            received_at BIGINT NOT NULL,
            PRIMARY KEY (connector, event_id)
        );
        CREATE INDEX webhook_events_received ON webhook_events (received_at)
        """,
    )
]

_PAYMENT_COLUMNS = (
    "id, merchant_id, status, amount_value, currency, captured, refunded, capture, connector, "
    "reference, metadata, payment_method, return_url, provider_reference, next_action, decline, "
    "created_at, updated_at, version"
)
_ATTEMPT_COLUMNS = (
    "id, payment_id, seq, connector, operation, provider_idempotency_key, outcome, status, "
    "provider_reference, error_code, amount_value, currency, refund_id, started_at, finished_at, "
    "next_reconcile_at, reconcile_count"
)
_REFUND_COLUMNS = (
    "id, payment_id, amount_value, currency, status, provider_reference, created_at, updated_at"
)
# Statements built once from the constant column lists above (no input ever goes in).
_SELECT_PAYMENTS = f"SELECT {_PAYMENT_COLUMNS} FROM payments"  # noqa: S608
_SELECT_ATTEMPTS = f"SELECT {_ATTEMPT_COLUMNS} FROM payment_attempts"  # noqa: S608
_SELECT_REFUNDS = f"SELECT {_REFUND_COLUMNS} FROM payment_refunds"  # noqa: S608
_SELECT_PAYMENT_BY_ATTEMPT = (
    "SELECT "  # noqa: S608
    + ", ".join(f"p.{column.strip()}" for column in _PAYMENT_COLUMNS.split(","))
    + " FROM payment_attempts a JOIN payments p ON p.id = a.payment_id"
)
_INSERT_PAYMENT = (
    f"INSERT INTO payments ({_PAYMENT_COLUMNS}) VALUES "  # noqa: S608
    "($1, $2, NULL, $3, $4, 0, 0, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, $11, $11, 1)"
)
_INSERT_ATTEMPT = (
    f"INSERT INTO payment_attempts ({_ATTEMPT_COLUMNS}) VALUES "  # noqa: S608
    "($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, NULL, $7, $8, $9, $10, NULL, $11, 0) "
    "ON CONFLICT (payment_id, seq) DO NOTHING RETURNING seq"
)
_INSERT_REFUND = (
    f"INSERT INTO payment_refunds ({_REFUND_COLUMNS}) "  # noqa: S608
    "VALUES ($1, $2, $3, $4, $5, NULL, $6, $6)"
)
_LEASE_ATTEMPT = (
    "UPDATE payment_attempts SET next_reconcile_at = $1 "  # noqa: S608
    f"WHERE id = $2 AND next_reconcile_at <= $3 RETURNING {_ATTEMPT_COLUMNS}"
)
_MAX_SEQ_RACES = 10


class ConcurrentUpdateError(TesseraError):
    """Another writer changed the payment since it was read. Re-read and try again."""

    code = "concurrent_update"
    default_detail = "The payment was changed by a concurrent request; retry."

    def __init__(self, detail: str | None = None, *, retry_after: float | None = 1.0) -> None:
        super().__init__(detail, retry_after=retry_after)


class _Keep(Enum):
    KEEP = "keep"


#: "Leave this field as it is" for ``PaymentStore.apply`` (``None`` clears a field).
KEEP: Final = _Keep.KEEP
_Kept = Literal[_Keep.KEEP]


_RECONCILE_BACKOFF = ExponentialBackoff(
    first_delay=timedelta(seconds=5), max_delay=timedelta(hours=1), jitter=0.1
)


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """When open attempts are synced.

    ``backoff.delay(n)`` is the wait after the n-th sync that left the attempt open (and after
    the first answer, for n = 0). ``in_flight_grace`` is how long an attempt may stay unfinished
    before it is presumed abandoned (its process died) and reconciled: keep it above every
    connector deadline.
    """

    backoff: ExponentialBackoff = _RECONCILE_BACKOFF
    in_flight_grace: timedelta = timedelta(seconds=60)


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

    async def migrate(self) -> None:
        await migrate(self._db, _COMPONENT, _MIGRATIONS)

    @asynccontextmanager
    async def _tx(self, tx: Connection | None) -> AsyncIterator[Connection]:
        if tx is not None:
            yield tx
        else:
            async with self._db.transaction() as own:
                yield own

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
                _INSERT_PAYMENT,
                payment_id,
                merchant_id,
                amount.value,
                amount.currency,
                capture,
                connector,
                reference,
                _json(metadata),
                _json(payment_method.to_json()),
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
            _SELECT_PAYMENTS + " WHERE id = $1 AND merchant_id = $2", payment_id, merchant_id
        )
        if row is None:
            raise PaymentNotFoundError()
        return _payment(row)

    async def find_by_reference(self, merchant_id: str, reference: str) -> list[PaymentRecord]:
        """The merchant's payments carrying ``reference``, newest first."""
        rows = await self._db.fetchall(
            _SELECT_PAYMENTS + " WHERE merchant_id = $1 AND reference = $2 "
            "ORDER BY created_at DESC, id",
            merchant_id,
            reference,
        )
        return [_payment(row) for row in rows]

    async def find_by_provider_reference(
        self, connector: str, provider_reference: str
    ) -> PaymentRecord | None:
        """The payment a provider's webhook is about (by the payment's or an attempt's ref)."""
        row = await self._db.fetchone(
            _SELECT_PAYMENTS + " WHERE connector = $1 AND provider_reference = $2",
            connector,
            provider_reference,
        )
        if row is None:
            row = await self._db.fetchone(
                _SELECT_PAYMENT_BY_ATTEMPT
                + " WHERE a.connector = $1 AND a.provider_reference = $2 "
                "ORDER BY a.seq DESC LIMIT 1",
                connector,
                provider_reference,
            )
        return None if row is None else _payment(row)

    async def apply(
        self,
        payment: PaymentRecord,
        event: PaymentEvent | PaymentStatus,
        *,
        connector: str | _Kept | None = KEEP,
        provider_reference: str | _Kept | None = KEEP,
        next_action: NextAction | _Kept | None = KEEP,
        decline: Decline | _Kept | None = KEEP,
        metadata: Mapping[str, str] | _Kept = KEEP,
        retries: int = 0,
        tx: Connection | None = None,
    ) -> PaymentRecord:
        """Run ``event`` (a status means ``Observe(status)``) through the state machine and save.

        Writes only if ``payment.version`` is still the stored version; otherwise, after
        ``retries`` re-reads and re-applications, raises ``ConcurrentUpdateError``. An event that
        changes nothing (a duplicate ``Observe``) with no field changes writes nothing.
        """
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
                    return current
                now = self._now()
                version = await conn.fetchval(
                    "UPDATE payments SET status = $1, captured = $2, refunded = $3, "
                    "connector = $4, provider_reference = $5, next_action = $6, decline = $7, "
                    "metadata = $8, updated_at = $9, version = version + 1 "
                    "WHERE id = $10 AND merchant_id = $11 AND version = $12 RETURNING version",
                    _enum_value(updated.status),
                    updated.captured,
                    updated.refunded,
                    updated.connector,
                    updated.provider_reference,
                    _model_json(updated.next_action),
                    _model_json(updated.decline),
                    _json(updated.metadata),
                    now,
                    current.id,
                    current.merchant_id,
                    current.version,
                )
                if version is not None:
                    return replace(updated, updated_at=from_micros(now), version=int(version))
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
        tx: Connection | None = None,
    ) -> AttemptRecord:
        """Record a connector call about to be made; its provider key comes with it.

        Call it (and commit) before sending: if the process dies mid-call, the attempt stays
        ``in_flight`` and becomes due for reconciliation after ``in_flight_grace``.
        """
        operation = str(operation)
        attempt_id = new_id("att")
        now = self._now()
        grace = to_micros(from_micros(now) + self._policy.in_flight_grace)
        async with self._tx(tx) as conn:
            for _ in range(_MAX_SEQ_RACES):
                last = await conn.fetchval(
                    "SELECT MAX(seq) FROM payment_attempts WHERE payment_id = $1", payment.id
                )
                seq = int(last or 0) + 1
                key = provider_idempotency_key(payment.merchant_id, payment.id, seq, operation)
                inserted = await conn.fetchval(
                    _INSERT_ATTEMPT,
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
                    grace,
                )
                if inserted is not None:
                    break
            else:  # pragma: no cover - needs _MAX_SEQ_RACES concurrent starts on one payment
                raise ConcurrentUpdateError("Too many concurrent attempts on one payment.")
        return AttemptRecord(
            id=attempt_id,
            payment_id=payment.id,
            seq=seq,
            connector=connector,
            operation=operation,
            provider_idempotency_key=key,
            outcome=None,
            status=None,
            provider_reference=None,
            error_code=None,
            amount=amount,
            refund_id=refund_id,
            started_at=from_micros(now),
            finished_at=None,
            next_reconcile_at=from_micros(grace),
            reconcile_count=0,
        )

    async def get_attempt(self, attempt_id: str, *, tx: Connection | None = None) -> AttemptRecord:
        row = await (tx or self._db).fetchone(_SELECT_ATTEMPTS + " WHERE id = $1", attempt_id)
        if row is None:
            raise NotFoundError("No such attempt.")
        return _attempt(row)

    async def finish_attempt(
        self,
        attempt_id: str,
        result: PaymentResult,
        *,
        error_code: str | None = None,
        tx: Connection | None = None,
    ) -> AttemptRecord:
        """Record the answer of a connector call (or of the sync that settled it).

        An ``unknown`` outcome or a ``pending`` status schedules reconciliation; anything else
        clears it. Finishing an attempt that is already settled with the same answer is a
        no-op (duplicate webhook, repeated sync); with a different answer it is
        ``IllegalTransitionError``.
        """
        if error_code is None and result.decline is not None:
            error_code = result.decline.code.value
        async with self._tx(tx) as conn:
            attempt = await self.get_attempt(attempt_id, tx=conn)
            if not attempt.needs_reconciliation:
                if (attempt.outcome, attempt.status) == (result.outcome, result.status):
                    return attempt
                raise IllegalTransitionError(
                    f"The {attempt.operation} attempt is already settled as "
                    f"{attempt.outcome} / {attempt.status}."
                )
            now = self._now()
            next_at: int | None = None
            if result.outcome is Outcome.UNKNOWN or result.status is PaymentStatus.PENDING:
                delay = self._policy.backoff.delay(attempt.reconcile_count, self._rng)
                next_at = to_micros(from_micros(now) + delay)
            provider_reference = result.provider_reference or attempt.provider_reference
            await conn.execute(
                "UPDATE payment_attempts SET outcome = $1, status = $2, provider_reference = $3, "
                "error_code = $4, finished_at = $5, next_reconcile_at = $6 WHERE id = $7",
                result.outcome.value,
                result.status.value,
                provider_reference,
                error_code,
                now,
                next_at,
                attempt_id,
            )
        return replace(
            attempt,
            outcome=result.outcome,
            status=result.status,
            provider_reference=provider_reference,
            error_code=error_code,
            finished_at=from_micros(now),
            next_reconcile_at=None if next_at is None else from_micros(next_at),
        )

    async def attempts(self, payment_id: str) -> list[AttemptRecord]:
        rows = await self._db.fetchall(
            _SELECT_ATTEMPTS + " WHERE payment_id = $1 ORDER BY seq",
            payment_id,
        )
        return [_attempt(row) for row in rows]

    async def due_for_reconciliation(
        self, now: datetime | None = None, limit: int = 100
    ) -> list[AttemptRecord]:
        """Open attempts (in flight too long, ``unknown`` or ``pending``) whose time has come."""
        at = to_micros(now or self._clock.now())
        rows = await self._db.fetchall(
            _SELECT_ATTEMPTS + " WHERE next_reconcile_at IS NOT NULL AND next_reconcile_at <= $1 "
            "ORDER BY next_reconcile_at, id LIMIT $2",
            at,
            limit,
        )
        return [_attempt(row) for row in rows]

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
                    _LEASE_ATTEMPT,
                    until,
                    row["id"],
                    at,
                )
                if updated is not None:
                    claimed.append(_attempt(updated))
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
                _INSERT_REFUND,
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
        provider_reference: str | _Kept | None = KEEP,
        tx: Connection | None = None,
    ) -> RefundRecord:
        async with self._tx(tx) as conn:
            row = await conn.fetchone(_SELECT_REFUNDS + " WHERE id = $1", refund_id)
            if row is None:
                raise NotFoundError("No such refund.")
            refund = _refund(row)
            reference = (
                refund.provider_reference if provider_reference is KEEP else provider_reference
            )
            now = self._now()
            await conn.execute(
                "UPDATE payment_refunds SET status = $1, provider_reference = $2, updated_at = $3 "
                "WHERE id = $4",
                status.value,
                reference,
                now,
                refund_id,
            )
        return replace(
            refund, status=status, provider_reference=reference, updated_at=from_micros(now)
        )

    async def refunds(self, payment_id: str) -> list[RefundRecord]:
        rows = await self._db.fetchall(
            _SELECT_REFUNDS + " WHERE payment_id = $1 ORDER BY created_at, id",
            payment_id,
        )
        return [_refund(row) for row in rows]

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


# -- rows <-> records ---------------------------------------------------------------------------


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _model_json(model: NextAction | Decline | None) -> str | None:
    return None if model is None else model.model_dump_json()


def _enum_value(value: PaymentStatus | None) -> str | None:
    return None if value is None else value.value


def _refuse_card_numbers(reference: str | None, metadata: Mapping[str, str]) -> None:
    # Merchants sometimes paste card numbers into free-text fields; none may reach the store.
    if reference is not None and contains_pan(reference):
        raise InvalidRequestError("reference looks like a card number; it is not stored.")
    for key, value in metadata.items():
        if contains_pan(key) or contains_pan(value):
            raise InvalidRequestError("metadata looks like it holds a card number; not stored.")


def _payment(row: Row) -> PaymentRecord:
    return PaymentRecord(
        id=row["id"],
        merchant_id=row["merchant_id"],
        status=None if row["status"] is None else PaymentStatus(row["status"]),
        amount=Money.of(int(row["amount_value"]), row["currency"]),
        captured=int(row["captured"]),
        refunded=int(row["refunded"]),
        capture=bool(row["capture"]),
        connector=row["connector"],
        reference=row["reference"],
        metadata=orjson.loads(row["metadata"]),
        payment_method=PaymentMethodSummary.from_json(orjson.loads(row["payment_method"])),
        return_url=row["return_url"],
        provider_reference=row["provider_reference"],
        next_action=(
            None
            if row["next_action"] is None
            else NextAction.model_validate_json(row["next_action"])
        ),
        decline=None if row["decline"] is None else Decline.model_validate_json(row["decline"]),
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
        version=int(row["version"]),
    )


def _attempt(row: Row) -> AttemptRecord:
    amount = None
    if row["amount_value"] is not None:
        amount = Money.of(int(row["amount_value"]), row["currency"])
    return AttemptRecord(
        id=row["id"],
        payment_id=row["payment_id"],
        seq=int(row["seq"]),
        connector=row["connector"],
        operation=row["operation"],
        provider_idempotency_key=row["provider_idempotency_key"],
        outcome=None if row["outcome"] is None else Outcome(row["outcome"]),
        status=None if row["status"] is None else PaymentStatus(row["status"]),
        provider_reference=row["provider_reference"],
        error_code=row["error_code"],
        amount=amount,
        refund_id=row["refund_id"],
        started_at=from_micros(row["started_at"]),
        finished_at=None if row["finished_at"] is None else from_micros(row["finished_at"]),
        next_reconcile_at=(
            None if row["next_reconcile_at"] is None else from_micros(row["next_reconcile_at"])
        ),
        reconcile_count=int(row["reconcile_count"]),
    )


def _refund(row: Row) -> RefundRecord:
    return RefundRecord(
        id=row["id"],
        payment_id=row["payment_id"],
        amount=Money.of(int(row["amount_value"]), row["currency"]),
        status=RefundStatus(row["status"]),
        provider_reference=row["provider_reference"],
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
    )
