"""Bank-account and open-banking payments end to end: the real gateway, real OpenBao, and the
generator's bank-rail and open-banking connectors against their loopback simulators.

A bank account is debited (``pending`` until reconciliation or a webhook settles it); an
open-banking payer gets a consent (``requires_action`` with the bank's redirect), and ``complete``
authorizes it at the provider and submits it. Routing picks the connector by method type. Each
test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.reconciliation import reconcile_once
from normalization import Outcome, PaymentResult, PaymentStatus

from .conftest import Gateway, MakeGateway, sandbox_connector
from .rails import BANK_RAIL, OPEN_BANKING, Faults, Rail, connector_settings, render_rails

US_ACCOUNT = {
    "type": "bank_account",
    "holder_name": "Ada Lovelace",
    "routing_number": "011000015",
    "account_number": "123456789",
    "account_type": "checking",
}
PAYER = {
    "type": "open_banking",
    "scheme": "uk_open_banking",
    "creditor_account": {
        "scheme_name": "UK.OBIE.SortCodeAccountNumber",
        "identification": "40400411270111",
        "name": "Shop Ltd",
    },
}
RETURN_URL = "https://shop.example/back"


@pytest.fixture(scope="session")
def rails(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rail]:
    return render_rails(Path(tmp_path_factory.mktemp("rails")))


@pytest.fixture
def registered(rails: dict[str, Rail]) -> Iterator[dict[str, Rail]]:
    from sdk import register_connector, unregister_connector

    for rail in rails.values():
        register_connector(rail.connector)
    try:
        yield rails
    finally:
        for slug in rails:
            unregister_connector(slug)


class Env:
    def __init__(self, gw: Gateway, bank: Any, ob: Any, faults: Faults) -> None:
        self.gw, self.bank, self.ob, self.faults = gw, bank, ob, faults

    async def post(
        self, path: str, body: Any = None, *, key: str | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        headers = dict(self.gw.auth)
        if key:
            headers["Idempotency-Key"] = key
        resp = await self.gw.client.post(path, json=body, headers=headers)
        text = await resp.text()
        return resp.status, json.loads(text) if text else None, dict(resp.headers)

    async def get(self, payment_id: str) -> Any:
        resp = await self.gw.client.get(f"/v1/payments/{payment_id}", headers=self.gw.auth)
        return await resp.json()

    async def reconcile(self, payment_id: str, until: str, seconds: float = 5) -> Any:
        """Run the reconciler (every open attempt due now) until the payment is ``until``."""
        resources = self.gw.resources
        deadline = time.monotonic() + seconds
        while True:
            await resources.db.execute("UPDATE payment_attempts SET next_reconcile_at = 0")
            await reconcile_once(resources.payment_store, resources.payments)
            pay = await self.get(payment_id)
            if pay["status"] == until or time.monotonic() > deadline:
                return pay
            await asyncio.sleep(0.05)


@pytest.fixture
async def env(
    make_gateway: MakeGateway,
    aiohttp_server: Any,
    sandbox: Any,
    registered: dict[str, Rail],
    database_url: str | None,
) -> Env:
    bank_rail, open_banking = registered[BANK_RAIL], registered[OPEN_BANKING]
    bank = bank_rail.simulator.Simulator()
    ob = open_banking.simulator.Simulator()
    faults = Faults()
    bank_server = await aiohttp_server(bank.app())
    ob_server = await aiohttp_server(faults.install(ob.app()))
    gw = await make_gateway(
        database_url=database_url,
        connectors={
            "sandbox": sandbox_connector(sandbox),
            BANK_RAIL: connector_settings(bank_rail, bank_server),
            OPEN_BANKING: connector_settings(open_banking, ob_server),
        },
    )
    return Env(gw, bank, ob, faults)


def _bank_payment(value: int = 2500, **account: Any) -> dict[str, Any]:
    return {
        "amount": {"value": value, "currency": "USD"},
        "payment_method": {**US_ACCOUNT, **account},
        "reference": "invoice-7",
    }


def _ob_payment(value: int = 1999, **extra: Any) -> dict[str, Any]:
    return {
        "amount": {"value": value, "currency": "GBP"},
        "payment_method": PAYER,
        "reference": "basket-9",
        "return_url": RETURN_URL,
        **extra,
    }


def _ops(pay: Any) -> list[tuple[str, str | None, str | None]]:
    return [(a["operation"], a["outcome"], a["status"]) for a in pay["attempts"]]


# -- bank accounts ------------------------------------------------------------------------------


async def test_bank_debit_is_pending_then_settled_by_reconciliation(env: Env) -> None:
    status, pay, _ = await env.post("/v1/payments", _bank_payment())
    assert status == 201, pay
    assert pay["status"] == "pending" and pay["connector"] == BANK_RAIL
    assert _ops(pay) == [("debit", "succeeded", "pending")]
    assert pay["payment_method"]["masked_account"].endswith("6789")
    assert "123456789" not in json.dumps(pay)
    [transfer] = env.bank.transfers.values()
    assert transfer["direction"] == "debit" and transfer["reference"] == pay["id"]
    assert pay["provider_reference"] == transfer["id"]

    env.bank.settle(transfer["id"])
    pay = await env.reconcile(pay["id"], "captured")
    assert pay["status"] == "captured" and pay["captured"]["value"] == 2500
    assert pay["attempts"][0]["outcome"] == "succeeded"
    assert pay["attempts"][0]["status"] == "captured"
    events = await env.gw.resources.db.fetchall(
        "SELECT event_type FROM merchant_notifications WHERE merchant_id = $1",
        env.gw.merchant.id,
    )
    assert sorted(e["event_type"] for e in events) == ["payment.captured", "payment.pending"]


async def test_returned_debit_fails_with_its_decline(env: Env) -> None:
    status, pay, _ = await env.post("/v1/payments", _bank_payment(account_number="222222222"))
    assert status == 201 and pay["status"] == "pending", pay
    [transfer] = env.bank.transfers.values()
    env.bank.return_transfer(transfer["id"])
    pay = await env.reconcile(pay["id"], "declined")
    assert pay["status"] == "declined", pay
    assert pay["decline"]["code"] == "payment_returned"


async def test_debit_refused_by_the_bank_is_declined_at_once(env: Env) -> None:
    status, pay, _ = await env.post("/v1/payments", _bank_payment(account_number="111111111"))
    assert status == 201, pay
    assert pay["status"] == "declined" and pay["decline"]["code"]
    assert _ops(pay) == [("debit", "declined", "declined")]


async def test_routing_picks_the_connector_by_payment_method(env: Env) -> None:
    card = {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12,
                                     "exp_year": 2031, "cvc": "123"}}  # fmt: skip
    status, pay, _ = await env.post(
        "/v1/payments", {"amount": {"value": 700, "currency": "USD"}, "payment_method": card}
    )
    assert status == 201 and pay["connector"] == "sandbox", pay
    assert _ops(pay) == [("authorize", "succeeded", "authorized")]
    status, pay, _ = await env.post("/v1/payments", _bank_payment())
    assert status == 201 and pay["connector"] == BANK_RAIL, pay
    status, pay, _ = await env.post("/v1/payments", _ob_payment())
    assert status == 201 and pay["connector"] == OPEN_BANKING, pay
    # A connector that cannot carry the method is refused before anything is written.
    status, problem, _ = await env.post("/v1/payments", {**_bank_payment(), "connector": "sandbox"})
    assert status == 422 and problem["code"] == "not_supported", problem


async def test_bank_debit_replayed_with_its_key_debits_once(env: Env) -> None:
    status, first, _ = await env.post("/v1/payments", _bank_payment(), key="debit-1")
    assert status == 201, first
    status, again, headers = await env.post("/v1/payments", _bank_payment(), key="debit-1")
    assert status == 201 and again == first
    assert headers.get("Idempotent-Replayed") == "true"
    assert len(env.bank.transfers) == 1


async def test_complete_on_a_payment_not_requiring_action_is_409(env: Env) -> None:
    status, pay, _ = await env.post("/v1/payments", _bank_payment())
    assert status == 201, pay
    status, problem, _ = await env.post(f"/v1/payments/{pay['id']}/complete", {"parameters": {}})
    assert status == 409 and problem["code"] == "invalid_state_transition", problem


# -- open banking -------------------------------------------------------------------------------


async def _at_bank(url: str, decision: str) -> dict[str, str]:
    """The customer at the simulated bank: the callback parameters it sends them back with."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params={"decision": decision}, allow_redirects=False) as resp,
    ):
        assert resp.status == 302
        location = URL(resp.headers["Location"])
    assert str(location.with_query(None)) == RETURN_URL
    return dict(location.query)


