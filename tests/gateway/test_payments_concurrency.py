"""One money-moving operation at a time per payment, end to end: the real gateway, real OpenBao,
the sandbox connector's HTTP server, on SQLite and PostgreSQL.

Two requests with *different* idempotency keys are two requests as far as idempotency goes; what
keeps them from both reaching the provider is the payment's operation lock (a unique index over
its open capture/void/refund/complete/submit attempts) and the re-check of the payment's state
under it. An operation whose outcome is unknown keeps the lock until reconciliation settles it,
and refunds still pending count against what may be refunded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from gateway.reconciliation import reconcile_once
from normalization import Money

from .conftest import Gateway, MakeGateway, sandbox_connector

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
CONFLICTS = {"operation_in_progress", "invalid_state_transition", "amount_exceeds_capturable"}


@pytest.fixture
async def gw(make_gateway: MakeGateway, sandbox: Any, database_url: str | None) -> Gateway:
    return await make_gateway(
        database_url=database_url, connectors={"sandbox": sandbox_connector(sandbox)}
    )


async def _post(
    gw: Gateway, path: str, body: Any = None, *, key: str | None = None
) -> tuple[int, Any, Any]:
    headers = dict(gw.auth)
    if key:
        headers["Idempotency-Key"] = key
    resp = await gw.client.post(path, json=body, headers=headers)
    text = await resp.text()
    return resp.status, json.loads(text) if text else None, resp.headers


async def _paid(gw: Gateway, *, capture: bool) -> Any:
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    token = (await resp.json())["id"]
    status, pay, _ = await _post(
        gw,
        "/v1/payments",
        {
            "amount": {"value": 1000, "currency": "EUR"},
            "payment_method": {"type": "card", "token": token},
            "capture": capture,
        },
    )
    assert status == 201 and pay["status"] == ("captured" if capture else "authorized"), pay
    return pay


async def _sandbox_calls(sandbox: Any, suffix: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(sandbox.make_url("/__sandbox/requests")) as resp,
    ):
        requests = (await resp.json())["requests"]
    return sum(1 for r in requests if r["method"] == "POST" and r["path"].endswith(suffix))


async def test_concurrent_captures_with_different_keys_send_one_capture(
    gw: Gateway, sandbox: Any
) -> None:
    pay = await _paid(gw, capture=False)
    results = await asyncio.gather(
        *(_post(gw, f"/v1/payments/{pay['id']}/capture", key=f"cap-{i}") for i in range(6))
    )
    ok = [body for status, body, _ in results if status == 200]
    refused = [body for status, body, _ in results if status != 200]
    assert len(ok) == 1 and ok[0]["status"] == "captured", results
    assert all(b["code"] in CONFLICTS for b in refused), refused
    assert await _sandbox_calls(sandbox, "/captures") == 1
    resp = await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)
    after = await resp.json()
    assert after["captured"]["value"] == 1000
    assert [a["operation"] for a in after["attempts"]] == ["authorize", "capture"]


async def test_concurrent_full_refunds_refund_once(gw: Gateway, sandbox: Any) -> None:
    pay = await _paid(gw, capture=True)
    results = await asyncio.gather(
        *(_post(gw, f"/v1/payments/{pay['id']}/refunds", key=f"ref-{i}") for i in range(6))
    )
    created = [body for status, body, _ in results if status == 201]
    refused = [body for status, body, _ in results if status != 201]
    assert len(created) == 1, results
    assert {b["code"] for b in refused} <= {
        "operation_in_progress",
        "invalid_state_transition",
        "amount_exceeds_refundable",
    }, refused
    assert await _sandbox_calls(sandbox, "/refunds") == 1
    refunds = await gw.resources.payment_store.refunds(pay["id"])
    assert [r.amount.value for r in refunds] == [1000]  # refused ones left no refund behind


async def test_operation_with_unknown_outcome_blocks_the_next_until_reconciled(
    gw: Gateway, sandbox: Any
) -> None:
    """A process killed mid-capture leaves its attempt open: a void now could cancel a capture
    the provider made. It is refused (409, Retry-After, nothing sent) until reconciliation has
    asked the provider; then it runs."""
    pay = await _paid(gw, capture=False)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    await store.start_attempt(record, "sandbox", "capture", amount=Money.of(1000, "EUR"))

    status, problem, headers = await _post(gw, f"/v1/payments/{pay['id']}/void", key="void-1")
    assert status == 409 and problem["code"] == "operation_in_progress", problem
    assert "capture" in problem["detail"] and headers["Retry-After"] == "1"
    assert await _sandbox_calls(sandbox, "/voids") == 0

    await gw.resources.db.execute("UPDATE payment_attempts SET next_reconcile_at = 0")
    await reconcile_once(store, gw.resources.payments)
    # The same key runs now: the refusal was not stored as the key's answer.
    status, voided, _ = await _post(gw, f"/v1/payments/{pay['id']}/void", key="void-1")
    assert status == 200 and voided["status"] == "voided", voided
    assert await _sandbox_calls(sandbox, "/voids") == 1


async def test_refunds_still_pending_are_not_refundable_twice(gw: Gateway, sandbox: Any) -> None:
    pay = await _paid(gw, capture=True)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    await store.add_refund(record, Money.of(700, "EUR"))  # requested, provider said "pending"

    path = f"/v1/payments/{pay['id']}/refunds"
    status, problem, _ = await _post(gw, path, {"amount": {"value": 301, "currency": "EUR"}})
    assert status == 409 and problem["code"] == "amount_exceeds_refundable", problem
    assert "700" in problem["detail"]
    status, refunded, _ = await _post(gw, path)  # no amount: what is left, 300
    assert status == 201, refunded
    assert [r.amount.value for r in await store.refunds(pay["id"])] == [700, 300]
    assert await _sandbox_calls(sandbox, "/refunds") == 1
