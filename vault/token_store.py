"""The token store: one table of token records over ``vault.database`` (SQLite or PostgreSQL).

A row holds the transit ciphertext of the card (PAN and holder name, encrypted by Vault), the keyed
fingerprint (Vault transit HMAC) and masked metadata (BIN6 where allowed, last 4, brand, expiry).
No column ever holds a PAN, a CVV or a bare hash of a PAN: a dump of the table leaks no card.

Uniqueness, enforced by the database so that concurrent gateway processes agree:

- ``(tenant, id)`` is the primary key. Numeric tokens are drawn at random per card; a collision
  is simply not inserted and the caller draws again.
- ``(tenant, dedup_key)`` is unique where ``dedup_key`` is set. ``dedup_key`` is
  ``<format>:<fingerprint>`` for tokens created with dedup on and NULL otherwise, so 50 concurrent
  tokenizations of one card with dedup on insert exactly one row; the others see the conflict
  and read the winner.

Inserts are one statement per batch, whatever its size: ``INSERT ... SELECT FROM unnest(...)``
with one array per column on PostgreSQL; on SQLite a multi-row ``VALUES`` up to 64 rows (the
group-committed single-card inserts; about half the CPU per row) and above that
``INSERT ... SELECT FROM json_each(?)`` (one bound parameter instead of 15 per row, and one
statement text for every batch size). All use ``ON CONFLICT DO NOTHING RETURNING``, which
reports the rows that made it in.

Timestamps are stored as integer microseconds since the epoch (UTC) on both backends, so the
two dialects compare and sort them the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

import orjson

from vault.database import (
    Connection,
    Migration,
    PostgresDatabase,
    Row,
    SqliteDatabase,
    keyset_page,
    migrate,
)
from vault.tokens import TokenFormat

__all__ = [
    "CiphertextUpdate",
    "PublicCard",
    "PublicToken",
    "RewrapItem",
    "TokenRecord",
    "TokenStore",
    "key_version_of",
]

_COMPONENT = "vault.token_store"

# Indexes are paid on every insert, so only the ones a request path reads: the primary key
# (get, and rotation's scan of one tenant in id order), fingerprint search, dedup, expiry.
_MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE vault_tokens (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            dedup_key TEXT,
            ciphertext TEXT NOT NULL,
            key_version INTEGER NOT NULL,
            bin TEXT NOT NULL,
            last4 TEXT NOT NULL,
            pan_length INTEGER NOT NULL,
            brand TEXT NOT NULL,
            exp_month INTEGER NOT NULL,
            exp_year INTEGER NOT NULL,
            format TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT,
            PRIMARY KEY (tenant, id)
        );
        CREATE UNIQUE INDEX vault_tokens_dedup ON vault_tokens (tenant, dedup_key)
            WHERE dedup_key IS NOT NULL;
        CREATE INDEX vault_tokens_fingerprint ON vault_tokens (tenant, fingerprint);
        CREATE INDEX vault_tokens_expiry ON vault_tokens (expires_at) WHERE expires_at IS NOT NULL
        """,
    )
]

# One row of the batch per array element (PostgreSQL) or per JSON array element (SQLite), in
# the order of ``TokenRecord._row``.
_INSERT_PG = (
    "INSERT INTO vault_tokens (tenant, id, fingerprint, dedup_key, ciphertext, key_version, bin,"
    " last4, pan_length, brand, exp_month, exp_year, format, created_at, expires_at)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],"
    " $7::text[], $8::text[], $9::int[], $10::text[], $11::int[], $12::int[], $13::text[],"
    " $14::bigint[], $15::bigint[]) ON CONFLICT DO NOTHING RETURNING tenant, id"
)
# ``WHERE true`` keeps SQLite from reading ``ON CONFLICT`` as a join constraint.
_INSERT_SQLITE = (
    "INSERT INTO vault_tokens (tenant, id, fingerprint, dedup_key, ciphertext, key_version, bin,"
    " last4, pan_length, brand, exp_month, exp_year, format, created_at, expires_at)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'),"
    " json_extract(value, '$[5]'), json_extract(value, '$[6]'), json_extract(value, '$[7]'),"
    " json_extract(value, '$[8]'), json_extract(value, '$[9]'), json_extract(value, '$[10]'),"
    " json_extract(value, '$[11]'), json_extract(value, '$[12]'), json_extract(value, '$[13]'),"
    " json_extract(value, '$[14]')"
    " FROM json_each($1) WHERE true ON CONFLICT DO NOTHING RETURNING tenant, id"
)
#: Up to this many rows, SQLite inserts bind every value (15 per row, well below SQLite's 32,766
#: variables); bigger batches go as one JSON text (one statement text for every size). Kept
#: below what the database moves off the loop (``vault.database._OFF_LOOP_BYTES``, 16 KiB: about
#: 40 rows), which only recognises the JSON form: 32 rows of ~390 bytes hold the loop ~1 ms.
_VALUES_MAX_ROWS = 32


