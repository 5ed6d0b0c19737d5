"""Fixtures for gateway tests: the real app on loopback, against the session's real OpenBao.

``gateway`` gives a running app (aiohttp test server) on a fresh SQLite database, with one
merchant and its API key; ``make_gateway`` builds more (PostgreSQL, other settings, another Vault).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import RESOURCES, create_app
from gateway.config import (
    AuthSettings,
    DatabaseSettings,
    ServerSettings,
    Settings,
    TokenizationSettings,
    VaultSettings,
)
from gateway.merchants import Merchant
from gateway.observability import GatewayMetrics
from vault.provisioning import ensure_tenant_keys

from .procs import postgres_schema


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    merchant: Merchant
    api_key: str
    settings: Settings

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def resources(self) -> Any:
        return self.client.app[RESOURCES]  # type: ignore[index]

    async def add_merchant(
        self, name: str = "other", *, dedup: bool = False
    ) -> tuple[Merchant, str]:
        merchant, key = await self.resources.merchants.create(name, token_dedup=dedup)
        ensure_tenant_keys(self.settings.vault.addr, _root(self.settings), merchant.id)
        return merchant, key


def _root(settings: Settings) -> str:
    assert settings.vault.admin_token is not None
    return settings.vault.admin_token.get_secret_value()


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    aiohttp_client: Any, openbao: Any, provisioned_vault: Any, tmp_path: Path
) -> AsyncIterator[MakeGateway]:
    async def make(
        *,
        database_url: str | None = None,
        vault_addr: str | None = None,
        root_token: str | None = None,
        dedup: bool = False,
        server: dict[str, Any] | None = None,
        tokenization: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
        connectors: dict[str, Any] | None = None,
        routing: dict[str, Any] | None = None,
        payments: dict[str, Any] | None = None,
    ) -> Gateway:
        addr = vault_addr or openbao.addr
        token = root_token or openbao.root_token
        settings = Settings(
            server=ServerSettings(**(server or {})),
            database=DatabaseSettings(
                url=database_url or f"sqlite:///{tmp_path / f'gw-{secrets.token_hex(4)}.db'}"
            ),
            vault=VaultSettings(addr=addr, token=token, admin_token=token, timeout=2.0),  # type: ignore[arg-type]
            tokenization=TokenizationSettings(**(tokenization or {})),
            auth=AuthSettings(**({"key_cache_seconds": 0} | (auth or {}))),
            connectors=connectors or {},
            routing=routing or {},
            payments=payments or {},
        )
        client = await aiohttp_client(create_app(settings, metrics=GatewayMetrics()))
        resources = client.app[RESOURCES]
        merchant, key = await resources.merchants.create("acme", token_dedup=dedup)
        ensure_tenant_keys(addr, token, merchant.id)
        return Gateway(client=client, merchant=merchant, api_key=key, settings=settings)

    yield make


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Gateway:
    return await make_gateway()


SANDBOX_API_KEY = "sk_sandbox_test_key"
SANDBOX_WEBHOOK_SECRET = "whsec_sandbox_test_secret"


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> Any:
    """The sandbox provider's simulator on loopback (from its entry point, as the gateway finds it)."""
    from gateway.simulators import load_simulator

    factory = load_simulator("sandbox")
    app = factory(
        api_key=SANDBOX_API_KEY,
        webhook_secret=SANDBOX_WEBHOOK_SECRET,
        settle_delay=0.2,
        hang_seconds=5,
    )
    return await aiohttp_server(app)


class Observed:
    """What a sandbox simulator received: the body of every API POST, by path."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, method: str, path: str, body: bytes) -> None:
        self.bodies.append((path, json.loads(body) if body else {}))

    def authorizations(self) -> list[dict[str, Any]]:
        return [body for path, body in self.bodies if path == "/v1/authorizations"]

    def captures(self) -> list[dict[str, Any]]:
        return [body for path, body in self.bodies if path.endswith("/captures")]

    def refunds(self) -> list[dict[str, Any]]:
        return [body for path, body in self.bodies if path.endswith("/refunds")]


@pytest.fixture
def observed() -> Observed:
    return Observed()


@pytest.fixture
async def observed_sandbox(aiohttp_server: Any, observed: Observed) -> Any:
    """The sandbox simulator, as ``sandbox``, telling ``observed`` what it receives."""
    from gateway.simulators import load_simulator

    app = load_simulator("sandbox")(
        api_key=SANDBOX_API_KEY,
        webhook_secret=SANDBOX_WEBHOOK_SECRET,
        settle_delay=0.2,
        hang_seconds=5,
        request_observer=observed,
    )
    return await aiohttp_server(app)


def sandbox_connector(server: Any, **overrides: Any) -> dict[str, Any]:
    """A ``[connectors.sandbox]`` section pointing at ``server``."""
    return {
        "base_url": str(server.make_url("")).rstrip("/"),
        "test_mode": True,
        "credentials": {"api_key": SANDBOX_API_KEY, "webhook_secret": SANDBOX_WEBHOOK_SECRET},
        "deadline_seconds": 2.0,
        **overrides,
    }


async def refund_with_answer(
    gw: Gateway, payment_id: str, value: int, answer: Any, *, connector: str = "sandbox"
) -> Any:
    """A refund of ``value`` requested on the payment, its attempt recorded with ``answer``
    (``PaymentResult.unknown()``: lost; succeeded + pending: accepted as pending), as if it
    had been sent; the attempt."""
    from normalization import Money

    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, payment_id)
    amount = Money.of(value, record.amount.currency)
    refund = await store.add_refund(record, amount)
    attempt = await store.start_attempt(
        record, connector, "refund", amount=amount, refund_id=refund.id
    )
    return await store.finish_attempt(attempt, answer)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """Both stores, for the tests that ask: None (the gateway's own SQLite file), then a scratch
    PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    async with postgres_schema(request.getfixturevalue("postgres_dsn")) as url:
        yield url
