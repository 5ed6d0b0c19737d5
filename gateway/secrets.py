"""Secrets the gateway keeps for itself (not card data): the idempotency fingerprint key.

Idempotency records compare requests by an HMAC of their body, which can hold an inline PAN, so
the HMAC must be keyed. Every gateway process must use the same key. ``payments.idempotency_key``
(or ``TESSERA_IDEMPOTENCY_KEY``) sets it; without it the first process generates a random key and
stores it in the database, where the others find it. Set it explicitly in production, so that a
copy of the database alone does not hold the key to its own fingerprints.
"""

from __future__ import annotations

import secrets

from pydantic import SecretStr

from vault.database import Migration, PostgresDatabase, SqliteDatabase, migrate

__all__ = ["idempotency_fingerprint_key"]

_MIGRATIONS = [
    Migration(1, "CREATE TABLE gateway_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
]
_NAME = "idempotency_fingerprint_key"


async def idempotency_fingerprint_key(
    db: SqliteDatabase | PostgresDatabase, configured: SecretStr | None
) -> bytes:
    if configured is not None:
        return configured.get_secret_value().encode()
    await migrate(db, "gateway.secrets", _MIGRATIONS)
    await db.execute(
        "INSERT INTO gateway_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        _NAME,
        secrets.token_hex(32),
    )
    value = await db.fetchval("SELECT value FROM gateway_secrets WHERE name = $1", _NAME)
    return str(value).encode()
