"""Merchants and their API keys.

API keys are ``tsk_`` + 40 random base62 characters (about 238 bits). Only their SHA-256 is
stored: for a random secret that long, a slow password hash adds nothing but latency on every
request. A key is shown once, when it is created. Lookups on the request path hit a small
in-process cache (``key_cache_seconds``, default 5 s) so authentication costs a dict lookup;
revocation therefore takes effect on every process within that time.

Each key has an id (``key_`` + 16 characters, migration 3) and keeps its first eight characters
(``tsk_`` + 4) as a ``prefix``: operators list, and revoke, keys by either (``tessera merchants
keys``) without ever seeing a key or its hash again. Keys made before migration 3 got an id from
the migration. A key added by a gateway process still running an older build during a rolling
upgrade has no id (the column stays nullable for that reason): revoke it by its prefix.

A merchant may register a webhook endpoint (migration 2): the URL Tessera posts payment
notifications to and the ``whsec_`` secret that signs them. Unlike an API key, the signing
secret is stored as is, because signing needs it (Stripe does the same).

Webhook URLs must not let a merchant aim Tessera at an internal address (SSRF). The rules:
https only, no userinfo, a host that is a DNS name or an IP literal, any port; the host's
addresses, every one of them, must be public (the predicate is ``sdk.hostpolicy.address_refusal``:
loopback, private, link-local, cloud-metadata, multicast, unspecified, reserved and IPv4-mapped
forms of those are refused). They are enforced twice:

- at registration, ``check_webhook_url`` resolves the host with ``sdk.hostpolicy.resolve_checked``
  (the SDK's one "resolve, then refuse if any address is non-public") and refuses the URL if any
  address is non-public;
- at delivery, ``check_webhook_delivery_url`` checks only what the connection will not: the URL's
  form and, for an IP-literal host, the literal. A name is resolved and checked by the
  ``sdk.aiohttp_transport.GuardedResolver`` of the session the dispatcher builds for itself,
  which hands aiohttp the addresses it checked; aiohttp connects to those (no second lookup), so
  a DNS answer that changes after registration (rebinding) cannot reach an internal host. See
  ``gateway.payments.outbox``.

``allow_private`` (config: ``[payments] allow_private_webhook_targets``) is for development and
tests only: it admits loopback and private addresses, never link-local or metadata ones. No
``WebhookUrlError`` message names an address.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from normalization import InvalidRequestError, contains_pan
from sdk.hostpolicy import (
    DestinationRefusedError,
    HostResolutionError,
    ip_literal,
    literal_refusal,
    resolve_checked,
)
from vault.database import (
    Connection,
    Migration,
    PostgresDatabase,
    SqliteDatabase,
    in_transaction,
    migrate,
)

__all__ = [
    "WEBHOOK_RESOLVE_TIMEOUT",
    "AmbiguousKeyError",
    "ApiKey",
    "ApiKeyCache",
    "AuthFailureLimiter",
    "Merchant",
    "MerchantStore",
    "MerchantSummary",
    "WebhookEndpoint",
    "WebhookUrlError",
    "check_webhook_delivery_url",
    "check_webhook_url",
    "hash_api_key",
    "new_api_key",
    "new_key_id",
    "new_merchant_id",
]

_BASE62 = string.ascii_letters + string.digits
_API_KEY_RE = re.compile(r"tsk_[A-Za-z0-9]{40}", re.ASCII)

_MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE merchants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_dedup BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE api_keys (
            key_hash TEXT PRIMARY KEY,
            merchant_id TEXT NOT NULL REFERENCES merchants(id),
            prefix TEXT NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        );
        CREATE INDEX api_keys_merchant ON api_keys (merchant_id)
        """,
    ),
    Migration(
        2,
        """
        ALTER TABLE merchants ADD COLUMN webhook_url TEXT;
        ALTER TABLE merchants ADD COLUMN webhook_secret TEXT
        """,
    ),
    # Key ids for operators (list, revoke). Nullable: a gateway still running an older build
    # during a rolling upgrade inserts keys without one. Existing keys get a random id here,
    # 16 of the letters a-p (64 bits): hex digits mapped to letters, because the audit log
    # refuses any text holding a run of digits that could be a card number (SQLite has no
    # translate(): ten nested replace() calls).
    Migration(
        3,
        """
        ALTER TABLE api_keys ADD COLUMN id TEXT;
        UPDATE api_keys SET id = 'key_' ||
            replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(
                lower(hex(randomblob(8))),
            '0', 'g'), '1', 'h'), '2', 'i'), '3', 'j'), '4', 'k'),
            '5', 'l'), '6', 'm'), '7', 'n'), '8', 'o'), '9', 'p')
            WHERE id IS NULL;
        CREATE UNIQUE INDEX api_keys_id ON api_keys (id)
        """,
        """
        ALTER TABLE api_keys ADD COLUMN id TEXT;
        UPDATE api_keys SET id = 'key_' || translate(
            substr(md5(random()::text || key_hash), 1, 16), '0123456789', 'ghijklmnop')
            WHERE id IS NULL;
        CREATE UNIQUE INDEX api_keys_id ON api_keys (id)
        """,
    ),
]
_MAX_WEBHOOK_URL_LENGTH = 2048