async def _consent(env: Env) -> Any:
    status, pay, _ = await env.post("/v1/payments", _ob_payment())
    assert status == 201, pay
    assert pay["status"] == "requires_action" and pay["connector"] == OPEN_BANKING
    assert pay["next_action"]["type"] == "redirect"
    assert pay["return_url"] == RETURN_URL
    assert _ops(pay) == [("create_consent", "succeeded", "requires_action")]
    [consent] = env.ob.consents.values()
    assert consent.reference == pay["id"] and pay["provider_reference"] == consent.id
    assert pay["next_action"]["url"] == consent.authorization_url
    return pay


async def _back_from_bank(
    env: Env,
    decision: str,
    *,
    fault: str | None = None,
    key: str | None = None,
    expect: int = 200,
) -> tuple[Any, dict[str, str]]:
    """A consent, the customer's ``decision`` at the bank, then ``complete`` with the callback
    parameters (``fault``, a ``Faults`` flag, set just before): the payment and those
    parameters."""
    pay = await _consent(env)
    params = await _at_bank(pay["next_action"]["url"], decision)
    if fault is not None:
        setattr(env.faults, fault, True)
    status, pay, _ = await env.post(
        f"/v1/payments/{pay['id']}/complete", {"parameters": params}, key=key
    )
    assert status == expect, pay
    return pay, params


