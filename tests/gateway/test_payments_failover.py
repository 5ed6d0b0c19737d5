"""Failover and breaker-open refusals through the real gateway, OpenBao and sandbox simulator.

- The CVC held for a token survives failover: a first connector that revealed the card and was
  then refused at connect time must not leave the backup without it (one reveal per
  authorization, audited once), and it is still consumed, so a later payment never gets it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from vault.audit import AuditAction

from .conftest import (
    SANDBOX_API_KEY,
    SANDBOX_WEBHOOK_SECRET,
    Gateway,
    MakeGateway,
    sandbox_connector,
)

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


class Observed:
    """What the simulator received: the body of every API POST, by path."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, method: str, path: str, body: bytes) -> None:
        self.bodies.append((path, json.loads(body) if body else {}))

    def authorizations(self) -> list[dict[str, Any]]:
        return [body for path, body in self.bodies if path == "/v1/authorizations"]


@pytest.fixture
def observed() -> Observed:
    return Observed()


@pytest.fixture
async def observed_sandbox(aiohttp_server: Any, observed: Observed) -> Any:
    from gateway.simulators import load_simulator

    app = load_simulator("sandbox")(
        api_key=SANDBOX_API_KEY,
        webhook_secret=SANDBOX_WEBHOOK_SECRET,
        settle_delay=0.2,
        hang_seconds=5,
        request_observer=observed,
    )
    return await aiohttp_server(app)


@pytest.fixture
def backup_connector() -> Iterator[None]:
    """A second connector id: a copy of the sandbox connector registered as ``backup``."""
    from sdk import register_connector, unregister_connector
    from sdk.registry import load_connectors

    base = load_connectors()["sandbox"]
    backup = type(
        "BackupSandbox",
        (base,),
        {"manifest": base.manifest.model_copy(update={"id": "backup", "display_name": "Backup"})},
    )
    register_connector(backup)
    try:
        yield
    finally:
        unregister_connector("backup")


def _server_at(port: int) -> Any:
    """Stands in for a server in ``sandbox_connector`` (only its URL is read)."""

    class _At:
        def make_url(self, path: str) -> str:
            return f"http://127.0.0.1:{port}{path}"

    return _At()


def _dead_url() -> str:
    from tests.conftest import free_port

    return f"http://127.0.0.1:{free_port()}"


async def _tokenize(gw: Gateway) -> str:
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _pay(gw: Gateway, token: str, *, key: str | None = None) -> tuple[int, Any, Any]:
    headers = dict(gw.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {
        "amount": {"value": 1050, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token},
        "reference": "order-7",
    }
    resp = await gw.client.post("/v1/payments", json=body, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def _reveals(gw: Gateway, token: str) -> list[str | None]:
    entries = await gw.resources.audit.entries()
    return [
        e.purpose for e in entries if e.action == AuditAction.TOKEN_REVEAL and e.target == token
    ]


async def _rows(gw: Gateway, table: str) -> int:
    return int(await gw.resources.db.fetchval(f"SELECT COUNT(*) FROM {table}"))  # noqa: S608


@pytest.mark.usefixtures("backup_connector")
async def test_backup_gets_the_cvc_after_the_first_connector_was_refused(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    """Primary dead (connection refused, breaker still closed), backup live: the backup's
    authorization carries the CVC; the card was revealed once; a later payment has no CVC."""
    gw = await make_gateway(
        connectors={
            "sandbox": sandbox_connector(observed_sandbox, base_url=_dead_url(), retry_attempts=1),
            "backup": sandbox_connector(observed_sandbox),
        },
        routing={"default": ["sandbox", "backup"]},
    )
    token = await _tokenize(gw)
    status, pay, _ = await _pay(gw, token)
    assert status == 201, pay
    assert pay["status"] == "authorized" and pay["connector"] == "backup"
    assert [(a["connector"], a["outcome"]) for a in pay["attempts"]] == [
        ("sandbox", "not_sent"),
        ("backup", "succeeded"),
    ]
    [sent] = observed.authorizations()
    assert sent["card"].get("cvc") == "123", "the backup authorized without the CVC"
    # One reveal for the whole authorization, audited once (by the candidate that made it).
    assert await _reveals(gw, token) == ["egress:sandbox:authorize"]

    # The CVC was consumed: the next payment with the same token goes without it.
    status, pay, _ = await _pay(gw, token)
    assert status == 201 and pay["status"] == "authorized", pay
    assert observed.authorizations()[1]["card"].get("cvc") is None
    assert len(await _reveals(gw, token)) == 2
