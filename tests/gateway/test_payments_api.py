"""Payments end to end: real gateway, real OpenBao, the sandbox connector's real HTTP server.

Covers the lifecycle, declines, 3-D Secure, idempotency (RELIABILITY 5-8), deadlines and outcome
certainty (12, 14), failover only before sending, reconciliation and provider webhooks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from .conftest import Gateway, MakeGateway, sandbox_connector

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


async def _tokenize(gw: Gateway, number: str = "4242424242424242") -> str:
    resp = await gw.client.post(
        "/v1/tokens", json={"card": {**CARD, "number": number}}, headers=gw.auth
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _post(
    gw: Gateway, path: str, body: Any = None, *, key: str | None = None
) -> tuple[int, Any]:
    headers = dict(gw.auth)
    if key:
        headers["Idempotency-Key"] = key
    resp = (
        await gw.client.post(path, json=body, headers=headers)
        if body is not None
        else (await gw.client.post(path, headers=headers))
    )
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


def _payment(token: str, value: int = 1050, currency: str = "EUR", **extra: Any) -> dict[str, Any]:
    return {
        "amount": {"value": value, "currency": currency},
        "payment_method": {"type": "card", "token": token},
        "reference": "order-42",
        **extra,
    }


async def _charges(sandbox: Any) -> dict[str, Any]:
    resp = await sandbox_client_get(sandbox, "/__sandbox/charges")
    return resp


async def sandbox_client_get(sandbox: Any, path: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(sandbox.make_url(path)) as resp:
        return await resp.json()


@pytest.fixture
async def gw(make_gateway: MakeGateway, sandbox: Any) -> Gateway:
    return await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})


async def test_every_refund_is_in_the_audit_log(gw: Gateway) -> None:
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token, 1000, capture=True))
    assert status == 201 and pay["status"] == "captured", pay
    status, refunded = await _post(
        gw, f"/v1/payments/{pay['id']}/refunds", {"amount": {"value": 300, "currency": "EUR"}}
    )
    assert status == 201, refunded
    audit = gw.resources.audit
    [entry] = [e for e in await audit.entries() if e.action == "payment.refund"]
    assert entry.actor == f"merchant:{gw.merchant.id}" and entry.tenant == gw.merchant.id
    assert entry.target == pay["id"] and entry.purpose == "refund"
    assert entry.detail == f"{refunded['refunds'][0]['id']} 300 EUR"
    assert (await audit.verify()).ok


async def test_full_lifecycle_authorize_capture_refund(gw: Gateway, sandbox: Any) -> None:
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token, 1000))
    assert status == 201, pay
    assert pay["status"] == "authorized" and pay["connector"] == "sandbox"
    assert pay["amount"] == {"value": 1000, "currency": "EUR"}
    assert pay["captured"]["value"] == 0 and pay["provider_reference"]
    assert [a["outcome"] for a in pay["attempts"]] == ["succeeded"]
    pid = pay["id"]

    status, pay = await _post(
        gw, f"/v1/payments/{pid}/capture", {"amount": {"value": 400, "currency": "EUR"}}
    )
    assert status == 200, pay
    assert pay["status"] == "partially_captured" and pay["captured"]["value"] == 400
    status, pay = await _post(gw, f"/v1/payments/{pid}/capture")
    assert status == 200, pay
    assert pay["status"] == "captured" and pay["captured"]["value"] == 1000

    status, pay = await _post(
        gw, f"/v1/payments/{pid}/refunds", {"amount": {"value": 300, "currency": "EUR"}}
    )
    assert status == 201, pay
    assert pay["status"] == "partially_refunded" and pay["refunded"]["value"] == 300
    status, pay = await _post(gw, f"/v1/payments/{pid}/refunds")
    assert status == 201, pay
    assert pay["status"] == "refunded" and pay["refunded"]["value"] == 1000
    assert [r["status"] for r in pay["refunds"]] == ["succeeded", "succeeded"]

    status, problem = await _post(
        gw, f"/v1/payments/{pid}/refunds", {"amount": {"value": 1, "currency": "EUR"}}
    )
    assert status == 409 and problem["code"] in (
        "invalid_state_transition",
        "amount_exceeds_refundable",
    )

    resp = await gw.client.get(f"/v1/payments/{pid}", headers=gw.auth)
    fetched = await resp.json()
    assert fetched["status"] == "refunded"
    assert [a["operation"] for a in fetched["attempts"]] == [
        "authorize",
        "capture",
        "capture",
        "refund",
        "refund",
    ]
    resp = await gw.client.get("/v1/payments", params={"reference": "order-42"}, headers=gw.auth)
    assert [p["id"] for p in (await resp.json())["data"]] == [pid]


async def test_purchase_and_void(gw: Gateway) -> None:
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token, capture=True))
    assert status == 201 and pay["status"] == "captured" and pay["captured"]["value"] == 1050
    status, pay2 = await _post(gw, "/v1/payments", _payment(token))
    status, voided = await _post(gw, f"/v1/payments/{pay2['id']}/void")
    assert status == 200 and voided["status"] == "voided"
    status, problem = await _post(gw, f"/v1/payments/{pay2['id']}/capture")
    assert status == 409 and problem["code"] == "invalid_state_transition"


async def test_capture_over_authorized_is_refused_before_any_call(
    gw: Gateway, sandbox: Any
) -> None:
    token = await _tokenize(gw)
    _, pay = await _post(gw, "/v1/payments", _payment(token, 500))
    before = len((await sandbox_client_get(sandbox, "/__sandbox/requests"))["requests"])
    status, problem = await _post(
        gw, f"/v1/payments/{pay['id']}/capture", {"amount": {"value": 501, "currency": "EUR"}}
    )
    assert status == 409 and problem["code"] == "amount_exceeds_capturable"
    assert len((await sandbox_client_get(sandbox, "/__sandbox/requests"))["requests"]) == before


@pytest.mark.parametrize(
    ("number", "code"),
    [
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000002", "do_not_honor"),
        ("4000000000000069", "expired_card"),
        ("4000000000000127", "incorrect_cvc"),
        ("4100000000000019", "fraud_suspected"),
        ("4000000000009987", "lost_or_stolen"),
        ("4000000000000143", "card_not_supported"),
        ("4000000000000150", "limit_exceeded"),
        ("4000000000000168", "authentication_required"),
    ],
)
async def test_declines_are_values_with_normalized_codes(
    gw: Gateway, number: str, code: str
) -> None:
    token = await _tokenize(gw, number)
    status, pay = await _post(gw, "/v1/payments", _payment(token))
    assert status == 201, pay
    assert pay["status"] == "declined"
    assert pay["decline"]["code"] == code and pay["decline"]["provider_code"]
    assert pay["attempts"][0]["outcome"] == "declined"
    assert number not in json.dumps(pay)
    # The merchant client reads every attempt field the gateway sends (error_code was dropped).
    from gateway.client import Payment

    [attempt] = Payment.model_validate(pay).attempts
    assert attempt.error_code == code and attempt.amount is not None
    assert attempt.started_at is not None and attempt.finished_at is not None


async def test_3ds_redirect_then_complete(gw: Gateway, sandbox: Any) -> None:
    import aiohttp

    token = await _tokenize(gw, "4000000000003220")
    status, pay = await _post(
        gw, "/v1/payments", _payment(token, return_url="https://shop.example/back")
    )
    assert status == 201, pay
    assert pay["status"] == "requires_action"
    url = pay["next_action"]["url"]
    assert pay["next_action"]["type"] == "redirect" and url.startswith("http")
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url, data={"outcome": "authenticated"}, allow_redirects=False)
        assert resp.status in (302, 303)
    status, pay = await _post(gw, f"/v1/payments/{pay['id']}/complete", {"parameters": {}})
    assert status == 200, pay
    assert pay["status"] == "authorized"


async def test_pending_settles_through_sync(gw: Gateway) -> None:
    token = await _tokenize(gw, "4000000000000200")
    status, pay = await _post(gw, "/v1/payments", _payment(token))
    assert status == 201 and pay["status"] == "pending", pay
    deadline = time.monotonic() + 5
    while pay["status"] == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status, pay = await _post(gw, f"/v1/payments/{pay['id']}/sync")
    assert pay["status"] == "authorized"


async def test_same_key_same_body_replays_and_charges_once(gw: Gateway, sandbox: Any) -> None:
    token = await _tokenize(gw)
    body = _payment(token)
    s1, first = await _post(gw, "/v1/payments", body, key="order-42-try")
    s2, second = await _post(gw, "/v1/payments", body, key="order-42-try")
    assert (s1, s2) == (201, 201) and first == second
    charges = (await sandbox_client_get(sandbox, "/__sandbox/charges"))["charges"]
    assert len(charges) == 1

    status, problem = await _post(gw, "/v1/payments", _payment(token, 999), key="order-42-try")
    assert status == 422 and problem["code"] == "idempotency_key_reused"
    assert len((await sandbox_client_get(sandbox, "/__sandbox/charges"))["charges"]) == 1


async def test_concurrent_requests_with_one_key_make_one_charge(gw: Gateway, sandbox: Any) -> None:
    token = await _tokenize(gw)
    body = _payment(token)
    results = await asyncio.gather(
        *(_post(gw, "/v1/payments", body, key="same-key-50") for _ in range(50))
    )
    statuses = sorted({s for s, _ in results})
    assert set(statuses) <= {201, 409}, statuses
    ids = {b["id"] for s, b in results if s == 201}
    assert len(ids) == 1
    assert len((await sandbox_client_get(sandbox, "/__sandbox/charges"))["charges"]) == 1


async def test_keys_are_scoped_per_merchant(gw: Gateway, sandbox: Any) -> None:
    _, other_key = await gw.add_merchant()
    other = Gateway(gw.client, gw.merchant, other_key, gw.settings)
    t1, t2 = await _tokenize(gw), await _tokenize(other)
    s1, p1 = await _post(gw, "/v1/payments", _payment(t1), key="shared")
    s2, p2 = await _post(other, "/v1/payments", _payment(t2), key="shared")
    assert (s1, s2) == (201, 201) and p1["id"] != p2["id"]
    resp = await gw.client.get(f"/v1/payments/{p2['id']}", headers=gw.auth)
    assert resp.status == 404


async def test_provider_slower_than_deadline_is_unknown_and_not_retried(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    gw = await make_gateway(
        connectors={"sandbox": sandbox_connector(sandbox, deadline_seconds=0.5)}
    )
    token = await _tokenize(gw)
    started = time.monotonic()
    status, pay = await _post(gw, "/v1/payments", _payment(token, 99408))
    elapsed = time.monotonic() - started
    assert status == 201, pay
    assert pay["status"] == "unknown" and pay["attempts"][0]["outcome"] == "unknown"
    # The deadline plus the gateway's own bookkeeping, with room for a loaded CI machine; the
    # sandbox would hold its reply for 600 s.
    assert elapsed < 2.5
    requests = (await sandbox_client_get(sandbox, "/__sandbox/requests"))["requests"]
    assert sum(1 for r in requests if r["path"] == "/v1/authorizations") == 1


async def test_reset_after_send_is_retried_with_the_same_key_and_charges_once(
    gw: Gateway, sandbox: Any
) -> None:
    """Authorize is declared retry-safe (the sandbox honours idempotency keys): the runtime
    re-sends the same key after the reset and the provider answers with the first result."""
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token, 99105))
    assert status == 201 and pay["status"] == "authorized", pay
    assert len((await sandbox_client_get(sandbox, "/__sandbox/charges"))["charges"]) == 1


async def test_reset_after_send_is_unknown_then_reconciled_with_the_same_key(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox, retry_attempts=1)})
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token, 99105))
    assert status == 201 and pay["status"] == "unknown", pay
    from gateway.reconciliation import reconcile_once

    resources = gw.resources
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await resources.db.execute("UPDATE payment_attempts SET next_reconcile_at = 0")
        await reconcile_once(resources.payment_store, resources.payments)
        resp = await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)
        pay = await resp.json()
        if pay["status"] != "unknown":
            break
        await asyncio.sleep(0.05)
    assert pay["status"] == "authorized"
    charges = (await sandbox_client_get(sandbox, "/__sandbox/charges"))["charges"]
    assert len(charges) == 1


async def test_failover_only_when_nothing_was_sent(make_gateway: MakeGateway, sandbox: Any) -> None:
    from sdk import register_connector, unregister_connector
    from sdk.registry import load_connectors
    from tests.conftest import free_port

    base = load_connectors()["sandbox"]
    backup = type(
        "BackupSandbox",
        (base,),
        {"manifest": base.manifest.model_copy(update={"id": "backup", "display_name": "Backup"})},
    )
    register_connector(backup)
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        gw = await make_gateway(
            connectors={
                "sandbox": sandbox_connector(sandbox, base_url=dead),
                "backup": sandbox_connector(sandbox),
            },
            routing={"default": ["sandbox", "backup"]},
        )
        token = await _tokenize(gw)
        status, pay = await _post(gw, "/v1/payments", _payment(token))
        assert status == 201, pay
        assert pay["status"] == "authorized" and pay["connector"] == "backup"
        assert [(a["connector"], a["outcome"]) for a in pay["attempts"]] == [
            ("sandbox", "not_sent"),
            ("backup", "succeeded"),
        ]

        gw2 = await make_gateway(
            connectors={
                "sandbox": sandbox_connector(sandbox),
                "backup": sandbox_connector(sandbox),
            },
            routing={"default": ["sandbox", "backup"]},
        )
        token2 = await _tokenize(gw2)
        status, pay = await _post(gw2, "/v1/payments", _payment(token2, 99104))
        assert status == 201 and pay["status"] == "unknown"
        assert [a["connector"] for a in pay["attempts"]] == ["sandbox"]
    finally:
        unregister_connector("backup")


async def test_an_unknown_connector_is_refused_without_echoing_it(
    gw: Gateway, sandbox: Any
) -> None:
    """Whatever the merchant put in ``connector`` (here a card number) is not echoed back."""
    token = await _tokenize(gw)
    pan = "4242424242424242"
    status, problem = await _post(gw, "/v1/payments", _payment(token, connector=f"x{pan}"))
    assert status == 422 and problem["code"] == "not_supported", problem
    assert pan not in json.dumps(problem) and "not available" in problem["detail"], problem


async def test_unsupported_currency_is_refused_before_any_call(gw: Gateway, sandbox: Any) -> None:
    token = await _tokenize(gw)
    status, problem = await _post(gw, "/v1/payments", _payment(token, 100, "XOF"))
    assert status == 422 and problem["code"] == "not_supported", problem
    assert (await sandbox_client_get(sandbox, "/__sandbox/charges"))["charges"] == []


async def test_inline_card_is_tokenized_on_the_fly(gw: Gateway) -> None:
    body = {
        "amount": {"value": 500, "currency": "EUR"},
        "payment_method": {"type": "card", "card": CARD},
    }
    status, pay = await _post(gw, "/v1/payments", body)
    assert status == 201, pay
    assert pay["status"] == "authorized"
    assert pay["payment_method"]["token"].startswith("tok_")
    assert pay["payment_method"]["last4"] == "4242"
    assert CARD["number"] not in json.dumps(pay)


async def test_zero_decimal_and_three_decimal_amounts_round_trip(gw: Gateway) -> None:
    token = await _tokenize(gw)
    for value, currency in ((1050, "JPY"), (1234, "KWD")):
        status, pay = await _post(gw, "/v1/payments", _payment(token, value, currency))
        assert status == 201, pay
        assert pay["amount"] == {"value": value, "currency": currency}
        assert pay["status"] == "authorized"


async def test_unknown_payment_is_404(gw: Gateway) -> None:
    resp = await gw.client.get("/v1/payments/pay_doesnotexist", headers=gw.auth)
    assert resp.status == 404
    assert (await resp.json())["code"] == "payment_not_found"


@pytest.mark.parametrize("operation", ["capture", "refunds"])
async def test_a_follow_up_the_provider_did_not_take_is_503_and_changes_nothing(
    make_gateway: MakeGateway, sandbox: Any, operation: str
) -> None:
    """The provider throttles (429) until the retries run out: nothing was done, so the
    merchant gets 503 ``connector_unavailable`` with ``Retry-After``, not the unchanged payment
    with a 200 that reads as a capture; the answer is not stored under the key, so a retry
    runs again."""
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox, retry_attempts=1)})
    token = await _tokenize(gw)
    status, pay = await _post(
        gw, "/v1/payments", _payment(token, 300_000, capture=operation == "refunds")
    )
    assert status == 201, pay
    path = f"/v1/payments/{pay['id']}/{operation}"
    headers = {**gw.auth, "Idempotency-Key": f"throttled-{operation}"}
    for _ in range(2):
        resp = await gw.client.post(
            path, json={"amount": {"value": 99429, "currency": "EUR"}}, headers=headers
        )
        problem = await resp.json()
        assert resp.status == 503 and problem["code"] == "connector_unavailable", problem
        assert float(resp.headers["Retry-After"]) >= 1
        assert resp.headers.get("Idempotent-Replayed") != "true"
    after = await (await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)).json()
    assert (after["status"], after["captured"]["value"], after["refunded"]["value"]) == (
        pay["status"],
        pay["captured"]["value"],
        0,
    ), after
    sent = [a for a in after["attempts"] if a["operation"] != "authorize"]
    assert [(a["outcome"], a["error_code"]) for a in sent] == [
        ("not_sent", "connector_unavailable")
    ] * 2, after
    if operation == "refunds":
        assert [r["status"] for r in after["refunds"]] == ["failed", "failed"], after


async def test_a_payment_the_provider_did_not_take_is_503_and_the_key_retries(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    """The provider throttles (429) the authorization until the retries run out: nothing was
    done, so 503 ``connector_unavailable`` with ``Retry-After`` and nothing stored under the
    key (it was a stored 201 ``failed`` with no reason, which every retry replayed)."""
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox, retry_attempts=1)})
    token = await _tokenize(gw)
    headers = {**gw.auth, "Idempotency-Key": "throttled-create"}
    body = _payment(token, 99429, reference="throttled")
    for _ in range(2):
        resp = await gw.client.post("/v1/payments", json=body, headers=headers)
        problem = await resp.json()
        assert resp.status == 503 and problem["code"] == "connector_unavailable", problem
        assert float(resp.headers["Retry-After"]) >= 1
        assert resp.headers.get("Idempotent-Replayed") != "true"
    listed = await gw.client.get("/v1/payments?reference=throttled", headers=gw.auth)
    runs = (await listed.json())["data"]
    assert [p["status"] for p in runs] == ["failed", "failed"], runs
    assert all(
        [(a["outcome"], a["error_code"]) for a in p["attempts"]]
        == [("not_sent", "connector_unavailable")]
        for p in runs
    ), runs


async def test_a_zero_amount_is_refused_before_anything_is_written(gw: Gateway) -> None:
    """422 ``invalid_amount`` with nothing left behind (it left a ``pending`` payment, which
    the same key then resumed into a 201)."""
    token = await _tokenize(gw)
    body = _payment(token, 0, reference="zero-amount")
    for _ in range(2):
        status, problem = await _post(gw, "/v1/payments", body, key="zero-amount")
        assert status == 422 and problem["code"] == "invalid_amount", problem
    resp = await gw.client.get("/v1/payments?reference=zero-amount", headers=gw.auth)
    assert (await resp.json())["data"] == []
    status, pay = await _post(gw, "/v1/payments", _payment(token))
    for path in ("capture", "refunds"):
        status, problem = await _post(
            gw, f"/v1/payments/{pay['id']}/{path}", {"amount": {"value": 0, "currency": "EUR"}}
        )
        assert status == 422 and problem["code"] == "invalid_amount", problem


async def test_a_refused_operation_is_replayed_for_its_key(gw: Gateway) -> None:
    """A refund the payment's state refuses (409) is that request's answer: retried with the
    same key after the payment changed, it is replayed, not run (Stripe's semantics)."""
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token))
    refunds, body = (
        f"/v1/payments/{pay['id']}/refunds",
        {"amount": {"value": 100, "currency": "EUR"}},
    )
    status, first = await _post(gw, refunds, body, key="refund-early")
    assert status == 409 and first["code"] == "invalid_state_transition", first
    status, captured = await _post(gw, f"/v1/payments/{pay['id']}/capture")
    assert status == 200 and captured["status"] == "captured", captured
    resp = await gw.client.post(
        refunds, json=body, headers={**gw.auth, "Idempotency-Key": "refund-early"}
    )
    assert resp.status == 409 and resp.headers.get("Idempotent-Replayed") == "true"
    assert await resp.json() == first
    status, after = await _post(gw, refunds, body, key="refund-later")  # a new request runs
    assert status == 201 and after["refunded"]["value"] == 100, after