async def test_open_banking_consent_approved_then_submitted_and_settled(env: Env) -> None:
    pay, params = await _back_from_bank(env, "approve", key="back-1")
    assert pay["status"] == "pending" and pay["next_action"] is None
    assert _ops(pay) == [
        ("create_consent", "succeeded", "requires_action"),
        ("complete_authorization", "succeeded", "authorized"),
        ("submit", "succeeded", "pending"),
    ]
    keys = {a["id"] for a in pay["attempts"]}
    assert len(keys) == 3
    [payment] = env.ob.payments.values()
    assert len(env.faults.submit_keys) == 1

    # The customer's browser comes back twice: the same key answers the same, submits nothing.
    status, again, headers = await env.post(
        f"/v1/payments/{pay['id']}/complete", {"parameters": params}, key="back-1"
    )
    assert status == 200 and again == pay and headers.get("Idempotent-Replayed") == "true"
    assert len(env.faults.submit_keys) == 1

    env.ob.complete(payment.id)
    pay = await env.reconcile(pay["id"], "captured")
    assert pay["status"] == "captured" and pay["captured"]["value"] == 1999
    assert len(env.ob.payments) == 1


async def test_concurrent_completes_with_different_keys_submit_once(env: Env) -> None:
    """The customer's browser and the merchant's server both report the return from the bank,
    each with its own idempotency key: one authorization and one submit reach the provider; the
    others answer 409 while it runs (or the payment as it is afterwards), never a second submit."""
    pay = await _consent(env)
    params = await _at_bank(pay["next_action"]["url"], "approve")
    path = f"/v1/payments/{pay['id']}/complete"
    results = await asyncio.gather(
        *(env.post(path, {"parameters": params}, key=f"back-{i}") for i in range(5))
    )
    done = [body for status, body, _ in results if status == 200]
    refused = [body for status, body, _ in results if status != 200]
    assert done and done[0]["status"] == "pending", results
    assert {b["code"] for b in refused} <= {"operation_in_progress", "invalid_state_transition"}
    assert len(env.faults.submit_keys) == 1 and len(env.ob.payments) == 1
    after = await env.get(pay["id"])
    assert [op for op, _, _ in _ops(after)] == [
        "create_consent",
        "complete_authorization",
        "submit",
    ]


async def test_open_banking_create_replayed_with_its_key_makes_one_consent(env: Env) -> None:
    status, first, _ = await env.post("/v1/payments", _ob_payment(), key="ob-1")
    assert status == 201 and first["status"] == "requires_action", first
    status, again, headers = await env.post("/v1/payments", _ob_payment(), key="ob-1")
    assert status == 201 and again == first
    assert headers.get("Idempotent-Replayed") == "true"
    assert len(env.ob.consents) == 1


async def test_open_banking_consent_rejected_at_the_bank_is_declined(env: Env) -> None:
    pay, _ = await _back_from_bank(env, "reject")
    assert pay["status"] == "declined" and pay["decline"]["code"] == "consent_rejected"
    assert [a["operation"] for a in pay["attempts"]] == ["create_consent", "complete_authorization"]
    assert env.ob.payments == {} and env.faults.submit_keys == []


async def test_open_banking_return_url_is_required(env: Env) -> None:
    body = _ob_payment()
    del body["return_url"]
    status, problem, _ = await env.post("/v1/payments", body)
    assert status == 422 and problem["code"] == "return_url_required", problem
    assert env.ob.consents == {}
    # The payer's own return URL will do.
    status, pay, _ = await env.post(
        "/v1/payments", {**body, "payment_method": {**PAYER, "return_url": RETURN_URL}}
    )
    assert status == 201 and pay["return_url"] == RETURN_URL, pay


