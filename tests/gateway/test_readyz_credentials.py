"""``/readyz`` is not ready when Vault refuses the gateway's credentials, and stays cheap.

Before, ``/readyz`` looked at ``sys/health`` only: a revoked token or secret id left it at 200
while every tokenization answered ``503 vault_permission_denied``. The credentials check
(``VaultClient.check_credentials``) runs at most once per ``CREDENTIALS_CHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import hvac
import pytest

import gateway.views.health as health
from gateway.schemas import Readiness
from tests.conftest import ProvisionedVault

from .conftest import MakeGateway

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}
_INTERVAL = 2.0  # long enough that the revoke below lands inside it on a loaded machine


@pytest.fixture
def root_hvac(provisioned_vault: ProvisionedVault) -> Iterator[hvac.Client]:
    client = hvac.Client(url=provisioned_vault.addr, token=provisioned_vault.root_token)
    yield client
    client.adapter.close()


async def test_revoked_credentials_make_readyz_not_ready_within_the_interval(
    make_gateway: MakeGateway,
    root_hvac: hvac.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "CREDENTIALS_CHECK_SECONDS", _INTERVAL)
    token = root_hvac.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    gw = await make_gateway(root_token=token)
    lookups = 0
    check = gw.resources.vault.check_credentials

    async def counted() -> None:
        nonlocal lookups
        lookups += 1
        await check()

    monkeypatch.setattr(gw.resources.vault, "check_credentials", counted)

    ready = await asyncio.gather(*(gw.client.get("/readyz") for _ in range(5)))
    assert [r.status for r in ready] == [200] * 5
    assert lookups == 1  # concurrent probes share one check

    root_hvac.auth.token.revoke(token)
    cached = await gw.client.get("/readyz")
    assert cached.status == 200  # the last answer holds for the interval
    assert lookups == 1

    await asyncio.sleep(_INTERVAL + 0.1)
    resp = await gw.client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body == {"status": "not_ready", "checks": {"vault": "refused", "database": "ok"}}
    Readiness.model_validate(body)  # the published shape (/openapi.json) allows it
    assert resp.headers["Retry-After"] == "1"
    assert lookups == 2

    denied = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert denied.status == 503
    problem = await denied.json()
    assert problem["code"] == "vault_permission_denied"
    assert problem["detail"].startswith("The token vault refused the gateway's credentials")


async def test_readyz_with_accepted_credentials(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    resp = await gw.client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"status": "ready", "checks": {"vault": "ok", "database": "ok"}}
