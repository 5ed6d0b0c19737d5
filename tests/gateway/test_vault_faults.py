"""Vault faults seen from the API (RELIABILITY 20, 21): clean 503s, nothing stored."""

from __future__ import annotations

import time
from typing import Any

import pytest

from vault.devserver import DevServer
from vault.provisioning import provision

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}


@pytest.fixture
def own_bao(private_openbao: DevServer) -> DevServer:
    """A dev server of this test's own, so stopping or sealing it harms nobody else."""
    provision(private_openbao.addr, private_openbao.root_token)
    return private_openbao


async def _token_rows(gw: Any) -> int:
    return int(await gw.resources.db.fetchval("SELECT count(*) FROM vault_tokens"))


async def test_vault_down_gives_fast_503_with_retry_after_and_stores_nothing(
    make_gateway: Any, own_bao: DevServer
) -> None:
    gw = await make_gateway(vault_addr=own_bao.addr, root_token=own_bao.root_token)
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert resp.status == 201
    before = await _token_rows(gw)

    own_bao.stop()
    started = time.monotonic()
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    elapsed = time.monotonic() - started
    body = await resp.json()
    assert resp.status == 503, body
    assert body["code"] == "vault_unavailable"
    assert int(resp.headers["Retry-After"]) >= 1
    assert elapsed < 1.0
    assert await _token_rows(gw) == before

    resp = await gw.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["vault"] == "unreachable"


async def test_sealed_vault_gives_503_and_not_ready(make_gateway: Any, own_bao: DevServer) -> None:
    gw = await make_gateway(vault_addr=own_bao.addr, root_token=own_bao.root_token)
    own_bao.seal()
    try:
        resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
        body = await resp.json()
        assert resp.status == 503, body
        assert body["code"] == "vault_sealed"
        assert "Retry-After" in resp.headers
        ready = await gw.client.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["vault"] == "sealed"
        assert await _token_rows(gw) == 0
    finally:
        own_bao.unseal()
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert resp.status == 201


async def test_a_payment_while_the_vault_is_sealed_is_503_and_the_key_retries(
    make_gateway: Any, own_bao: DevServer, sandbox: Any
) -> None:
    """The card cannot be revealed: 503 with ``Retry-After``, not a ``failed`` payment stored
    under the key (which the retry after the unseal then replayed)."""
    from .conftest import sandbox_connector

    gw = await make_gateway(
        vault_addr=own_bao.addr,
        root_token=own_bao.root_token,
        connectors={"sandbox": sandbox_connector(sandbox)},
    )
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    token = (await resp.json())["id"]
    body = {
        "amount": {"value": 1000, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token},
    }
    headers = {**gw.auth, "Idempotency-Key": "while-sealed"}
    own_bao.seal()
    try:
        resp = await gw.client.post("/v1/payments", json=body, headers=headers)
        problem = await resp.json()
        assert resp.status == 503 and problem["code"] == "vault_sealed", problem
        assert int(resp.headers["Retry-After"]) >= 1
    finally:
        own_bao.unseal()
    resp = await gw.client.post("/v1/payments", json=body, headers=headers)
    pay = await resp.json()
    assert resp.status == 201 and pay["status"] == "authorized", pay
    assert resp.headers.get("Idempotent-Replayed") != "true"


async def test_a_token_whose_row_holds_another_cards_ciphertext_is_never_charged(
    make_gateway: Any, observed_sandbox: Any, observed: Any
) -> None:
    """Card B's ciphertext copied into token A's row (database write access, no Vault): the
    payment with token A used to charge card B. It fails, its attempt ``not_sent`` with
    ``token_integrity_error``, and nothing reaches the provider."""
    from .conftest import sandbox_connector

    gw = await make_gateway(connectors={"sandbox": sandbox_connector(observed_sandbox)})
    ids = []
    for number in ("4242424242424242", "5555555555554444"):
        resp = await gw.client.post(
            "/v1/tokens", json={"card": {**CARD, "number": number}}, headers=gw.auth
        )
        ids.append((await resp.json())["id"])
    db = gw.resources.db
    other = await db.fetchval("SELECT ciphertext FROM vault_tokens WHERE id = $1", ids[1])
    await db.execute("UPDATE vault_tokens SET ciphertext = $1 WHERE id = $2", other, ids[0])
    body = {
        "amount": {"value": 1000, "currency": "EUR"},
        "payment_method": {"type": "card", "token": ids[0]},
    }
    resp = await gw.client.post("/v1/payments", json=body, headers=gw.auth)
    pay = await resp.json()
    assert resp.status == 201 and pay["status"] == "failed", pay
    [attempt] = pay["attempts"]
    assert (attempt["outcome"], attempt["error_code"]) == ("not_sent", "token_integrity_error")
    assert "5555555555554444" not in str(pay)
    assert observed.authorizations() == []


async def test_a_token_integrity_error_is_a_500_not_a_vault_outage(
    make_gateway: Any, observed_sandbox: Any
) -> None:
    """Wherever it escapes to the API, a stored row that does not describe its card is not
    "the vault is unavailable, retry later": retrying cannot help, so no Retry-After."""
    from normalization import TokenIntegrityError

    from .conftest import sandbox_connector

    gw = await make_gateway(connectors={"sandbox": sandbox_connector(observed_sandbox)})
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    token = (await resp.json())["id"]

    async def wrong_row(tenant: str, token_id: str) -> Any:
        raise TokenIntegrityError()

    gw.resources.tokens.get = wrong_row
    resp = await gw.client.get(f"/v1/tokens/{token}", headers=gw.auth)
    body = await resp.json()
    assert (resp.status, body["code"]) == (500, "token_integrity_error"), body
    assert "Retry-After" not in resp.headers and "unavailable" not in body["detail"]
