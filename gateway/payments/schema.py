"""The payment tables: their migrations, the statements the store runs, and the mapping between
rows and records.

Instants are integer microseconds (``instants``); JSON columns (metadata, payment method
summary, next action, decline) are TEXT on both backends, so one SQL text serves SQLite and
PostgreSQL. The statements are built once from constant column lists: no input goes into SQL.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.payments.instants import from_micros
from gateway.payments.records import (
    AttemptRecord,
    PaymentMethodSummary,
    PaymentRecord,
    RefundRecord,
    RefundStatus,
)
from normalization import Decline, Money, NextAction, Outcome, PaymentStatus
from vault.database import Migration, Row

__all__ = [
    "ATTEMPT_COLUMNS",
    "FINISH_ATTEMPT",
    "INSERT_ATTEMPT",
    "INSERT_PAYMENT",
    "INSERT_REFUND",
    "LEASE_ATTEMPT",
    "LOCKING_OPERATIONS",
    "MIGRATIONS",
    "PAYMENT_COLUMNS",
    "REFUND_COLUMNS",
    "SELECT_ATTEMPTS",
    "SELECT_PAYMENTS",
    "SELECT_PAYMENT_BY_ATTEMPT",
    "SELECT_REFUNDS",
    "SETTLE_PENDING_REFUND",
    "UPDATE_REFUND",
    "attempt_from_row",
    "enum_value",
    "model_json",
    "payment_from_row",
    "refund_from_row",
    "to_json",
]


#: Follow-up operations that move money or commit the customer's consent: at most one of them is
#: open on a payment at a time (``sync`` only reads, and creating a payment has its own guard,
#: the idempotency key).
LOCKING_OPERATIONS = frozenset({"capture", "void", "refund", "complete_authorization", "submit"})

MIGRATIONS = [
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
    ),
    # One money-moving follow-up open per payment (sent and unanswered, or ``unknown``), and one
    # submit per payment ever: the database, not a read before the write, decides which of two
    # concurrent requests (in any process) goes to the provider. ``PaymentStore.start_attempt``
    # turns the conflict into ``OperationInProgressError``.
    Migration(
        2,
        f"""
        CREATE UNIQUE INDEX payment_attempts_one_open_operation ON payment_attempts (payment_id)
            WHERE operation IN ({", ".join(f"'{op}'" for op in sorted(LOCKING_OPERATIONS))})
            AND (outcome IS NULL OR outcome = 'unknown');
        CREATE UNIQUE INDEX payment_attempts_one_submit ON payment_attempts (payment_id)
            WHERE operation = 'submit'
        """,
    ),
]

PAYMENT_COLUMNS = (
    "id, merchant_id, status, amount_value, currency, captured, refunded, capture, connector, "
    "reference, metadata, payment_method, return_url, provider_reference, next_action, decline, "
    "created_at, updated_at, version"
)
ATTEMPT_COLUMNS = (
    "id, payment_id, seq, connector, operation, provider_idempotency_key, outcome, status, "
    "provider_reference, error_code, amount_value, currency, refund_id, started_at, finished_at, "
    "next_reconcile_at, reconcile_count"
)
REFUND_COLUMNS = (
    "id, payment_id, amount_value, currency, status, provider_reference, created_at, updated_at"
)
SELECT_PAYMENTS = f"SELECT {PAYMENT_COLUMNS} FROM payments"  # noqa: S608
SELECT_ATTEMPTS = f"SELECT {ATTEMPT_COLUMNS} FROM payment_attempts"  # noqa: S608
SELECT_REFUNDS = f"SELECT {REFUND_COLUMNS} FROM payment_refunds"  # noqa: S608
SELECT_PAYMENT_BY_ATTEMPT = (
    "SELECT "  # noqa: S608
    + ", ".join(f"p.{column.strip()}" for column in PAYMENT_COLUMNS.split(","))
    + " FROM payment_attempts a JOIN payments p ON p.id = a.payment_id"
)
INSERT_PAYMENT = (
    f"INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES "  # noqa: S608
    "($1, $2, NULL, $3, $4, 0, 0, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, $11, $11, 1)"
)
INSERT_ATTEMPT = (
    f"INSERT INTO payment_attempts ({ATTEMPT_COLUMNS}) VALUES "  # noqa: S608
    "($1, $2, $3, $4, $5, $6, $12, $13, NULL, $14, $7, $8, $9, $10, $15, $11, 0) "
    # No conflict target: a taken ``seq`` and an open operation (migration 2) both return no row.
    "ON CONFLICT DO NOTHING RETURNING seq"
)
# Settles an attempt still open (in flight, ``unknown`` or ``pending``: see
# ``AttemptRecord.needs_reconciliation``) in one statement; no row back: it was settled already.
FINISH_ATTEMPT = (
    "UPDATE payment_attempts SET outcome = $1, status = $2, "  # noqa: S608
    "provider_reference = COALESCE($3, provider_reference), error_code = $4, finished_at = $5, "
    "next_reconcile_at = $6 WHERE id = $7 AND (outcome IS NULL OR outcome = $8 OR status = $9) "
    f"RETURNING {ATTEMPT_COLUMNS}"
)
UPDATE_REFUND = (
    "UPDATE payment_refunds SET status = $1, "  # noqa: S608
    "provider_reference = CASE WHEN $2 THEN provider_reference ELSE $3 END, updated_at = $4 "
    f"WHERE id = $5 RETURNING {REFUND_COLUMNS}"
)
# The same, only from ``pending`` ($6): one of concurrent settlers gets the row.
SETTLE_PENDING_REFUND = UPDATE_REFUND.replace("WHERE id = $5", "WHERE id = $5 AND status = $6")
INSERT_REFUND = (
    f"INSERT INTO payment_refunds ({REFUND_COLUMNS}) "  # noqa: S608
    "VALUES ($1, $2, $3, $4, $5, NULL, $6, $6)"
)
LEASE_ATTEMPT = (
    "UPDATE payment_attempts SET next_reconcile_at = $1 "  # noqa: S608
    f"WHERE id = $2 AND next_reconcile_at <= $3 RETURNING {ATTEMPT_COLUMNS}"
)


def to_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def model_json(model: NextAction | Decline | None) -> str | None:
    return None if model is None else model.model_dump_json()


def enum_value(value: PaymentStatus | None) -> str | None:
    return None if value is None else value.value


def payment_from_row(row: Row) -> PaymentRecord:
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


def attempt_from_row(row: Row) -> AttemptRecord:
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


def refund_from_row(row: Row) -> RefundRecord:
    return RefundRecord(
        id=row["id"],
        payment_id=row["payment_id"],
        amount=Money.of(int(row["amount_value"]), row["currency"]),
        status=RefundStatus(row["status"]),
        provider_reference=row["provider_reference"],
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
    )
