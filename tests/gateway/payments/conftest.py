"""Fixtures for the payments persistence layer: every store on a real SQLite file AND on the
real PostgreSQL, each PostgreSQL test in a schema of its own (dropped afterwards).

=====================  ===========================================================================
fixture                gives
=====================  ===========================================================================
``database_url``       a URL for a fresh database; parametrized ``sqlite`` / ``postgresql``. Open
                       it twice for two "gateway processes" on one database.
``db``                 that database, opened (closed after the test)
``clock``              a ``FakeClock`` the stores read; ``clock.advance(seconds)`` moves it
``payment_store``      ``PaymentStore`` on ``db`` (migrated), reading ``clock``
``merchants``          ``MerchantStore`` on ``db`` (migrated)
``outbox``             ``Outbox`` on ``db`` (migrated), reading ``clock``
=====================  ===========================================================================
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from gateway.merchants import MerchantStore
from gateway.payments import Outbox, PaymentStore
from vault.database import PostgresDatabase, SqliteDatabase, open_database

Database = SqliteDatabase | PostgresDatabase


class FakeClock:
    """A ``vault.clock.Clock`` that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2030, 1, 15, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'payments.db'}"
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = "t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await admin.close()
    separator = "&" if "?" in dsn else "?"
    # asyncpg passes unknown DSN query parameters to the server as settings.
    yield f"{dsn}{separator}search_path={schema}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def payment_store(db: Database, clock: FakeClock) -> PaymentStore:
    store = PaymentStore(db, clock=clock)
    await store.migrate()
    return store


@pytest.fixture
async def merchants(db: Database) -> MerchantStore:
    store = MerchantStore(db)
    await store.migrate()
    return store


@pytest.fixture
async def outbox(db: Database, clock: FakeClock) -> Outbox:
    box = Outbox(db, clock=clock)
    await box.migrate()
    return box
