"""The audit log: append-only and hash-chained, on either backend of ``vault.database``.

Every reveal, delete and administrative action (key rotation, ...) appends one entry: who
(``actor``), what (``action``, ``tenant``, ``target``), when (``ts``) and why (``purpose``).

Each entry carries ``prev_hash``, the hash of the entry before it (64 zeros for the first), and
``hash`` = SHA-256 over the canonical JSON (sorted keys, no spaces, UTF-8) of all its other fields
including ``prev_hash``. ``verify()`` walks the chain in ``seq`` order and reports the first entry
that was edited (its hash no longer matches), removed (a gap in ``seq``), reordered (``prev_hash``
does not name its predecessor) or cut off the end (the head row disagrees with the last entry).

Appends are serialized through a one-row *head* table holding the last ``seq`` and ``hash``: on
PostgreSQL the appending transaction locks it with ``SELECT ... FOR UPDATE``, so two gateway
processes appending at once queue up instead of forking the chain; on SQLite the transaction is
``BEGIN IMMEDIATE`` (one writer at a time, across processes too). Database triggers also refuse
``UPDATE`` and ``DELETE`` on the log, so the application cannot rewrite it by mistake.

Limits, stated plainly: someone with DDL rights can drop the triggers and rewrite the whole chain
consistently. Export ``head()`` regularly to somewhere they cannot write (a log shipper, a
ticket, Vault KV) and pass it back to ``verify(anchor=...)``, which then also proves that the
entries up to the anchor are the ones that were exported.

No card data goes in: every text field is checked, and one holding a Luhn-valid run of 12-19
digits (of any script; whitespace, dashes, dots, slashes or underscores allowed between them), or
any longer run, is refused. Numeric tokens fail Luhn, so
they pass.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from normalization import InvalidRequestError, find_card_numbers, holds_long_digit_run
from vault.clock import Clock, SystemClock
from vault.database import (
    Connection,
    Migration,
    PostgresDatabase,
    Row,
    SqliteDatabase,
    in_transaction,
    migrate,
)

__all__ = [
    "GENESIS_HASH",
    "AuditAction",
    "AuditAnchor",
    "AuditEntry",
    "AuditLog",
    "AuditVerification",
    "contains_card_number",
]

_COMPONENT = "vault.audit"
GENESIS_HASH = "0" * 64

_MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE vault_audit_log (
            seq BIGINT PRIMARY KEY,
            ts TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            tenant TEXT,
            target TEXT,
            purpose TEXT,
            detail TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE TABLE vault_audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL
        );
        INSERT INTO vault_audit_head (id, seq, hash) VALUES (1, 0,
            '0000000000000000000000000000000000000000000000000000000000000000')
        """,
    )
]

# Installed outside ``migrate``: its statement splitter cuts at every ';', and a trigger body
# holds several. Each statement below is idempotent.
_SQLITE_GUARDS = [
    "CREATE TRIGGER IF NOT EXISTS vault_audit_log_no_update BEFORE UPDATE ON vault_audit_log"
    " BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS vault_audit_log_no_delete BEFORE DELETE ON vault_audit_log"
    " BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
]
_PG_GUARD_FUNCTION = """
CREATE OR REPLACE FUNCTION vault_audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$
"""
_PG_GUARD_TRIGGER = (
    "CREATE TRIGGER vault_audit_log_append_only"
    " BEFORE UPDATE OR DELETE OR TRUNCATE ON vault_audit_log"
    " FOR EACH STATEMENT EXECUTE FUNCTION vault_audit_log_refuse_change()"
)

_READ_HEAD = "SELECT seq, hash FROM vault_audit_head WHERE id = 1"
_READ_HEAD_FOR_UPDATE = "SELECT seq, hash FROM vault_audit_head WHERE id = 1 FOR UPDATE"