@functools.lru_cache(maxsize=_VALUES_MAX_ROWS)
def _insert_values_sqlite(rows: int) -> str:
    """``INSERT ... VALUES ($1, ..., $15), ($16, ...) ... RETURNING tenant, id`` for ``rows``."""
    values = ", ".join(
        "(" + ", ".join(f"${row * 15 + column + 1}" for column in range(15)) + ")"
        for row in range(rows)
    )
    # Only numbered placeholders are formatted in: no value ever becomes SQL text.
    return _INSERT_VALUES_HEAD + values + " ON CONFLICT DO NOTHING RETURNING tenant, id"


_INSERT_VALUES_HEAD = (
    "INSERT INTO vault_tokens (tenant, id, fingerprint, dedup_key, ciphertext, key_version,"
    " bin, last4, pan_length, brand, exp_month, exp_year, format, created_at, expires_at) VALUES "
)


# Lists bind as one array on PostgreSQL and as one JSON text on SQLite.
_SELECT_DEDUP_HOLDERS = {
    "postgresql": "SELECT * FROM vault_tokens WHERE tenant = $1 AND dedup_key = ANY($2::text[])",
    "sqlite": "SELECT * FROM vault_tokens WHERE tenant = $1"
    " AND dedup_key IN (SELECT value FROM json_each($2))",
}
_DELETE_EXPIRED_DEDUP_HOLDERS = {
    "postgresql": "DELETE FROM vault_tokens WHERE tenant = $1 AND dedup_key = ANY($2::text[])"
    " AND expires_at IS NOT NULL AND expires_at <= $3 RETURNING id",
    "sqlite": "DELETE FROM vault_tokens WHERE tenant = $1"
    " AND dedup_key IN (SELECT value FROM json_each($2))"
    " AND expires_at IS NOT NULL AND expires_at <= $3 RETURNING id",
}

_KEY_VERSION_RE = re.compile(r"vault:v([0-9]+):")
_FINGERPRINT_VERSION_RE = re.compile(r"fp_v([0-9]+)_")


def key_version_of(ciphertext: str) -> int:
    """The transit key version in a ``vault:vN:...`` ciphertext, an envelope ``env:vault:vN:...``
    one (the version its data key is wrapped under) or an ``fp_vN_...`` fingerprint."""
    if ciphertext.startswith("env:"):
        ciphertext = ciphertext[4:]
    if ciphertext.startswith("vault:v"):
        # The usual shape, read without a regular expression (once per card of a batch).
        end = ciphertext.find(":", 7)
        digits = ciphertext[7:end]
        if end > 7 and digits.isascii() and digits.isdigit():
            return int(digits)
    match = _KEY_VERSION_RE.match(ciphertext) or _FINGERPRINT_VERSION_RE.match(ciphertext)
    if match is None:
        raise ValueError("Not a versioned Vault transit value.")
    return int(match.group(1))


def _to_micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PublicCard(TypedDict):
    brand: str
    bin: str
    last4: str
    exp_month: int
    exp_year: int


