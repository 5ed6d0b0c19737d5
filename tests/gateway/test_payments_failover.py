"""Failover and breaker-open refusals through the real gateway, OpenBao and sandbox simulator.

- The CVC held for a token survives failover: a first connector that revealed the card and was
  then refused at connect time must not leave the backup without it (one reveal per
  authorization, audited once), and it is still consumed, so a later payment never gets it.
- Every candidate's breaker open: a fast 503 ``connector_unavailable`` with ``Retry-After``
  that writes no payment and no attempt, and that is not stored for its Idempotency-Key (a
  retry runs again, and succeeds once the connector is back).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from vault.audit import AuditAction

from .conftest import (
    SANDBOX_API_KEY,
    SANDBOX_WEBHOOK_SECRET,
    Gateway,
    MakeGateway,
    Observed,
    sandbox_connector,
)

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


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


async def test_a_payment_reads_its_token_once(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    """The token record read to route the payment is the one the egress reveal decrypts: one
    read of the token store, one audited reveal, and the provider gets the card and its CVC."""
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(observed_sandbox)})
    token = await _tokenize(gw)
    store = gw.resources.token_store
    reads: list[str] = []
    real_get = store.get

    async def counted_get(tenant: str, token_id: str) -> Any:
        reads.append(token_id)
        return await real_get(tenant, token_id)

    store.get = counted_get  # type: ignore[method-assign]
    status, pay, _ = await _pay(gw, token)
    assert status == 201 and pay["status"] == "authorized", pay
    assert reads == [token]
    [sent] = observed.authorizations()
    assert sent["card"]["number"] == CARD["number"] and sent["card"].get("cvc") == "123"
    assert await _reveals(gw, token) == ["egress:sandbox:authorize"]


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


async def test_breaker_open_is_refused_before_anything_is_written(
    make_gateway: MakeGateway, aiohttp_server: Any, observed: Observed
) -> None:
    from gateway.simulators import load_simulator
    from tests.conftest import free_port

    port = free_port()  # nothing listens there yet: the provider is down
    gw = await make_gateway(
        connectors={
            "sandbox": sandbox_connector(
                _server_at(port),
                base_url=f"http://127.0.0.1:{port}",
                breaker_fail_max=1,
                breaker_reset_seconds=60,
                retry_attempts=1,
            )
        },
    )
    token = await _tokenize(gw)
    # The first payment trips the breaker (connection refused: nothing was sent, so a 503 the
    # key may retry, its payment failed).
    status, problem, _ = await _pay(gw, token, key="trip")
    assert status == 503 and problem["code"] == "connector_unavailable", problem
    runtime = gw.resources.pool.runtime("sandbox")
    assert runtime.breaker.state == "open"
    payments, attempts = await _rows(gw, "payments"), await _rows(gw, "payment_attempts")
    reveals = len(await _reveals(gw, token))

    status, problem, headers = await _pay(gw, token, key="while-open")
    assert status == 503, problem
    assert problem["code"] == "connector_unavailable"
    assert float(headers["Retry-After"]) > 0
    # Nothing written for it: no payment, no attempt, no reveal; no request left the gateway.
    assert await _rows(gw, "payments") == payments
    assert await _rows(gw, "payment_attempts") == attempts
    assert len(await _reveals(gw, token)) == reveals
    assert observed.bodies == []

    # Not stored for its key: the retry runs again (no replay) ...
    status, problem, headers = await _pay(gw, token, key="while-open")
    assert status == 503 and problem["code"] == "connector_unavailable"
    assert headers.get("Idempotent-Replayed") != "true"
    # ... and once the connector is back, the same key authorizes.
    app = load_simulator("sandbox")(
        api_key=SANDBOX_API_KEY, webhook_secret=SANDBOX_WEBHOOK_SECRET, request_observer=observed
    )
    await aiohttp_server(app, port=port)
    runtime.breaker.pybreaker.close()
    status, pay, headers = await _pay(gw, token, key="while-open")
    assert status == 201 and pay["status"] == "authorized", pay
    assert [a["outcome"] for a in pay["attempts"]] == ["succeeded"]
    status, again, headers = await _pay(gw, token, key="while-open")
    assert status == 201 and again == pay and headers.get("Idempotent-Replayed") == "true"


@pytest.mark.usefixtures("backup_connector")
async def test_all_candidates_open_is_one_503_and_one_open_candidate_is_skipped(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed, database_url: str | None
) -> None:
    dead = {"breaker_fail_max": 1, "breaker_reset_seconds": 60, "retry_attempts": 1}
    gw = await make_gateway(
        database_url=database_url,
        connectors={
            "sandbox": sandbox_connector(observed_sandbox, base_url=_dead_url(), **dead),
            "backup": sandbox_connector(observed_sandbox),
        },
        routing={"default": ["sandbox", "backup"]},
    )
    token = await _tokenize(gw)
    status, pay, _ = await _pay(gw, token)  # trips sandbox's breaker, fails over to backup
    assert status == 201 and pay["connector"] == "backup", pay
    assert gw.resources.pool.runtime("sandbox").breaker.state == "open"

    # sandbox open, backup closed: straight to the backup, with the CVC-less token as before.
    status, pay, _ = await _pay(gw, token)
    assert status == 201 and pay["connector"] == "backup", pay
    assert [(a["connector"], a["outcome"], a["error_code"]) for a in pay["attempts"]] == [
        ("sandbox", "not_sent", "connector_unavailable"),
        ("backup", "succeeded", None),
    ]
    resp = await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)
    assert await resp.json() == pay  # the answer is what is stored

    # Both open: one 503, nothing written.
    gw.resources.pool.runtime("backup").breaker.pybreaker.open()
    payments = await _rows(gw, "payments")
    status, problem, headers = await _pay(gw, token, key="both-open")
    assert status == 503 and problem["code"] == "connector_unavailable", problem
    assert float(headers["Retry-After"]) > 0
    assert await _rows(gw, "payments") == payments


@pytest.mark.usefixtures("backup_connector")
async def test_failover_onto_an_open_breaker_fails_the_payment_and_the_key_retries(
    make_gateway: MakeGateway, observed_sandbox: Any, database_url: str | None
) -> None:
    """The first connector refuses the connection (its breaker still closed), the backup's
    breaker is open: 503, and the payment is settled ``failed``, not left ``pending`` for good
    (whose retry with the key was then a stored 201 ``pending``); the retry runs anew."""
    gw = await make_gateway(
        database_url=database_url,
        connectors={
            "sandbox": sandbox_connector(observed_sandbox, base_url=_dead_url(), retry_attempts=1),
            "backup": sandbox_connector(observed_sandbox),
        },
        routing={"default": ["sandbox", "backup"]},
    )
    token = await _tokenize(gw)
    gw.resources.pool.runtime("backup").breaker.pybreaker.open()
    status, problem, _ = await _pay(gw, token, key="dead-then-open")
    assert status == 503 and problem["code"] == "connector_unavailable", problem
    resp = await gw.client.get("/v1/payments?reference=order-7", headers=gw.auth)
    [first] = (await resp.json())["data"]
    assert first["status"] == "failed", first
    assert [(a["connector"], a["outcome"]) for a in first["attempts"]] == [
        ("sandbox", "not_sent"),
        ("backup", "not_sent"),
    ], first
    gw.resources.pool.runtime("backup").breaker.pybreaker.close()
    status, pay, headers = await _pay(gw, token, key="dead-then-open")
    assert status == 201 and pay["status"] == "authorized" and pay["id"] != first["id"], pay
    assert headers.get("Idempotent-Replayed") != "true"


@pytest.mark.usefixtures("backup_connector")
async def test_a_token_whose_row_is_wrong_is_not_tried_on_the_next_connector(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    """A token row holding another card's ciphertext fails the same way on every connector:
    one attempt, one audited reveal, no failover, and nothing reaches either provider."""
    gw = await make_gateway(
        connectors={
            "sandbox": sandbox_connector(observed_sandbox),
            "backup": sandbox_connector(observed_sandbox),
        },
        routing={"default": ["sandbox", "backup"]},
    )
    token = await _tokenize(gw)
    other = await gw.client.post(
        "/v1/tokens", json={"card": {**CARD, "number": "5555555555554444"}}, headers=gw.auth
    )
    db = gw.resources.db
    swapped = await db.fetchval(
        "SELECT ciphertext FROM vault_tokens WHERE id = $1", (await other.json())["id"]
    )
    await db.execute("UPDATE vault_tokens SET ciphertext = $1 WHERE id = $2", swapped, token)
    status, pay, _ = await _pay(gw, token)
    assert status == 201 and pay["status"] == "failed", pay
    assert [(a["connector"], a["outcome"], a["error_code"]) for a in pay["attempts"]] == [
        ("sandbox", "not_sent", "token_integrity_error")
    ]
    assert len(await _reveals(gw, token)) == 1
    assert observed.authorizations() == []