def new_merchant_id() -> str:
    """``mer_`` + 16 lowercase characters: also a valid Vault tenant id (``[a-z0-9_]``)."""
    alphabet = string.ascii_lowercase + string.digits
    return "mer_" + "".join(secrets.choice(alphabet) for _ in range(16))


def new_key_id() -> str:
    """``key_`` + 16 lowercase letters (≈ 75 bits; migration 3 gives older keys letters too):
    names an API key without revealing any of it, and never holds the digit run the audit log
    would refuse as a card number."""
    return "key_" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))


def new_api_key() -> str:
    return "tsk_" + "".join(secrets.choice(_BASE62) for _ in range(40))


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii", "replace")).hexdigest()


def looks_like_api_key(key: str) -> bool:
    return _API_KEY_RE.fullmatch(key) is not None


def new_webhook_secret() -> str:
    return "whsec_" + "".join(secrets.choice(_BASE62) for _ in range(32))


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """Where a merchant's notifications go and the secret that signs them."""

    url: str
    secret: str = field(repr=False)


#: A DNS name (ASCII: IDNs in their xn-- form) or, in brackets for IPv6, an IP literal.
_HOST_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|[0-9a-f:.]+", re.ASCII)
#: Seconds a webhook host's lookup may take, at registration and at every delivery (the
#: dispatcher's ``GuardedResolver``): a slow DNS is a failed attempt, not a stuck one.
WEBHOOK_RESOLVE_TIMEOUT = 5.0
_DEFAULT_PORTS = {"https": 443, "http": 80}


class WebhookUrlError(ValueError):
    """A webhook URL Tessera will not post to. ``code`` is stable; the message names no address.

    ``webhook_url_invalid``: not an absolute https URL without credentials (or too long), or
    a host that is a numeric spelling rather than a DNS name or a plain IP literal.
    ``webhook_target_refused``: the host is, or resolves to, a non-public address.
    ``webhook_target_unresolved``: the host has no address right now (delivery only: the code
    the dispatcher logs; registration accepts such a host).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid() -> WebhookUrlError:
    return WebhookUrlError(
        "webhook_url_invalid",
        "The webhook URL must be an absolute https:// URL without credentials, with a DNS "
        f"name or IP address as host (at most {_MAX_WEBHOOK_URL_LENGTH} characters).",
    )


def _refused(reason: str | None) -> WebhookUrlError:
    return WebhookUrlError(
        "webhook_target_refused",
        f"The webhook URL's host is or resolves to {reason or 'a non-public address'}; "
        "notifications are only sent to public addresses.",
    )


_NUMERIC_LABEL_RE = re.compile(r"[0-9]+|0x[0-9a-f]*", re.ASCII)


def _numeric_spelling(host: str) -> bool:
    """Whether ``host`` ends in a numeric label without being a plain IP literal.

    ``2130706433``, ``127.1`` or ``a.b.123`` are not DNS names (no top-level domain is a
    number), and HTTP clients read them as IPv4 shorthands or refuse them: aiohttp refuses the
    URL, so such a URL could never be delivered to.
    """
    if ip_literal(host) is not None:
        return False
    return _NUMERIC_LABEL_RE.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]) is not None


def _parse_webhook_url(url: str, *, allow_http: bool) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a syntactically acceptable webhook URL."""
    schemes = ("https", "http") if allow_http else ("https",)
    if len(url) > _MAX_WEBHOOK_URL_LENGTH or not url.isascii() or not url.isprintable():
        raise _invalid()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid() from None
    host = parts.hostname
    if (
        parts.scheme not in schemes
        or not host
        or parts.username is not None
        or parts.password is not None
        or _HOST_RE.fullmatch(host) is None
        or port == 0
        or _numeric_spelling(host)
    ):
        raise _invalid()
    return parts.scheme, host, port if port is not None else _DEFAULT_PORTS[parts.scheme]