class PublicToken(TypedDict):
    """What the API shows of a token (ARCHITECTURE.md, "Tokenize request")."""

    id: str
    fingerprint: str
    card: PublicCard
    created_at: str
    expires_at: str | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One stored token. ``ciphertext`` is Vault transit output; it never leaves the service."""

    id: str
    tenant: str
    fingerprint: str
    ciphertext: str = field(repr=False)
    bin: str
    last4: str
    brand: str
    exp_month: int
    exp_year: int
    format: TokenFormat
    created_at: datetime
    expires_at: datetime | None
    key_version: int
    pan_length: int
    dedup: bool = False

    @property
    def dedup_key(self) -> str | None:
        """The value the per-tenant dedup index holds for this token, or None."""
        return f"{self.format}:{self.fingerprint}" if self.dedup else None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def masked(self) -> str:
        """The card as it may be shown: ``424242******4242`` (BIN only where allowed)."""
        return self.bin + "*" * (self.pan_length - len(self.bin) - 4) + self.last4

    def public_view(self) -> PublicToken:
        """The token's API representation: id, fingerprint, masked card, timestamps."""
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "card": {
                "brand": self.brand,
                "bin": self.bin,
                "last4": self.last4,
                "exp_month": self.exp_month,
                "exp_year": self.exp_year,
            },
            "created_at": self.created_at.isoformat(),
            "expires_at": None if self.expires_at is None else self.expires_at.isoformat(),
        }

    def _row(self) -> tuple[Any, ...]:
        return (
            self.tenant,
            self.id,
            self.fingerprint,
            self.dedup_key,
            self.ciphertext,
            self.key_version,
            self.bin,
            self.last4,
            self.pan_length,
            self.brand,
            self.exp_month,
            self.exp_year,
            self.format,
            _to_micros(self.created_at),
            None if self.expires_at is None else _to_micros(self.expires_at),
        )


def _record(row: Row) -> TokenRecord:
    expires_at = row["expires_at"]
    return TokenRecord(
        id=row["id"],
        tenant=row["tenant"],
        fingerprint=row["fingerprint"],
        ciphertext=row["ciphertext"],
        bin=row["bin"],
        last4=row["last4"],
        brand=row["brand"],
        exp_month=row["exp_month"],
        exp_year=row["exp_year"],
        format=row["format"],
        created_at=_from_micros(row["created_at"]),
        expires_at=None if expires_at is None else _from_micros(expires_at),
        key_version=row["key_version"],
        pan_length=row["pan_length"],
        dedup=row["dedup_key"] is not None,
    )


@dataclass(frozen=True, slots=True)
class RewrapItem:
    """A stored ciphertext awaiting rewrap under a newer key version."""

    id: str
    ciphertext: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CiphertextUpdate:
    """Replace ``old`` by ``new`` for token ``id``, only if the row still holds ``old``."""

    id: str
    old: str = field(repr=False)
    new: str = field(repr=False)


#: The request's card expiry ($6 year, $5 month) against the stored one, in ``refresh_card``.
_NEWER_CARD = "(exp_year < $6 OR (exp_year = $6 AND exp_month < $5))"
_OLDER_CARD = "(exp_year > $6 OR (exp_year = $6 AND exp_month > $5))"


