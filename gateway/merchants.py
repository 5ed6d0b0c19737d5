"""Merchants and their API keys.

API keys are ``tsk_`` + 40 random base62 characters (about 238 bits). Only their SHA-256 is
stored: for a random secret that long, a slow password hash adds nothing but latency on every
request. A key is shown once, when it is created. Lookups on the request path hit a small
in-process cache (``key_cache_seconds``, default 5 s) so authentication costs a dict lookup;
revocation therefore takes effect on every process within that time.

A merchant may register a webhook endpoint (migration 2): the URL Tessera posts payment
notifications to and the ``whsec_`` secret that signs them. Unlike an API key, the signing
secret is stored as is, because signing needs it (Stripe does the same).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from vault.database import Migration, PostgresDatabase, SqliteDatabase, migrate

__all__ = [
    "ApiKeyCache",
    "AuthFailureLimiter",
    "Merchant",
    "MerchantStore",
    "WebhookEndpoint",
    "hash_api_key",
    "new_api_key",
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
]
_MAX_WEBHOOK_URL_LENGTH = 2048


def new_merchant_id() -> str:
    """``mer_`` + 16 lowercase characters: also a valid Vault tenant id (``[a-z0-9_]``)."""
    alphabet = string.ascii_lowercase + string.digits
    return "mer_" + "".join(secrets.choice(alphabet) for _ in range(16))


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


def _check_webhook_url(url: str, *, allow_http: bool) -> str:
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if (
        len(url) > _MAX_WEBHOOK_URL_LENGTH
        or parts.scheme not in schemes
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
    ):
        raise ValueError(
            "The webhook URL must be an absolute https:// URL without credentials "
            f"(at most {_MAX_WEBHOOK_URL_LENGTH} characters)."
        )
    return url


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    name: str
    token_dedup: bool
    created_at: str


class MerchantStore:
    """Merchants and hashed API keys, on either database backend."""

    def __init__(self, db: SqliteDatabase | PostgresDatabase) -> None:
        self._db = db

    async def migrate(self) -> None:
        await migrate(self._db, "merchants", _MIGRATIONS)

    async def create(self, name: str, *, token_dedup: bool = False) -> tuple[Merchant, str]:
        """Create a merchant and its first API key; the key is returned once, never stored."""
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
        key = new_api_key()
        await self._db.execute(
            "INSERT INTO api_keys (key_hash, merchant_id, prefix, created_at) "
            "VALUES ($1, $2, $3, $4)",
            hash_api_key(key),
            merchant_id,
            key[:8],
            datetime.now(UTC).isoformat(),
        )
        return key

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

    async def get(self, merchant_id: str) -> Merchant | None:
        row = await self._db.fetchone(
            "SELECT id, name, token_dedup, created_at FROM merchants WHERE id = $1", merchant_id
        )
        return None if row is None else _merchant(row)

    async def list(self) -> list[Merchant]:
        rows = await self._db.fetchall(
            "SELECT id, name, token_dedup, created_at FROM merchants ORDER BY created_at"
        )
        return [_merchant(row) for row in rows]

    async def set_webhook_endpoint(
        self, merchant_id: str, url: str, *, allow_http: bool = False
    ) -> WebhookEndpoint:
        """Point the merchant's notifications at ``url``; a signing secret is made if none exists.

        ``allow_http`` is for local development and tests; production endpoints are https.
        """
        _check_webhook_url(url, allow_http=allow_http)
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


def _merchant(row: object) -> Merchant:
    assert isinstance(row, dict)
    return Merchant(
        id=row["id"],
        name=row["name"],
        token_dedup=bool(row["token_dedup"]),
        created_at=str(row["created_at"]),
    )


class ApiKeyCache:
    """Positive and negative answers of ``MerchantStore.authenticate`` for a few seconds."""

    def __init__(self, store: MerchantStore, ttl: float, *, max_entries: int = 10_000) -> None:
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[float, Merchant | None]] = {}

    async def authenticate(self, key: str) -> Merchant | None:
        now = time.monotonic()
        digest = hash_api_key(key)
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        merchant = await self._store.authenticate(key)
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[digest] = (now + self._ttl, merchant)
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
