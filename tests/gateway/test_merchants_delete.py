"""``MerchantStore.delete``: the merchant and all its API keys go, nobody else's; both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.merchants import MerchantStore
from vault.database import open_database


@pytest.fixture
async def store(database_url: str | None, tmp_path: Path) -> AsyncIterator[MerchantStore]:
    """On each backend (``database_url``: None for SQLite, then a scratch PostgreSQL schema)."""
    db = await open_database(database_url or f"sqlite:///{tmp_path / 'merchants.db'}")
    try:
        merchants = MerchantStore(db)
        await merchants.migrate()
        yield merchants
    finally:
        await db.close()


async def test_delete_removes_the_merchant_and_its_keys_only(store: MerchantStore) -> None:
    gone, key = await store.create("gone")
    revoked = await store.add_key(gone.id)
    assert await store.revoke_key(revoked)
    kept, kept_key = await store.create("kept")

    assert await store.delete(gone.id) is True
    assert await store.get(gone.id) is None
    assert await store.authenticate(key) is None
    assert [m.id for m in await store.list()] == [kept.id]
    assert await store.authenticate(kept_key) == kept
    # The key rows went too (a revoked key is still a row naming the merchant).
    assert await store._db.fetchval("SELECT COUNT(*) FROM api_keys") == 1

    assert await store.delete(gone.id) is False
    assert await store.delete("mer_nosuchmerchant00") is False