class TokenStore:
    """Token records on either backend of ``vault.database``. Every query is scoped by tenant."""

    def __init__(self, db: SqliteDatabase | PostgresDatabase) -> None:
        self._db = db
        self._postgres = db.dialect == "postgresql"

    @property
    def database(self) -> SqliteDatabase | PostgresDatabase:
        return self._db

    async def migrate(self) -> None:
        await migrate(self._db, _COMPONENT, _MIGRATIONS)

    # -- writes ---------------------------------------------------------------------------------

    async def insert_many(self, records: Sequence[TokenRecord]) -> set[tuple[str, str]]:
        """Insert ``records`` in one statement; return the ``(tenant, id)`` of those inserted.

        A record that conflicts with an existing row (same id, or same dedup key) is skipped,
        not raised: the caller decides whether to draw a new id or return the existing token.
        """
        if not records:
            return set()
        rows = [record._row() for record in records]
        if self._postgres:
            result = await self._db.fetchall(
                _INSERT_PG, *(list(column) for column in zip(*rows, strict=True))
            )
        elif len(rows) <= _VALUES_MAX_ROWS:
            # Small groups (single-card tokenizations sharing a statement): a multi-row VALUES
            # costs SQLite about half the CPU per row of unpacking JSON (measured at 1-64 rows).
            result = await self._db.fetchall(
                _insert_values_sqlite(len(rows)), *[value for row in rows for value in row]
            )
        else:
            result = await self._db.fetchall(_INSERT_SQLITE, orjson.dumps(rows).decode())
        return {(row["tenant"], row["id"]) for row in result}

    async def delete(self, tenant: str, token_id: str) -> bool:
        """Forget a token. True if it existed."""
        deleted = await self._db.fetchval(
            "DELETE FROM vault_tokens WHERE tenant = $1 AND id = $2 RETURNING id", tenant, token_id
        )
        return deleted is not None

    async def delete_expired(self, now: datetime, *, chunk_size: int = 1000) -> int:
        """Delete every token expired at ``now``, in chunks so no statement runs for long."""
        sql = (
            "DELETE FROM vault_tokens WHERE (tenant, id) IN (SELECT tenant, id FROM vault_tokens"
            " WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2) RETURNING id"
        )
        total = 0
        while True:
            deleted = len(await self._db.fetchall(sql, _to_micros(now), chunk_size))
            total += deleted
            if deleted < chunk_size:
                return total

    async def delete_expired_dedup(
        self, tenant: str, dedup_keys: Sequence[str], now: datetime
    ) -> int:
        """Delete expired tokens that still hold one of ``dedup_keys`` (so a new token may)."""
        if not dedup_keys:
            return 0
        rows = await self._db.fetchall(
            _DELETE_EXPIRED_DEDUP_HOLDERS[self._db.dialect],
            tenant,
            self._list_param(dedup_keys),
            _to_micros(now),
        )
        return len(rows)

    async def refresh_card(self, fresh: TokenRecord, *, payload: bool) -> TokenRecord | None:
        """Merge a dedup hit's card into the stored token ``fresh.id``, in one statement.

        Only what is not older than what is stored is taken (``TokenizationService._refresh``
        has the rules): a later card expiry; ``fresh``'s encrypted payload when ``payload`` and
        its expiry is not older than the stored one; a longer token lifetime (``None``: for
        good). The comparisons run against the row as it is when the update runs, so two
        concurrent hits for one card cannot undo each other. Returns the token as stored after
        the update (``None`` if it is gone).
        """
        row = await self._db.fetchone(
            "UPDATE vault_tokens SET"
            " ciphertext = CASE WHEN $8 AND NOT " + _OLDER_CARD + " THEN $3 ELSE ciphertext END,"
            " key_version = CASE WHEN $8 AND NOT " + _OLDER_CARD + " THEN $4 ELSE key_version END,"
            " exp_month = CASE WHEN " + _NEWER_CARD + " THEN $5 ELSE exp_month END,"
            " exp_year = CASE WHEN " + _NEWER_CARD + " THEN $6 ELSE exp_year END,"
            " expires_at = CASE WHEN expires_at IS NOT NULL"
            " AND (CAST($7 AS BIGINT) IS NULL OR CAST($7 AS BIGINT) > expires_at)"
            " THEN CAST($7 AS BIGINT) ELSE expires_at END"
            " WHERE tenant = $1 AND id = $2 RETURNING *",
            fresh.tenant,
            fresh.id,
            fresh.ciphertext,
            fresh.key_version,
            fresh.exp_month,
            fresh.exp_year,
            None if fresh.expires_at is None else _to_micros(fresh.expires_at),
            payload,
        )
        return None if row is None else _record(row)

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, tenant: str, token_id: str) -> TokenRecord | None:
        """The token ``token_id`` of ``tenant``, expired or not (the service decides)."""
        row = await self._db.fetchone(
            "SELECT * FROM vault_tokens WHERE tenant = $1 AND id = $2", tenant, token_id
        )
        return None if row is None else _record(row)

    async def find_by_fingerprint(
        self,
        tenant: str,
        fingerprint: str,
        *,
        live_at: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[TokenRecord]:
        """The tokens of ``tenant`` for the card with ``fingerprint``, oldest first: those not
        expired at ``live_at`` (given), after the position ``after`` (created at, id), at most
        ``limit``."""
        sql = "SELECT * FROM vault_tokens WHERE tenant = $1 AND fingerprint = $2"
        args: list[object] = [tenant, fingerprint]
        if live_at is not None:
            args.append(_to_micros(live_at))
            sql += f" AND (expires_at IS NULL OR expires_at > ${len(args)})"
        position = None if after is None else (_to_micros(after[0]), after[1])
        sql = keyset_page(sql, args, after=position, limit=limit)
        rows = await self._db.fetchall(sql, *args)
        return [_record(row) for row in rows]

    async def find_by_dedup_keys(
        self, tenant: str, dedup_keys: Sequence[str]
    ) -> dict[str, TokenRecord]:
        """The tokens holding ``dedup_keys``, by dedup key."""
        if not dedup_keys:
            return {}
        rows = await self._db.fetchall(
            _SELECT_DEDUP_HOLDERS[self._db.dialect],
            tenant,
            self._list_param(dedup_keys),
        )
        return {row["dedup_key"]: _record(row) for row in rows}

    async def tenants(self) -> list[str]:
        """Every tenant that has at least one token."""
        rows = await self._db.fetchall("SELECT DISTINCT tenant FROM vault_tokens ORDER BY tenant")
        return [row["tenant"] for row in rows]

    async def count(self, tenant: str, *, tx: Connection | None = None) -> int:
        """How many tokens ``tenant`` has (expired ones not yet swept included)."""
        return int(
            await (tx or self._db).fetchval(
                "SELECT count(*) FROM vault_tokens WHERE tenant = $1", tenant
            )
        )

    # -- key rotation ---------------------------------------------------------------------------

    async def iter_for_rewrap(
        self, tenant: str, batch_size: int, *, below_version: int
    ) -> AsyncIterator[list[RewrapItem]]:
        """Batches of ``tenant``'s ciphertexts under a key version older than ``below_version``.

        Keyset pagination by id: rows the caller fails to rewrap are not seen twice in one pass.
        """
        sql = (
            "SELECT id, ciphertext FROM vault_tokens WHERE tenant = $1"
            " AND key_version < $2 AND id > $3 ORDER BY id LIMIT $4"
        )
        after = ""
        while True:
            rows = await self._db.fetchall(sql, tenant, below_version, after, batch_size)
            if not rows:
                return
            yield [RewrapItem(r["id"], r["ciphertext"]) for r in rows]
            if len(rows) < batch_size:
                return
            after = rows[-1]["id"]

    async def count_below_version(self, tenant: str, version: int) -> int:
        """How many of ``tenant``'s tokens are encrypted under a key version below ``version``."""
        count = await self._db.fetchval(
            "SELECT count(*) FROM vault_tokens WHERE tenant = $1 AND key_version < $2",
            tenant,
            version,
        )
        return int(count)

    async def update_ciphertexts(self, tenant: str, updates: Sequence[CiphertextUpdate]) -> int:
        """Swap rewrapped ciphertexts in, in one statement; return how many rows changed.

        A row deleted or re-encrypted since it was read keeps its current value.
        """
        if not updates:
            return 0
        triples = [(u.id, u.old, u.new, key_version_of(u.new)) for u in updates]
        if self._postgres:
            ids, olds, news, versions = (list(column) for column in zip(*triples, strict=True))
            rows = await self._db.fetchall(
                "UPDATE vault_tokens AS t SET ciphertext = u.new, key_version = u.version"
                " FROM unnest($2::text[], $3::text[], $4::text[], $5::int[])"
                " AS u(id, old, new, version)"
                " WHERE t.tenant = $1 AND t.id = u.id AND t.ciphertext = u.old RETURNING t.id",
                tenant,
                ids,
                olds,
                news,
                versions,
            )
        else:
            rows = await self._db.fetchall(
                "UPDATE vault_tokens SET ciphertext = u.new, key_version = u.version FROM"
                " (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS old,"
                " json_extract(value, '$[2]') AS new, json_extract(value, '$[3]') AS version"
                " FROM json_each($2)) AS u"
                " WHERE vault_tokens.tenant = $1 AND vault_tokens.id = u.id"
                " AND vault_tokens.ciphertext = u.old RETURNING vault_tokens.id",
                tenant,
                orjson.dumps(triples).decode(),
            )
        return len(rows)

    def _list_param(self, values: Sequence[str]) -> Any:
        return list(values) if self._postgres else orjson.dumps(list(values)).decode()