async def test_complete_after_the_payment_moved_on_returns_it(gw: Gateway) -> None:
    """The provider's webhook (here: a sync) settled the 3-D Secure payment before the
    customer came back: ``complete`` returns the payment, not a 409."""
    import aiohttp

    token = await _tokenize(gw, "4000000000003220")
    status, pay = await _post(
        gw, "/v1/payments", _payment(token, return_url="https://shop.example/back")
    )
    async with aiohttp.ClientSession() as session:
        await session.post(
            pay["next_action"]["url"], data={"outcome": "authenticated"}, allow_redirects=False
        )
    status, synced = await _post(gw, f"/v1/payments/{pay['id']}/sync")
    assert status == 200 and synced["status"] == "authorized", synced
    status, completed = await _post(gw, f"/v1/payments/{pay['id']}/complete", {"parameters": {}})
    assert status == 200 and completed["status"] == "authorized", completed
    assert [a["operation"] for a in completed["attempts"]] == ["authorize", "sync"], completed
    # A refund whose answer was lost is not the authorization's: still 200, not 202.
    from normalization import PaymentResult

    from .conftest import refund_with_answer

    status, _ = await _post(gw, f"/v1/payments/{pay['id']}/capture")
    await refund_with_answer(gw, pay["id"], 100, PaymentResult.unknown())
    status, again = await _post(gw, f"/v1/payments/{pay['id']}/complete", {"parameters": {}})
    assert status == 200 and again["status"] == "captured", again
    # A payment that never asked for a redirect still cannot be completed.
    status, plain = await _post(gw, "/v1/payments", _payment(await _tokenize(gw)))
    status, problem = await _post(gw, f"/v1/payments/{plain['id']}/complete", {"parameters": {}})
    assert status == 409 and problem["code"] == "invalid_state_transition", problem