def contains_card_number(text: str) -> bool:
    """True if ``text`` may hold a PAN: a card number however written, alone or followed by
    something else (``PAN 123``: ``normalization.find_card_numbers``, Luhn alone deciding for a
    run that is 12-19 digits as a whole), or any run of more than 19 digits, which could hide
    one."""
    return bool(find_card_numbers(text)) or holds_long_digit_run(text)


class AuditAction(StrEnum):
    """The actions Tessera records. ``append`` accepts any string; these are the known ones."""

    TOKEN_REVEAL = "token.reveal"  # noqa: S105 - an action name, not a credential
    TOKEN_DELETE = "token.delete"  # noqa: S105 - an action name, not a credential
    KEYS_ROTATE = "keys.rotate"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    tenant: str | None
    target: str | None
    purpose: str | None
    detail: str | None
    prev_hash: str
    hash: str

    def computed_hash(self) -> str:
        return _entry_hash(
            {
                "seq": self.seq,
                "ts": self.ts,
                "actor": self.actor,
                "action": self.action,
                "tenant": self.tenant,
                "target": self.target,
                "purpose": self.purpose,
                "detail": self.detail,
            },
            self.prev_hash,
        )


@dataclass(frozen=True, slots=True)
class AuditAnchor:
    """A point of the chain exported for later comparison: ``(seq, hash)``."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The result of ``AuditLog.verify``: ``ok``, or where and why the chain breaks."""

    ok: bool
    entries_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head: AuditAnchor | None = None
    """When ``ok``: the head the chain was checked against (the anchor to export)."""