async def check_webhook_url(
    url: str, *, allow_http: bool = False, allow_private: bool = False
) -> None:
    """Raise ``WebhookUrlError`` unless ``url`` may be registered (see the module docstring).

    A host name that does not resolve now is accepted (its DNS may not be published yet):
    every delivery resolves and checks it again. One that resolves to any non-public address
    is refused. An IP literal is checked without a lookup.
    """
    if len(url) <= _MAX_WEBHOOK_URL_LENGTH and contains_pan(url):
        # Stored, listed and logged with every delivery: a card number pasted into it must not
        # be. (Checked once, here: a delivery goes to a URL that passed.)
        raise WebhookUrlError(
            "webhook_url_invalid", "The webhook URL looks like it holds a card number; not stored."
        )
    _, host, port = _parse_webhook_url(url, allow_http=allow_http)
    try:
        await resolve_checked(host, port, test_mode=allow_private, timeout=WEBHOOK_RESOLVE_TIMEOUT)
    except DestinationRefusedError as exc:
        raise _refused(exc.reason) from None
    except (HostResolutionError, TimeoutError):
        return


def check_webhook_delivery_url(url: str, *, allow_private: bool = False) -> None:
    """Raise ``WebhookUrlError`` unless a delivery may be attempted to the registered ``url``.

    Syntax only (http is accepted: registration decided the scheme) plus, for an IP-literal
    host, its address: aiohttp never asks a resolver about a literal. A host name is checked
    when the delivery session resolves it (``GuardedResolver``), never here: a second lookup
    would be the one an attacker's DNS answers differently.
    """
    _, host, _ = _parse_webhook_url(url, allow_http=True)
    reason = literal_refusal(host, test_mode=allow_private)
    if reason is not None:
        raise _refused(reason)


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    name: str
    token_dedup: bool
    created_at: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What may be shown of an API key: never the key, never its hash.

    ``id`` is None only for a key inserted by an older build during a rolling upgrade
    (see the module docstring); ``prefix`` is the key's first eight characters (``tsk_`` + 4).
    """

    id: str | None
    merchant_id: str
    prefix: str
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class MerchantSummary:
    """One line of ``tessera merchants list``: no key, hash or signing secret in it."""

    merchant: Merchant
    active_keys: int
    webhook_url: str | None


class AmbiguousKeyError(LookupError):
    """A key prefix that names several of the merchant's keys; ``candidates`` are their ids."""

    def __init__(self, candidates: list[ApiKey]) -> None:
        super().__init__("that prefix names several keys; give the key id")
        self.candidates = candidates


_KEY_PREFIX_LENGTH = 8
_SELECT_KEY = "SELECT key_hash, id, merchant_id, prefix, created_at, revoked_at FROM api_keys "
#: One of a merchant's keys by id, prefix or hash (``MerchantStore.revoke``).
_KEYS_BY = {
    "id": _SELECT_KEY + "WHERE merchant_id = $1 AND id = $2 ORDER BY created_at, id",
    "prefix": _SELECT_KEY + "WHERE merchant_id = $1 AND prefix = $2 ORDER BY created_at, id",
    "key_hash": _SELECT_KEY + "WHERE merchant_id = $1 AND key_hash = $2 ORDER BY created_at, id",
}