async def test_sync_settles_an_authorization_whose_answer_was_lost(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    """No provider reference came back (reset after sending): the merchant's sync asks the
    provider by payment id at once, as the reconciler would later, and charges nothing."""
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox, retry_attempts=1)})
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token, 99105))
    assert status == 201 and pay["status"] == "unknown" and pay["provider_reference"] is None
    status, synced = await _post(gw, f"/v1/payments/{pay['id']}/sync")
    assert status == 200 and synced["status"] == "authorized", synced
    assert synced["attempts"][0]["outcome"] == "succeeded", synced
    assert len((await sandbox_client_get(sandbox, "/__sandbox/charges"))["charges"]) == 1


async def test_notifications_carry_the_payment_as_the_api_shows_it(gw: Gateway) -> None:
    # captured/refunded were bare integers in notifications, {value, currency} in the API.
    token = await _tokenize(gw)
    status, pay = await _post(gw, "/v1/payments", _payment(token, 1000, capture=True))
    assert status == 201 and pay["status"] == "captured", pay
    status, _ = await _post(
        gw, f"/v1/payments/{pay['id']}/refunds", {"amount": {"value": 300, "currency": "EUR"}}
    )
    assert status == 201
    resp = await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)
    view = await resp.json()
    rows = await gw.resources.db.fetchall(
        "SELECT event_type, body FROM merchant_notifications WHERE merchant_id = $1 "
        "ORDER BY created_at",
        gw.merchant.id,
    )
    bodies = {row["event_type"]: json.loads(row["body"])["data"] for row in rows}
    assert set(bodies) == {"payment.captured", "payment.partially_refunded"}
    refunded = bodies["payment.partially_refunded"]
    for name in ("id", "status", "amount", "captured", "refunded", "connector", "reference"):
        assert refunded[name] == view[name], name
    assert refunded["refunded"] == {"value": 300, "currency": "EUR"}
    assert bodies["payment.captured"]["captured"] == {"value": 1000, "currency": "EUR"}
    assert bodies["payment.captured"]["refunded"] == {"value": 0, "currency": "EUR"}