def _entry_hash(fields: dict[str, Any], prev_hash: str) -> str:
    canonical = orjson.dumps({**fields, "prev_hash": prev_hash}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _entry(row: Row) -> AuditEntry:
    return AuditEntry(
        seq=int(row["seq"]),
        ts=row["ts"],
        actor=row["actor"],
        action=row["action"],
        tenant=row["tenant"],
        target=row["target"],
        purpose=row["purpose"],
        detail=row["detail"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


class AuditLog:
    """Append-only, hash-chained audit entries in the ``vault_audit_log`` table."""

    def __init__(
        self, db: SqliteDatabase | PostgresDatabase, *, clock: Clock | None = None
    ) -> None:
        self._db = db
        self._clock: Clock = clock or SystemClock()
        self._postgres = db.dialect == "postgresql"

    async def migrate(self) -> None:
        await migrate(self._db, _COMPONENT, _MIGRATIONS)
        await self._install_guards()

    async def _install_guards(self) -> None:
        if not self._postgres:
            for statement in _SQLITE_GUARDS:
                await self._db.execute(statement)
            return
        async with self._db.transaction() as tx:
            # The same lock ``migrate`` takes: concurrent starts install the trigger once.
            await tx.execute(
                "SELECT pg_advisory_xact_lock($1)", zlib.crc32(f"tessera:{_COMPONENT}".encode())
            )
            exists = await tx.fetchval(
                "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE t.tgname = $1 AND c.oid = to_regclass($2)",
                "vault_audit_log_append_only",
                "vault_audit_log",
            )
            if exists is None:
                await tx.execute(_PG_GUARD_FUNCTION)
                await tx.execute(_PG_GUARD_TRIGGER)

    async def append(
        self,
        *,
        actor: str,
        action: str,
        tenant: str | None = None,
        target: str | None = None,
        purpose: str | None = None,
        detail: str | None = None,
        tx: Connection | None = None,
    ) -> AuditEntry:
        """Append one entry and return it, chained to the current head.

        ``tx``: append inside the caller's transaction, so the entry commits (or rolls back)
        with the action it records; otherwise the entry is a transaction of its own.
        Raises ``InvalidRequestError`` if a field looks like it holds a card number.
        """
        fields: dict[str, Any] = {
            "actor": actor,
            "action": str(action),
            "tenant": tenant,
            "target": target,
            "purpose": purpose,
            "detail": detail,
        }
        for value in fields.values():
            if value is not None and contains_card_number(value):
                raise InvalidRequestError("Audit entries must not contain card numbers.")
        async with in_transaction(self._db, tx) as conn:
            return await self._append(conn, fields)

    async def _append(self, tx: Connection, fields: dict[str, Any]) -> AuditEntry:
        # PostgreSQL: the row lock queues concurrent appenders (other processes included).
        # SQLite: the transaction is BEGIN IMMEDIATE, which already admits one writer.
        head = await tx.fetchone(_READ_HEAD_FOR_UPDATE if self._postgres else _READ_HEAD)
        if head is None:
            raise RuntimeError("The audit log is not migrated (no head row).")
        seq = int(head["seq"]) + 1
        prev_hash = head["hash"]
        # Read the clock under the lock, so timestamps never run backwards along the chain.
        fields["ts"] = self._clock.now().isoformat(timespec="microseconds")
        fields["seq"] = seq
        entry_hash = _entry_hash(fields, prev_hash)
        await tx.execute(
            "INSERT INTO vault_audit_log (seq, ts, actor, action, tenant, target, purpose,"
            " detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            seq,
            fields["ts"],
            fields["actor"],
            fields["action"],
            fields["tenant"],
            fields["target"],
            fields["purpose"],
            fields["detail"],
            prev_hash,
            entry_hash,
        )
        await tx.execute(
            "UPDATE vault_audit_head SET seq = $1, hash = $2 WHERE id = 1", seq, entry_hash
        )
        return AuditEntry(
            seq=seq,
            ts=fields["ts"],
            actor=fields["actor"],
            action=fields["action"],
            tenant=fields["tenant"],
            target=fields["target"],
            purpose=fields["purpose"],
            detail=fields["detail"],
            prev_hash=prev_hash,
            hash=entry_hash,
        )

    async def head(self) -> AuditAnchor:
        """The last ``(seq, hash)``: export it to anchor later verifications."""
        row = await self._db.fetchone(_READ_HEAD)
        if row is None:
            raise RuntimeError("The audit log is not migrated (no head row).")
        return AuditAnchor(int(row["seq"]), row["hash"])

    async def entries(self, *, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Entries with ``seq > after_seq``, in order, at most ``limit``."""
        rows = await self._db.fetchall(
            "SELECT * FROM vault_audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, limit
        )
        return [_entry(row) for row in rows]

    async def verify(
        self, *, anchor: AuditAnchor | None = None, page_size: int = 1000
    ) -> AuditVerification:
        """Walk the whole chain; report the first entry that was edited, removed or moved."""
        expected_seq = 1
        prev_hash = GENESIS_HASH
        checked = 0
        anchor_seen = anchor is None or anchor.seq == 0
        while True:
            page = await self.entries(after_seq=expected_seq - 1, limit=page_size)
            for entry in page:
                if entry.seq != expected_seq:
                    return AuditVerification(
                        False, checked, expected_seq, "entry missing: the sequence has a gap"
                    )
                if entry.prev_hash != prev_hash:
                    return AuditVerification(
                        False, checked, entry.seq, "prev_hash does not match the entry before"
                    )
                if entry.computed_hash() != entry.hash:
                    return AuditVerification(
                        False, checked, entry.seq, "hash mismatch: the entry was edited"
                    )
                if anchor is not None and entry.seq == anchor.seq:
                    if entry.hash != anchor.hash:
                        return AuditVerification(
                            False, checked, entry.seq, "the entry differs from the exported anchor"
                        )
                    anchor_seen = True
                checked += 1
                prev_hash = entry.hash
                expected_seq += 1
            if len(page) < page_size:
                break
        head = await self.head()
        last_seq = expected_seq - 1
        if head.seq != last_seq or head.hash != prev_hash:
            bad = min(head.seq, last_seq) + 1
            return AuditVerification(
                False, checked, bad, "the chain's end disagrees with the head (entries removed)"
            )
        if not anchor_seen:
            assert anchor is not None
            return AuditVerification(
                False, checked, anchor.seq, "the exported anchor's entry is missing"
            )
        return AuditVerification(True, checked, head=head)