class MerchantStore:
    """Merchants and hashed API keys, on either database backend."""

    def __init__(self, db: SqliteDatabase | PostgresDatabase) -> None:
        self._db = db

    async def migrate(self) -> None:
        await migrate(self._db, "merchants", _MIGRATIONS)

    async def create(self, name: str, *, token_dedup: bool = False) -> tuple[Merchant, str]:
        """Create a merchant and its first API key; the key is returned once, never stored.

        A name holding a card number (pasted by mistake) is refused: names are listed and logged.
        """
        if contains_pan(name):
            raise InvalidRequestError("The merchant name looks like it holds a card number.")
        merchant = Merchant(
            id=new_merchant_id(),
            name=name,
            token_dedup=token_dedup,
            created_at=datetime.now(UTC).isoformat(),
        )
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO merchants (id, name, token_dedup, created_at) VALUES ($1, $2, $3, $4)",
                merchant.id,
                merchant.name,
                merchant.token_dedup,
                merchant.created_at,
            )
        key = await self.add_key(merchant.id)
        return merchant, key

    async def add_key(self, merchant_id: str) -> str:
        """A new live key for ``merchant_id``; the key is returned once, never stored."""
        _, key = await self.create_key(merchant_id)
        return key

    async def create_key(
        self, merchant_id: str, *, tx: Connection | None = None
    ) -> tuple[ApiKey, str]:
        """A new live key for the merchant: what may be shown of it, and the key (once).

        ``tx``: insert in the caller's transaction (so an audit entry commits with it).
        Raises ``LookupError`` for an unknown merchant."""
        key = new_api_key()
        record = ApiKey(
            id=new_key_id(),
            merchant_id=merchant_id,
            prefix=key[:_KEY_PREFIX_LENGTH],
            created_at=datetime.now(UTC).isoformat(),
            revoked_at=None,
        )
        async with in_transaction(self._db, tx) as conn:
            if await conn.fetchval("SELECT 1 FROM merchants WHERE id = $1", merchant_id) is None:
                raise LookupError("No such merchant.")
            await conn.execute(
                "INSERT INTO api_keys (key_hash, id, merchant_id, prefix, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                hash_api_key(key),
                record.id,
                merchant_id,
                record.prefix,
                record.created_at,
            )
        return record, key

    async def keys(self, merchant_id: str, *, tx: Connection | None = None) -> list[ApiKey]:
        """The merchant's keys, live and revoked, oldest first (empty for an unknown merchant)."""
        rows = await (tx or self._db).fetchall(
            "SELECT id, merchant_id, prefix, created_at, revoked_at FROM api_keys "
            "WHERE merchant_id = $1 ORDER BY created_at, id",
            merchant_id,
        )
        return [_api_key(row) for row in rows]

    async def revoke(
        self, merchant_id: str, which: str, *, tx: Connection | None = None
    ) -> tuple[ApiKey, bool]:
        """Revoke one of the merchant's keys, named by its id (``key_...``), its prefix (the
        first eight characters, ``tsk_`` + 4) or the whole key (matched by its hash).

        Returns the key as it now is and whether this call revoked it (False: it already was).
        Raises ``LookupError`` when nothing of the merchant's matches, ``AmbiguousKeyError``
        (a ``LookupError`` too) when a prefix matches several keys."""
        if looks_like_api_key(which):
            column, value = "key_hash", hash_api_key(which)
        elif which.startswith("tsk_"):
            if len(which) != _KEY_PREFIX_LENGTH:
                raise LookupError("a key prefix is the first 8 characters of the key (tsk_ + 4)")
            column, value = "prefix", which
        else:
            column, value = "id", which
        async with in_transaction(self._db, tx) as conn:
            if await conn.fetchval("SELECT 1 FROM merchants WHERE id = $1", merchant_id) is None:
                raise LookupError("No such merchant.")
            rows = await conn.fetchall(
                _KEYS_BY[column],
                merchant_id,
                value,
            )
            if not rows:
                raise LookupError("no key of this merchant has that id, prefix or value")
            if len(rows) > 1:
                raise AmbiguousKeyError([_api_key(row) for row in rows])
            row = rows[0]
            if row["revoked_at"] is not None:
                return _api_key(row), False
            # Only a still-live key: of two concurrent revocations, one revokes it.
            revoked_at = await conn.fetchval(
                "UPDATE api_keys SET revoked_at = $1 WHERE key_hash = $2 AND revoked_at IS NULL "
                "RETURNING revoked_at",
                datetime.now(UTC).isoformat(),
                row["key_hash"],
            )
            if revoked_at is None:
                current = await conn.fetchone(
                    "SELECT id, merchant_id, prefix, created_at, revoked_at FROM api_keys "
                    "WHERE key_hash = $1",
                    row["key_hash"],
                )
                assert current is not None
                return _api_key(current), False
            return _api_key({**row, "revoked_at": revoked_at}), True

    async def revoke_all(self, merchant_id: str, *, tx: Connection | None = None) -> list[ApiKey]:
        """Revoke every live key of the merchant; the keys this call revoked. Raises
        ``LookupError`` for an unknown merchant."""
        async with in_transaction(self._db, tx) as conn:
            if await conn.fetchval("SELECT 1 FROM merchants WHERE id = $1", merchant_id) is None:
                raise LookupError("No such merchant.")
            rows = await conn.fetchall(
                "UPDATE api_keys SET revoked_at = $1 WHERE merchant_id = $2 AND revoked_at IS NULL "
                "RETURNING id, merchant_id, prefix, created_at, revoked_at",
                datetime.now(UTC).isoformat(),
                merchant_id,
            )
        return sorted((_api_key(row) for row in rows), key=lambda k: (k.created_at, k.id or ""))

    async def revoke_key(self, key: str) -> bool:
        row = await self._db.fetchone(
            "SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_api_key(key),
        )
        if row is None:
            return False
        await self._db.execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE key_hash = $2",
            datetime.now(UTC).isoformat(),
            hash_api_key(key),
        )
        return True

    async def delete(self, merchant_id: str, *, tx: Connection | None = None) -> bool:
        """Remove the merchant and its API keys (revoked ones too), in one transaction; False
        if there was no such merchant.

        For undoing a creation that could not be completed (``tessera merchants create`` when
        Vault refuses to make its keys) and for ``tessera merchants delete``. Tokens, payments
        and audit entries name a merchant without a foreign key and are not touched: do not
        delete a merchant that has any (the command refuses to). ``tx``: in the caller's
        transaction (where that check runs).
        """
        async with in_transaction(self._db, tx) as conn:
            row = await conn.fetchone("SELECT id FROM merchants WHERE id = $1", merchant_id)
            if row is None:
                return False
            await conn.execute("DELETE FROM api_keys WHERE merchant_id = $1", merchant_id)
            await conn.execute("DELETE FROM merchants WHERE id = $1", merchant_id)
        return True

    async def get(self, merchant_id: str, *, tx: Connection | None = None) -> Merchant | None:
        row = await (tx or self._db).fetchone(
            "SELECT id, name, token_dedup, created_at FROM merchants WHERE id = $1", merchant_id
        )
        return None if row is None else _merchant(row)

    async def list(self) -> list[Merchant]:
        rows = await self._db.fetchall(
            "SELECT id, name, token_dedup, created_at FROM merchants ORDER BY created_at"
        )
        return [_merchant(row) for row in rows]

    async def summaries(self) -> builtins.list[MerchantSummary]:
        """Every merchant, oldest first, with its number of live keys and its webhook URL."""
        rows = await self._db.fetchall(
            "SELECT m.id, m.name, m.token_dedup, m.created_at, m.webhook_url, "
            "(SELECT COUNT(*) FROM api_keys k WHERE k.merchant_id = m.id "
            "AND k.revoked_at IS NULL) AS active_keys "
            "FROM merchants m ORDER BY m.created_at, m.id"
        )
        return [
            MerchantSummary(
                merchant=_merchant(row),
                active_keys=int(row["active_keys"]),
                webhook_url=row["webhook_url"] or None,
            )
            for row in rows
        ]

    async def set_webhook_endpoint(
        self,
        merchant_id: str,
        url: str,
        *,
        allow_http: bool = False,
        allow_private: bool = False,
    ) -> WebhookEndpoint:
        """Point the merchant's notifications at ``url``; a signing secret is made if none exists.

        Raises ``WebhookUrlError`` (a ``ValueError``) for a URL ``check_webhook_url`` refuses.
        ``allow_http`` and ``allow_private`` are for local development and tests; production
        endpoints are https on public addresses.
        """
        await check_webhook_url(url, allow_http=allow_http, allow_private=allow_private)
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT webhook_secret FROM merchants WHERE id = $1", merchant_id
            )
            if row is None:
                raise LookupError("No such merchant.")
            secret = row["webhook_secret"] or new_webhook_secret()
            await tx.execute(
                "UPDATE merchants SET webhook_url = $1, webhook_secret = $2 WHERE id = $3",
                url,
                secret,
                merchant_id,
            )
        return WebhookEndpoint(url=url, secret=secret)

    async def rotate_webhook_secret(self, merchant_id: str) -> str:
        """A new signing secret, effective for the next delivery; returned once."""
        secret = new_webhook_secret()
        await self._db.execute(
            "UPDATE merchants SET webhook_secret = $1 WHERE id = $2", secret, merchant_id
        )
        return secret

    async def clear_webhook_endpoint(self, merchant_id: str) -> None:
        await self._db.execute(
            "UPDATE merchants SET webhook_url = NULL, webhook_secret = NULL WHERE id = $1",
            merchant_id,
        )

    async def webhook_endpoint(self, merchant_id: str) -> WebhookEndpoint | None:
        """The merchant's endpoint, or None when no notifications should be sent."""
        row = await self._db.fetchone(
            "SELECT webhook_url, webhook_secret FROM merchants WHERE id = $1", merchant_id
        )
        if row is None or not row["webhook_url"] or not row["webhook_secret"]:
            return None
        return WebhookEndpoint(url=row["webhook_url"], secret=row["webhook_secret"])

    async def authenticate(self, key: str) -> Merchant | None:
        """The merchant owning the live key ``key``, or None."""
        if not looks_like_api_key(key):
            return None
        row = await self._db.fetchone(
            "SELECT m.id, m.name, m.token_dedup, m.created_at FROM api_keys k "
            "JOIN merchants m ON m.id = k.merchant_id "
            "WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            hash_api_key(key),
        )
        return None if row is None else _merchant(row)