async def test_lost_submit_answer_is_reconciled_without_a_second_submit(env: Env) -> None:
    # 202: the submit's outcome is unknown (as for capture, void and refund).
    pay, params = await _back_from_bank(env, "approve", fault="lose_submit_answer", expect=202)
    assert pay["status"] == "unknown"
    assert _ops(pay)[-1] == ("submit", "unknown", "unknown")
    [payment] = env.ob.payments.values()  # the provider did make it

    # A retry of complete (a new key) submits nothing: the payment, which no longer requires
    # action, is returned as it is.
    status, again, _ = await env.post(f"/v1/payments/{pay['id']}/complete", {"parameters": params})
    assert status == 202 and again["status"] == "unknown", again  # still unknown
    assert len(env.faults.submit_keys) == 1

    env.ob.complete(payment.id)
    pay = await env.reconcile(pay["id"], "captured")
    assert pay["status"] == "captured", pay
    assert _ops(pay)[-1] == ("submit", "succeeded", "captured")
    assert len(env.faults.submit_keys) == 1 and len(env.ob.payments) == 1


async def test_submit_that_never_arrived_is_replayed_by_reconciliation_with_its_key(
    env: Env,
) -> None:
    pay, _ = await _back_from_bank(env, "approve", fault="reset_before_submit", expect=202)
    assert pay["status"] == "unknown" and env.ob.payments == {}

    # The consent is authorized and carries no payment: the submit is sent again, same key.
    pay = await env.reconcile(pay["id"], "pending")
    assert pay["status"] == "pending", pay
    submit = [a for a in pay["attempts"] if a["operation"] == "submit"]
    assert len(submit) == 1 and submit[0]["status"] == "pending"
    assert len(env.faults.submit_keys) == 1 and len(env.ob.payments) == 1
    [payment] = env.ob.payments.values()
    env.ob.complete(payment.id)
    pay = await env.reconcile(pay["id"], "captured")
    assert pay["status"] == "captured" and len(env.ob.payments) == 1


async def test_lost_authorization_answer_is_reconciled_into_one_submit(env: Env) -> None:
    pay, _ = await _back_from_bank(env, "approve", fault="lose_authorization_answer", expect=202)
    assert pay["status"] == "requires_action"
    assert _ops(pay)[-1] == ("complete_authorization", "unknown", "unknown")
    assert env.faults.submit_keys == []

    # Sync finds the consent authorized and unpaid: the authorization is settled, one submit sent.
    pay = await env.reconcile(pay["id"], "pending")
    assert pay["status"] == "pending", pay
    assert _ops(pay)[1:] == [
        ("complete_authorization", "succeeded", "authorized"),
        ("submit", "succeeded", "pending"),
    ]
    pay = await env.reconcile(pay["id"], "pending", seconds=0)
    assert len(env.faults.submit_keys) == 1 and len(env.ob.payments) == 1


async def test_complete_answered_after_the_reconciler_settled_it_returns_the_payment(
    env: Env,
) -> None:
    """The bank authorizes the consent, but the answer to ``complete`` comes back only after
    the reconciler (presuming the call abandoned) synced the consent and submitted it: the
    customer's return gets the payment as it is, not a 409, and nothing is submitted twice."""
    pay = await _consent(env)
    params = await _at_bank(pay["next_action"]["url"], "approve")
    resources = env.gw.resources

    async def reconciler_first() -> None:
        await resources.db.execute(
            "UPDATE payment_attempts SET next_reconcile_at = 0 WHERE next_reconcile_at IS NOT NULL"
        )
        await reconcile_once(resources.payment_store, resources.payments)

    env.faults.before_authorization_answer = reconciler_first
    status, done, _ = await env.post(f"/v1/payments/{pay['id']}/complete", {"parameters": params})
    assert status == 200, done
    assert done["status"] == "pending", done
    assert _ops(done) == [
        ("create_consent", "succeeded", "requires_action"),
        ("complete_authorization", "succeeded", "authorized"),
        ("submit", "succeeded", "pending"),
    ]
    assert len(env.faults.submit_keys) == 1 and len(env.ob.payments) == 1


async def test_complete_leaves_a_submit_whose_call_may_still_run_to_its_answer(env: Env) -> None:
    """A submit started moments ago (another ``complete``'s call, still running) is not synced
    and sent again alongside by a second ``complete``: its answer is on its way; after the
    in-flight grace the reconciler (or a later ``complete``) resumes it."""
    pay, params = await _back_from_bank(
        env, "approve", fault="lose_authorization_answer", expect=202
    )
    store = env.gw.resources.payment_store
    record = await store.get_payment(env.gw.merchant.id, pay["id"])
    [authorization] = [
        a for a in await store.attempts(pay["id"]) if a.operation == "complete_authorization"
    ]
    authorized = PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.AUTHORIZED)
    await store.finish_attempt(authorization, authorized)
    await store.start_attempt(record, OPEN_BANKING, "submit")  # its call is running elsewhere
    status, same, _ = await env.post(f"/v1/payments/{pay['id']}/complete", {"parameters": params})
    assert status == 200 and same["status"] == "requires_action", same
    assert env.faults.submit_keys == [] and env.ob.payments == {}
