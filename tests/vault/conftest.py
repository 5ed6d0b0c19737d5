"""Fixtures for the vault storage and service tests: both databases, tenants, the service.

``database`` is parametrized over SQLite (a temporary file) and PostgreSQL (a schema of its own,
``t_<random>``, set as the connection's ``search_path`` and dropped afterwards, so parallel runs
never see each other's tables). Everything talks to the real OpenBao of ``tests/conftest.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from normalization import CardData
from tests.conftest import ProvisionedVault
from tests.vault.canary import luhn_complete
from vault.audit import AuditLog
from vault.batcher import TransitBatcher
from vault.client import VaultClient
from vault.cvv import CvvHolder
from vault.database import PostgresDatabase, SqliteDatabase, open_database
from vault.provisioning import ensure_tenant_keys
from vault.token_store import TokenStore
from vault.tokenization import TokenizationService

Database = SqliteDatabase | PostgresDatabase


class FakeClock:
    """A clock the test moves by hand; starts at the real time (card expiry checks use it)."""

    def __init__(self) -> None:
        self.current = datetime.now(UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@dataclass
class PostgresSchema:
    """A throw-away PostgreSQL schema: ``dsn`` connects with it as the search path."""

    admin_dsn: str
    name: str

    @property
    def dsn(self) -> str:
        separator = "&" if "?" in self.admin_dsn else "?"
        return f"{self.admin_dsn}{separator}options=-csearch_path%3D{self.name}"

    async def create(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"CREATE SCHEMA {self.name}")
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty database of each backend (PostgreSQL: a schema of its own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/vault.db"
        return
    # A plain (sync) fixture: async ones cannot be requested from inside an async fixture.
    postgres_dsn: str = request.getfixturevalue("postgres_dsn")
    schema = PostgresSchema(postgres_dsn, f"t_{secrets.token_hex(6)}")
    await schema.create()
    try:
        yield schema.dsn
    finally:
        await schema.drop()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A fresh, empty database of each backend."""
    db = await open_database(database_url)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def store(database: Database) -> TokenStore:
    token_store = TokenStore(database)
    await token_store.migrate()
    return token_store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def audit(database: Database, clock: FakeClock) -> AuditLog:
    log = AuditLog(database, clock=clock)
    await log.migrate()
    return log


@pytest.fixture
def new_tenant(provisioned_vault: ProvisionedVault) -> Callable[[], str]:
    """Makes a tenant with its own PAN and fingerprint keys in the session OpenBao."""

    def make() -> str:
        tenant = f"vt_{secrets.token_hex(5)}"
        ensure_tenant_keys(provisioned_vault.addr, provisioned_vault.root_token, tenant)
        return tenant

    return make


@pytest.fixture
def tenant(new_tenant: Callable[[], str]) -> str:
    return new_tenant()


@pytest.fixture
async def batcher(vault_client: VaultClient) -> AsyncIterator[TransitBatcher]:
    transit = TransitBatcher(vault_client)
    try:
        yield transit
    finally:
        await transit.close()


@pytest.fixture
def cvv() -> CvvHolder:
    return CvvHolder()


@pytest.fixture
def service(
    store: TokenStore,
    batcher: TransitBatcher,
    cvv: CvvHolder,
    audit: AuditLog,
    clock: FakeClock,
) -> TokenizationService:
    return TokenizationService(store, batcher, cvv=cvv, audit=audit, clock=clock)


def random_pan(prefix: str = "4", length: int = 16) -> str:
    """A random Luhn-valid PAN (a different card each call)."""
    body = prefix + "".join(secrets.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


def card(
    pan: str | None = None,
    *,
    cvc: str | None = None,
    holder_name: str | None = None,
    exp_year: int | None = None,
    exp_month: int = 12,
) -> CardData:
    return CardData.model_validate(
        {
            "number": pan or random_pan(),
            "exp_month": exp_month,
            "exp_year": exp_year or datetime.now(UTC).year + 3,
            "cvc": cvc,
            "holder_name": holder_name,
        }
    )