def _api_key(row: object) -> ApiKey:
    assert isinstance(row, dict)
    revoked_at = row["revoked_at"]
    return ApiKey(
        id=row["id"],
        merchant_id=row["merchant_id"],
        prefix=row["prefix"],
        created_at=str(row["created_at"]),
        revoked_at=None if revoked_at is None else str(revoked_at),
    )


def _merchant(row: object) -> Merchant:
    assert isinstance(row, dict)
    return Merchant(
        id=row["id"],
        name=row["name"],
        token_dedup=bool(row["token_dedup"]),
        created_at=str(row["created_at"]),
    )


class ApiKeyCache:
    """Positive and negative answers of ``MerchantStore.authenticate`` for a few seconds.

    ``cached(key)`` answers from the cache without a coroutine (the request path's usual case);
    ``fetch(key)`` asks the store after a miss and caches its answer; ``authenticate(key)`` is
    the two together.
    """

    def __init__(self, store: MerchantStore, ttl: float, *, max_entries: int = 10_000) -> None:
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[float, Merchant | None]] = {}

    def cached(self, key: str) -> tuple[float, Merchant | None] | None:
        """``(expiry, answer)`` for ``key`` while a cached answer is fresh, else None. The
        answer is the merchant, or None for a key the store refused."""
        hit = self._entries.get(hash_api_key(key))
        if hit is not None and hit[0] > time.monotonic():
            return hit
        return None

    async def authenticate(self, key: str) -> Merchant | None:
        hit = self.cached(key)
        return hit[1] if hit is not None else await self.fetch(key)

    async def fetch(self, key: str) -> Merchant | None:
        """Ask the store (after a miss of ``cached``) and cache its answer."""
        now = time.monotonic()
        merchant = await self._store.authenticate(key)
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[hash_api_key(key)] = (now + self._ttl, merchant)
        return merchant

    def invalidate(self) -> None:
        self._entries.clear()


class AuthFailureLimiter:
    """Counts failed authentications per client address in a fixed window (RELIABILITY 32)."""

    def __init__(self, limit: int, window: float, *, max_clients: int = 100_000) -> None:
        self._limit = limit
        self._window = window
        self._max = max_clients
        self._failures: dict[str, tuple[float, int]] = {}

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0 when not blocked)."""
        entry = self._failures.get(client)
        if entry is None:
            return 0.0
        window_end, count = entry
        remaining = window_end - time.monotonic()
        if remaining <= 0:
            del self._failures[client]
            return 0.0
        return remaining if count >= self._limit else 0.0

    def record_failure(self, client: str) -> None:
        now = time.monotonic()
        window_end, count = self._failures.get(client, (now + self._window, 0))
        if window_end <= now:
            window_end, count = now + self._window, 0
        if len(self._failures) >= self._max:
            self._failures.clear()
        self._failures[client] = (window_end, count + 1)
