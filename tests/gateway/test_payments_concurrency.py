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

from gateway.payments.records import RefundStatus
from gateway.reconciliation import reconcile_once
from normalization import Money, Outcome, PaymentResult, PaymentStatus
from sdk import Operation
from sdk.webhooks import WebhookEvent

from .conftest import Gateway, MakeGateway, refund_with_answer, sandbox_connector

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


async def _paid(gw: Gateway, *, capture: bool, value: int = 1000) -> Any:
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    token = (await resp.json())["id"]
    status, pay, _ = await _post(
        gw,
        "/v1/payments",
        {
            "amount": {"value": value, "currency": "EUR"},
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

    await gw.resources.db.execute(
        "UPDATE payment_attempts SET next_reconcile_at = 0 WHERE next_reconcile_at IS NOT NULL"
    )
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


async def test_a_refusal_for_refunds_still_pending_is_not_the_keys_answer(
    gw: Gateway, sandbox: Any
) -> None:
    """Refused only because a pending refund may still succeed: 409 with Retry-After, not stored
    under the key. Once the pending refund failed, the same key runs and refunds."""
    pay = await _paid(gw, capture=True)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    pending = await store.add_refund(record, Money.of(700, "EUR"))
    path = f"/v1/payments/{pay['id']}/refunds"
    body = {"amount": {"value": 500, "currency": "EUR"}}
    status, problem, headers = await _post(gw, path, body, key="refund-500")
    assert status == 409 and problem["code"] == "amount_exceeds_refundable", problem
    assert int(headers["Retry-After"]) > 0
    assert await store.settle_pending_refund(pending.id, status=RefundStatus.FAILED)
    status, refunded, headers = await _post(gw, path, body, key="refund-500")
    assert status == 201 and refunded["refunded"]["value"] == 500, refunded
    assert "Idempotent-Replayed" not in headers
    # "Refund the rest" while pending refunds hold all of it: the same, not stored.
    pending = await store.add_refund(record, Money.of(500, "EUR"))
    status, problem, headers = await _post(gw, path, key="refund-rest")
    assert status == 409 and problem["code"] == "amount_exceeds_refundable", problem
    assert "500 more are in refunds still pending" in problem["detail"]
    assert int(headers["Retry-After"]) > 0
    assert await store.settle_pending_refund(pending.id, status=RefundStatus.FAILED)
    status, refunded, _ = await _post(gw, path, key="refund-rest")
    assert status == 201 and refunded["refunded"]["value"] == 1000, refunded
    # A refusal by the payment's own state (refunded in full) is still the key's answer.
    status, problem, headers = await _post(
        gw, path, {"amount": {"value": 600, "currency": "EUR"}}, key="k2"
    )
    assert status == 409 and problem["code"] == "invalid_state_transition", problem
    assert "Retry-After" not in headers
    status, again, headers = await _post(
        gw, path, {"amount": {"value": 600, "currency": "EUR"}}, key="k2"
    )
    assert (status, again) == (409, problem) and headers["Idempotent-Replayed"] == "true"


async def _webhook(
    gw: Gateway, record: Any, event_type: str, status: PaymentStatus, **totals: Money
) -> None:
    """The sandbox provider's event reporting ``status`` (and ``totals``, if given), as the
    gateway applies it."""
    event = WebhookEvent(
        event_id=f"evt_{event_type}",
        event_type=event_type,
        provider_reference=record.provider_reference,
        result=PaymentResult(outcome=Outcome.SUCCEEDED, status=status, **totals),
    )
    await gw.resources.payments.apply_webhook_event("sandbox", event)


async def test_a_webhook_does_not_settle_a_call_still_in_flight(gw: Gateway, sandbox: Any) -> None:
    """A (late) event about the authorization arrives while a capture is in flight: the capture
    keeps the lock (its answer is on its way), so a void is still refused."""
    pay = await _paid(gw, capture=False)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    capture = await store.start_attempt(record, "sandbox", "capture")
    await _webhook(gw, record, "authorization.succeeded", PaymentStatus.AUTHORIZED)
    assert (await store.get_attempt(capture.id)).outcome is None
    status, problem, _ = await _post(gw, f"/v1/payments/{pay['id']}/void")
    assert status == 409 and problem["code"] == "operation_in_progress", problem
    assert await _sandbox_calls(sandbox, "/voids") == 0


@pytest.fixture
async def slow_gw(make_gateway: MakeGateway, sandbox: Any, database_url: str | None) -> Gateway:
    # The sandbox acts on amount 99408 and never answers: unknown after this deadline.
    return await make_gateway(
        database_url=database_url,
        connectors={"sandbox": sandbox_connector(sandbox, deadline_seconds=1.0, retry_attempts=1)},
    )


async def test_an_unknown_refund_settled_by_concurrent_syncs_counts_once(slow_gw: Gateway) -> None:
    gw = slow_gw
    pay = await _paid(gw, capture=True, value=200_000)
    refunds = f"/v1/payments/{pay['id']}/refunds"
    status, pay, _ = await _post(gw, refunds, {"amount": {"value": 99408, "currency": "EUR"}})
    assert status == 202 and pay["attempts"][-1]["outcome"] == "unknown", pay
    results = await asyncio.gather(*(_post(gw, f"/v1/payments/{pay['id']}/sync") for _ in range(4)))
    assert {status for status, _, _ in results} == {200}, results
    resp = await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)
    after = await resp.json()
    assert after["refunded"]["value"] == 99408 and after["status"] == "partially_refunded", after
    assert [r["status"] for r in after["refunds"]] == ["succeeded"]


async def test_a_refund_the_provider_never_made_is_not_counted(gw: Gateway) -> None:
    """A refund attempt left unknown that never reached the provider: the sync's refunded total
    does not cover it, so it failed; nothing is counted and the amount is refundable again."""
    pay = await _paid(gw, capture=True)
    await refund_with_answer(gw, pay["id"], 300, PaymentResult.unknown())
    status, synced, _ = await _post(gw, f"/v1/payments/{pay['id']}/sync")
    assert status == 200, synced
    assert synced["refunded"]["value"] == 0 and synced["status"] == "captured", synced
    assert [r["status"] for r in synced["refunds"]] == ["failed"]
    status, refunded, _ = await _post(gw, f"/v1/payments/{pay['id']}/refunds")
    assert status == 201 and refunded["refunded"]["value"] == 1000, refunded


async def test_in_flight_grace_outlasts_the_longest_connector_deadline(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    """The reconciler must not take a call that may still be running for abandoned (and
    release the payment's lock under it): the grace follows the longest deadline."""
    short = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    assert short.resources.payment_store.reconcile_policy.in_flight_grace.total_seconds() == 60
    slow = await make_gateway(
        connectors={"sandbox": sandbox_connector(sandbox, deadline_seconds=120)}
    )
    assert slow.resources.payment_store.reconcile_policy.in_flight_grace.total_seconds() == 150


async def _get(gw: Gateway, payment_id: str) -> Any:
    resp = await gw.client.get(f"/v1/payments/{payment_id}", headers=gw.auth)
    return await resp.json()


async def _due_now(gw: Gateway) -> None:
    await gw.resources.db.execute(
        "UPDATE payment_attempts SET next_reconcile_at = 0 WHERE next_reconcile_at IS NOT NULL"
    )


@pytest.mark.parametrize("settle", ["sync", "reconcile"])
async def test_an_unknown_partial_capture_counts_once_it_is_settled(
    slow_gw: Gateway, settle: str
) -> None:
    """The provider made a partial capture whose answer was lost. Whether the merchant's sync
    or the reconciler settles it, its amount is captured (not just the attempt marked
    succeeded while the payment stays ``authorized`` with nothing captured), and only the rest
    is capturable."""
    gw = slow_gw
    pay = await _paid(gw, capture=False, value=200_000)
    capture = f"/v1/payments/{pay['id']}/capture"
    status, body, _ = await _post(gw, capture, {"amount": {"value": 99408, "currency": "EUR"}})
    assert status == 202 and body["attempts"][-1]["outcome"] == "unknown", body
    if settle == "sync":
        status, body, _ = await _post(gw, f"/v1/payments/{pay['id']}/sync")
        assert status == 200, body
    else:
        await _due_now(gw)
        await reconcile_once(gw.resources.payment_store, gw.resources.payments)
    after = await _get(gw, pay["id"])
    assert after["status"] == "partially_captured", after
    assert after["captured"]["value"] == 99408, after
    assert after["attempts"][-1 if settle == "reconcile" else -2]["outcome"] == "succeeded"
    status, body, _ = await _post(gw, capture)  # the rest, 100,592
    assert status == 200 and body["status"] == "captured", body
    assert body["captured"]["value"] == 200_000


async def test_an_unknown_full_refund_settled_by_sync_is_a_refund_that_happened(
    slow_gw: Gateway,
) -> None:
    """The refund of the rest is lost; the sync reports ``refunded``: the refund record says
    succeeded (not failed because the payment's status was applied before the refund was
    counted)."""
    gw = slow_gw
    pay = await _paid(gw, capture=True, value=199_408)
    refunds = f"/v1/payments/{pay['id']}/refunds"
    status, body, _ = await _post(gw, refunds, {"amount": {"value": 100_000, "currency": "EUR"}})
    assert status == 201 and body["status"] == "partially_refunded", body
    status, body, _ = await _post(gw, refunds)  # the rest, 99,408: done, never answered
    assert status == 202 and body["attempts"][-1]["outcome"] == "unknown", body
    status, synced, _ = await _post(gw, f"/v1/payments/{pay['id']}/sync")
    assert status == 200, synced
    assert synced["status"] == "refunded" and synced["refunded"]["value"] == 199_408, synced
    assert [r["status"] for r in synced["refunds"]] == ["succeeded", "succeeded"], synced


async def test_a_capture_webhook_before_reconciliation_keeps_the_captured_amount(
    slow_gw: Gateway,
) -> None:
    """100,000 captured, then the remaining capture's answer is lost; the provider's
    ``captured`` webhook (no amounts) arrives first. Applying it would leave 100,000 counted of
    a captured payment; it waits for the reconciler's sync, which counts the capture: the
    payment has captured everything, and all of it is refundable."""
    gw = slow_gw
    pay = await _paid(gw, capture=False, value=199_408)
    capture = f"/v1/payments/{pay['id']}/capture"
    status, body, _ = await _post(gw, capture, {"amount": {"value": 100_000, "currency": "EUR"}})
    assert status == 200 and body["status"] == "partially_captured", body
    status, body, _ = await _post(gw, capture)  # 99,408: the provider captures, never answers
    assert status == 202 and body["attempts"][-1]["outcome"] == "unknown", body
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    await _webhook(gw, record, "authorization.captured", PaymentStatus.CAPTURED)
    assert (await _get(gw, pay["id"]))["status"] == "partially_captured"  # deferred
    await _due_now(gw)
    await reconcile_once(store, gw.resources.payments)
    after = await _get(gw, pay["id"])
    assert after["status"] == "captured" and after["captured"]["value"] == 199_408, after
    status, body, _ = await _post(gw, f"/v1/payments/{pay['id']}/refunds")
    assert status == 201 and body["refunded"]["value"] == 199_408, body


async def test_a_stale_webhook_total_does_not_close_a_lost_capture(slow_gw: Gateway) -> None:
    """The authorization's own (late) event, ``authorized`` with nothing captured, arrives after
    a capture whose answer was lost: its total is a snapshot, not proof that the capture did not
    happen. The capture stays open (and locked) until the reconciler's sync counts it."""
    gw = slow_gw
    pay = await _paid(gw, capture=False, value=200_000)
    capture = f"/v1/payments/{pay['id']}/capture"
    status, body, _ = await _post(gw, capture, {"amount": {"value": 99408, "currency": "EUR"}})
    assert status == 202, body
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    await _webhook(
        gw, record, "authorization.succeeded", PaymentStatus.AUTHORIZED,
        amount_captured=Money.of(0, "EUR"),
    )  # fmt: skip
    assert (await store.get_attempt(body["attempts"][-1]["id"])).outcome is Outcome.UNKNOWN
    status, problem, _ = await _post(gw, capture)
    assert status == 409 and problem["code"] == "operation_in_progress", problem
    await _due_now(gw)
    await reconcile_once(store, gw.resources.payments)
    after = await _get(gw, pay["id"])
    assert after["status"] == "partially_captured" and after["captured"]["value"] == 99408, after


async def test_a_webhook_total_that_covers_a_lost_capture_settles_it(slow_gw: Gateway) -> None:
    gw = slow_gw
    pay = await _paid(gw, capture=False, value=200_000)
    capture = f"/v1/payments/{pay['id']}/capture"
    status, body, _ = await _post(gw, capture, {"amount": {"value": 99408, "currency": "EUR"}})
    assert status == 202, body
    record = await gw.resources.payment_store.get_payment(gw.merchant.id, pay["id"])
    await _webhook(
        gw, record, "authorization.captured", PaymentStatus.PARTIALLY_CAPTURED,
        amount_captured=Money.of(99408, "EUR"),
    )  # fmt: skip
    after = await _get(gw, pay["id"])
    assert after["status"] == "partially_captured" and after["captured"]["value"] == 99408, after
    assert after["attempts"][-1]["outcome"] == "succeeded"


async def test_a_refunded_webhook_during_a_lost_refund_counts_it_once(slow_gw: Gateway) -> None:
    """The refund of the rest is lost and the provider's ``refunded`` event arrives before the
    reconciler: the event waits (a refund is open), the sync counts the refund, which is
    recorded ``succeeded``."""
    gw = slow_gw
    pay = await _paid(gw, capture=True, value=199_408)
    refunds = f"/v1/payments/{pay['id']}/refunds"
    status, body, _ = await _post(gw, refunds, {"amount": {"value": 100_000, "currency": "EUR"}})
    assert status == 201, body
    status, body, _ = await _post(gw, refunds)
    assert status == 202, body
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    await _webhook(gw, record, "authorization.refunded", PaymentStatus.REFUNDED)
    await _due_now(gw)
    await reconcile_once(store, gw.resources.payments)
    await _both_refunds_counted(gw, pay["id"])


def _hold_refund_answer(
    monkeypatch: pytest.MonkeyPatch,
    gw: Gateway,
    status: PaymentStatus | None = None,
    *,
    operation: Operation = Operation.REFUND,
) -> tuple[asyncio.Event, asyncio.Event]:
    """Refund (or ``operation``) calls reach the provider, then their answer waits for
    ``release`` (``provider_done`` is set once the provider has acted); ``status`` replaces the
    answer's."""
    service = gw.resources.payments
    invoke = service._invoke
    provider_done, release = asyncio.Event(), asyncio.Event()

    async def held(*args: Any) -> PaymentResult:
        result: PaymentResult = await invoke(*args)
        if args[2] is operation:
            provider_done.set()
            await release.wait()
            if status is not None:
                result = result.model_copy(update={"status": status})
        return result

    monkeypatch.setattr(service, "_invoke", held)
    return provider_done, release


async def _both_refunds_counted(gw: Gateway, payment_id: str) -> None:
    """199,408 captured, refunded as 100,000 and (the lost one) 99,408: both counted once."""
    after = await _get(gw, payment_id)
    assert after["status"] == "refunded" and after["refunded"]["value"] == 199_408, after
    assert [r["status"] for r in after["refunds"]] == ["succeeded", "succeeded"], after


async def test_a_sync_while_a_refund_is_in_flight_leaves_the_amount_to_its_answer(
    slow_gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider has refunded; the refund call's answer is still on its way when the
    merchant syncs. The sync's ``refunded`` waits: the refund's own answer counts it (201, not
    a 409 for a refund that happened) and the refund is ``succeeded``."""
    gw = slow_gw
    pay = await _paid(gw, capture=True)
    provider_done, release = _hold_refund_answer(monkeypatch, gw)
    refund = asyncio.create_task(_post(gw, f"/v1/payments/{pay['id']}/refunds"))
    await provider_done.wait()
    status, synced, _ = await _post(gw, f"/v1/payments/{pay['id']}/sync")
    assert status == 200 and synced["status"] == "captured", synced  # deferred
    release.set()
    status, body, _ = await refund
    assert status == 201 and body["status"] == "refunded", body
    assert body["refunded"]["value"] == 1000
    assert [r["status"] for r in body["refunds"]] == ["succeeded"], body


async def test_a_lost_sync_reconciled_before_a_lost_refund_does_not_count_it(
    slow_gw: Gateway,
) -> None:
    """A merchant sync's answer was lost, then the refund of the rest too. The reconciler takes
    the sync first: its ``refunded`` waits for the refund, whose settlement counts it."""
    gw = slow_gw
    store, service = gw.resources.payment_store, gw.resources.payments
    pay = await _paid(gw, capture=True, value=199_408)
    refunds = f"/v1/payments/{pay['id']}/refunds"
    status, body, _ = await _post(gw, refunds, {"amount": {"value": 100_000, "currency": "EUR"}})
    assert status == 201, body
    record = await store.get_payment(gw.merchant.id, pay["id"])
    sync = await store.start_attempt(record, "sandbox", "sync")
    await store.finish_attempt(sync, PaymentResult.unknown())
    status, body, _ = await _post(gw, refunds)  # 99,408: refunded, never answered
    assert status == 202, body
    # Both due, the sync first.
    due = "UPDATE payment_attempts SET next_reconcile_at = $1 WHERE id = $2"
    await gw.resources.db.execute(due, 0, sync.id)
    await gw.resources.db.execute(due, 1, body["attempts"][-1]["id"])
    await reconcile_once(store, service)
    await _both_refunds_counted(gw, pay["id"])


async def test_a_refund_the_provider_reported_pending_stays_pending_until_counted(
    gw: Gateway,
) -> None:
    """The provider accepted the refund as pending; a sync whose refunded total does not
    include it yet says it is still pending (not that it failed: its amount stays reserved)."""
    pay = await _paid(gw, capture=True)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    refund = await store.add_refund(record, Money.of(300, "EUR"))
    attempt = await store.start_attempt(
        record, "sandbox", "refund", amount=Money.of(300, "EUR"), refund_id=refund.id
    )
    await store.finish_attempt(
        attempt, PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.PENDING)
    )
    await _due_now(gw)
    report = await reconcile_once(store, gw.resources.payments)
    assert (report.claimed, report.settled) == (1, 0)
    assert [r.status.value for r in await store.refunds(pay["id"])] == ["pending"]
    assert await store.reserved_refunds(pay["id"]) == 300


def _provider_reports(
    monkeypatch: pytest.MonkeyPatch, gw: Gateway, status: PaymentStatus, **totals: int
) -> None:
    """From now on the connector's ``sync`` answers ``status`` (with these totals, if any):
    what a provider whose refund settled while no one asked would say."""
    service = gw.resources.payments
    invoke = service._invoke

    async def answer(*args: Any) -> PaymentResult:
        if args[2] is not Operation.SYNC:
            return await invoke(*args)
        amounts = {k: Money.of(v, "EUR") for k, v in totals.items()}
        return PaymentResult(outcome=Outcome.SUCCEEDED, status=status, **amounts)

    monkeypatch.setattr(service, "_invoke", answer)


async def _pending_refund(gw: Gateway, payment_id: str, value: int) -> Any:
    """A refund the provider accepted as ``pending``; the payment."""
    accepted = PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.PENDING)
    await refund_with_answer(gw, payment_id, value, accepted)
    return await gw.resources.payment_store.get_payment(gw.merchant.id, payment_id)


async def _refund_600_while_the_400_waits(
    gw: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    payment_id: str,
    status: PaymentStatus | None = None,
) -> tuple[int, Any]:
    """On the payment with a pending refund of 400: refund 600, and while its call is in
    flight (made at the provider, its answer, with ``status`` if given, held back) reconcile
    the 400, which is left alone (rescheduled). Then the 600's answer, and every due attempt
    reconciled; the 600's HTTP status and body."""
    provider_done, release = _hold_refund_answer(monkeypatch, gw, status)
    six_hundred = {"amount": {"value": 600, "currency": "EUR"}}
    refund = asyncio.create_task(_post(gw, f"/v1/payments/{payment_id}/refunds", six_hundred))
    await provider_done.wait()
    store = gw.resources.payment_store
    [pending] = [a for a in await store.attempts(payment_id) if a.status is PaymentStatus.PENDING]
    await gw.resources.db.execute(
        "UPDATE payment_attempts SET next_reconcile_at = 0 WHERE id = $1", pending.id
    )
    service = gw.resources.payments
    invoke, asked = service._invoke, []

    async def counted(*args: Any) -> PaymentResult:
        asked.append(args[2])
        return await invoke(*args)

    monkeypatch.setattr(service, "_invoke", counted)
    report = await reconcile_once(store, service)
    assert (report.claimed, report.settled) == (1, 0)  # waits for the call in flight
    assert asked == []  # without asking the provider: no answer could settle it now
    monkeypatch.setattr(service, "_invoke", invoke)
    release.set()
    code, body, _ = await refund
    await _due_now(gw)
    await reconcile_once(store, gw.resources.payments)
    return code, body


@pytest.mark.parametrize("via", ["sync", "webhook"])
async def test_a_held_back_status_is_applied_once_the_pending_refund_counts(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    """300 pending; the other 700 refunded in the provider's dashboard, so the provider says
    ``refunded`` 1,000. The merchant's sync (or a webhook) holds that back while the refund is
    open; the reconciler counts the 300 and then applies ``refunded``: not left
    ``partially_refunded`` 300 for good."""
    pay = await _paid(gw, capture=True)
    record = await _pending_refund(gw, pay["id"], 300)
    _provider_reports(
        monkeypatch, gw, PaymentStatus.REFUNDED, amount_captured=1000, amount_refunded=1000
    )
    if via == "sync":
        status, synced, _ = await _post(gw, f"/v1/payments/{pay['id']}/sync")
        assert status == 200 and synced["status"] == "captured", synced  # held back
    else:
        await _webhook(
            gw, record, "refund.succeeded", PaymentStatus.REFUNDED,
            amount_refunded=Money.of(1000, "EUR"),
        )  # fmt: skip
    await _due_now(gw)
    await reconcile_once(gw.resources.payment_store, gw.resources.payments)
    after = await _get(gw, pay["id"])
    assert after["status"] == "refunded" and after["refunded"]["value"] == 1000, after
    assert [r["status"] for r in after["refunds"]] == ["succeeded"], after


async def test_a_refund_answered_while_another_settles_leaves_the_reported_status(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No totals from this provider. 400 pending, 600 in flight: the reconciler leaves the 400
    alone while the 600 is in flight (the provider's answer may hold its money), the 600's own
    answer counts it, and the 400's next reconciliation settles it: ``refunded`` 1,000."""
    pay = await _paid(gw, capture=True)
    await _pending_refund(gw, pay["id"], 400)
    _provider_reports(monkeypatch, gw, PaymentStatus.REFUNDED)
    # The provider knows of both refunds (the simulator only of this one).
    status, body = await _refund_600_while_the_400_waits(
        gw, monkeypatch, pay["id"], PaymentStatus.REFUNDED
    )
    assert status == 201 and body["refunded"]["value"] == 600, body
    after = await _get(gw, pay["id"])
    assert after["status"] == "refunded" and after["refunded"]["value"] == 1000, after
    assert [r["status"] for r in after["refunds"]] == ["succeeded", "succeeded"], after


async def test_a_pending_refund_is_not_credited_with_a_refund_in_flight(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 pending (not made yet), 600 made at the provider with its answer on its way: the
    provider's refunded total (600) covers the 400 too, but it is the 600's money. The 400
    waits; the 600 counts; the 400 stays pending. Refunded: 600, as at the provider."""
    pay = await _paid(gw, capture=True)
    await _pending_refund(gw, pay["id"], 400)
    _provider_reports(
        monkeypatch, gw, PaymentStatus.PARTIALLY_REFUNDED, amount_captured=1000,
        amount_refunded=600,
    )  # fmt: skip
    status, body = await _refund_600_while_the_400_waits(gw, monkeypatch, pay["id"])
    assert status == 201, body
    after = await _get(gw, pay["id"])
    assert after["refunded"]["value"] == 600 and after["status"] == "partially_refunded", after
    assert sorted(r["status"] for r in after["refunds"]) == ["pending", "succeeded"], after


async def test_a_partial_refund_answered_refunded_counts_only_its_amount(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider answers ``refunded`` to a partial refund, its own total saying 300: the
    payment is ``partially_refunded`` 300 (not everything captured), and the rest is
    refundable."""
    pay = await _paid(gw, capture=True)
    service = gw.resources.payments
    invoke = service._invoke

    async def answer(*args: Any) -> PaymentResult:
        result: PaymentResult = await invoke(*args)
        if args[2] is Operation.REFUND:
            return result.model_copy(update={"status": PaymentStatus.REFUNDED})
        return result

    monkeypatch.setattr(service, "_invoke", answer)
    refunds = f"/v1/payments/{pay['id']}/refunds"
    status, body, _ = await _post(gw, refunds, {"amount": {"value": 300, "currency": "EUR"}})
    assert status == 201, body
    assert body["status"] == "partially_refunded" and body["refunded"]["value"] == 300, body
    status, body, _ = await _post(gw, refunds)
    assert status == 201 and body["refunded"]["value"] == 1000, body


@pytest.mark.parametrize("operation", [Operation.CAPTURE, Operation.REFUND])
async def test_an_answer_after_the_reconciler_settled_the_call_is_not_counted_again(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, operation: Operation
) -> None:
    """The process stalls past the in-flight grace with a partial capture (or refund) made at
    the provider and its answer not yet read; the reconciler settles the call by the
    provider's totals. When the answer is finally read, the amount is already counted: the
    merchant gets the payment as it is, with the amount counted once (not twice, not a 409)."""
    pay = await _paid(gw, capture=operation is Operation.REFUND)
    provider_done, release = _hold_refund_answer(monkeypatch, gw, operation=operation)
    path = f"/v1/payments/{pay['id']}/" + (
        "capture" if operation is Operation.CAPTURE else "refunds"
    )
    call = asyncio.create_task(_post(gw, path, {"amount": {"value": 400, "currency": "EUR"}}))
    await provider_done.wait()
    await _due_now(gw)  # the in-flight grace has passed
    report = await reconcile_once(gw.resources.payment_store, gw.resources.payments)
    assert (report.claimed, report.settled) == (1, 1), report
    settled = await _get(gw, pay["id"])
    field = "captured" if operation is Operation.CAPTURE else "refunded"
    assert settled[field]["value"] == 400, settled
    release.set()
    status, body, _ = await call
    assert status in (200, 201), body
    assert body[field]["value"] == 400, body
    after = await _get(gw, pay["id"])
    assert after[field]["value"] == 400, after
    attempts = [a for a in after["attempts"] if a["operation"] == operation.value]
    assert [a["outcome"] for a in attempts] == ["succeeded"], after
    if operation is Operation.REFUND:
        assert [(r["status"], r["amount"]["value"]) for r in after["refunds"]] == [
            ("succeeded", 400)
        ], after
    else:
        status, rest, _ = await _post(gw, f"/v1/payments/{pay['id']}/capture")
        assert status == 200 and rest["captured"]["value"] == 1000, rest


@pytest.mark.parametrize("late", ["unknown", "not_sent"])
async def test_a_late_answer_that_knows_less_gets_the_settled_answer(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    """The reconciler settled the refund by the provider's totals while our call stalled; the
    call then ends ``unknown`` (a timeout) or raises before-sending (a refusal). The merchant
    gets the refund as recorded (201, ``succeeded``), not a stored 202 or 409, and the refund
    record is not overwritten ``failed`` while its amount is counted."""
    from normalization import ConnectorUnavailableError

    pay = await _paid(gw, capture=True)
    service = gw.resources.payments
    invoke = service._invoke
    provider_done, release = asyncio.Event(), asyncio.Event()

    async def held(*args: Any) -> PaymentResult:
        result: PaymentResult = await invoke(*args)
        if args[2] is Operation.REFUND:
            provider_done.set()
            await release.wait()
            if late == "unknown":
                return PaymentResult.unknown()
            raise ConnectorUnavailableError("refused")
        return result

    monkeypatch.setattr(service, "_invoke", held)
    path = f"/v1/payments/{pay['id']}/refunds"
    call = asyncio.create_task(
        _post(gw, path, {"amount": {"value": 400, "currency": "EUR"}}, key=f"late-{late}")
    )
    await provider_done.wait()
    await _due_now(gw)
    report = await reconcile_once(gw.resources.payment_store, service)
    assert (report.claimed, report.settled) == (1, 1), report
    release.set()
    status, body, _ = await call
    assert status == 201 and body["refunded"]["value"] == 400, body
    assert [(r["status"], r["amount"]["value"]) for r in body["refunds"]] == [("succeeded", 400)]
    after = await _get(gw, pay["id"])
    assert after["refunded"]["value"] == 400 and after["refunds"] == body["refunds"], after


async def test_racing_settlers_of_a_lost_authorization_settle_and_notify_once(
    make_gateway: MakeGateway, sandbox: Any, database_url: str | None
) -> None:
    """Two reconcilers (one past the other's lease) and the merchant's sync settle the same
    lost authorization at once: one of them records the answer and moves the payment; the
    others find it settled and move nothing. Each used to apply the answer to the payment as
    it had read it, and announce ``payment.authorized`` again."""
    gw = await make_gateway(
        database_url=database_url,
        connectors={"sandbox": sandbox_connector(sandbox, retry_attempts=1)},
    )
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    token = (await resp.json())["id"]
    status, pay, _ = await _post(
        gw,
        "/v1/payments",
        {
            "amount": {"value": 99105, "currency": "EUR"},
            "payment_method": {"type": "card", "token": token},
        },
    )  # 99105: the sandbox authorizes, then resets the connection before answering
    assert status == 201 and pay["status"] == "unknown", pay
    [attempt] = await gw.resources.payment_store.attempts(pay["id"])
    settled = await asyncio.gather(
        gw.resources.payments.reconcile(attempt),
        gw.resources.payments.reconcile(attempt),
        _post(gw, f"/v1/payments/{pay['id']}/sync"),
    )
    assert settled[:2] == [True, True]
    status, synced, _ = settled[2]
    assert status == 200 and synced["status"] == "authorized", synced
    resp = await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)
    after = await resp.json()
    assert after["status"] == "authorized" and after["attempts"][0]["outcome"] == "succeeded"
    rows = await gw.resources.db.fetchall(
        "SELECT event_type FROM merchant_notifications WHERE merchant_id = $1",
        gw.merchant.id,
    )
    assert sorted(row["event_type"] for row in rows) == ["payment.authorized", "payment.unknown"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(sandbox.make_url("/__sandbox/charges")) as reply,
    ):
        assert len((await reply.json())["charges"]) == 1


async def _refunds_by_amount(gw: Gateway, payment_id: str) -> tuple[Any, dict[int, str]]:
    after = await _get(gw, payment_id)
    return after, {r["amount"]["value"]: r["status"] for r in after["refunds"]}


@pytest.mark.parametrize("first", [300, 500])
async def test_pending_refunds_are_matched_to_the_providers_total_by_amount(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, first: int
) -> None:
    """300 and 500 accepted as pending; the provider's refunded total says 500: the 500 went
    through and the 300 has not yet, whichever the reconciler takes first (the 300 taken first
    used to be credited with the 500's money, and the 500 then left pending)."""
    pay = await _paid(gw, capture=True)
    attempts = {
        value: await refund_with_answer(
            gw,
            pay["id"],
            value,
            PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.PENDING),
        )
        for value in (300, 500)
    }
    _provider_reports(
        monkeypatch, gw, PaymentStatus.PARTIALLY_REFUNDED, amount_captured=1000,
        amount_refunded=500,
    )  # fmt: skip
    due = "UPDATE payment_attempts SET next_reconcile_at = $1 WHERE id = $2"
    for rank, value in enumerate(sorted(attempts, key=lambda v: v != first)):
        await gw.resources.db.execute(due, rank, attempts[value].id)
    await reconcile_once(gw.resources.payment_store, gw.resources.payments)
    after, statuses = await _refunds_by_amount(gw, pay["id"])
    assert statuses == {300: "pending", 500: "succeeded"}, after
    assert after["refunded"]["value"] == 500 and after["status"] == "partially_refunded", after


async def test_pending_refunds_the_total_cannot_tell_apart_wait_for_one_that_can(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300, 200 and 500 pending, the provider's total 500: the 300 and 200, or the 500? None is
    counted on a guess. Once the total says 1,000, all three went through."""
    pay = await _paid(gw, capture=True)
    pending = PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.PENDING)
    for value in (300, 200, 500):
        await refund_with_answer(gw, pay["id"], value, pending)
    store, service = gw.resources.payment_store, gw.resources.payments
    _provider_reports(
        monkeypatch, gw, PaymentStatus.PARTIALLY_REFUNDED, amount_captured=1000,
        amount_refunded=500,
    )  # fmt: skip
    await _due_now(gw)
    report = await reconcile_once(store, service)
    assert (report.claimed, report.settled) == (3, 0)
    after, statuses = await _refunds_by_amount(gw, pay["id"])
    assert set(statuses.values()) == {"pending"} and after["refunded"]["value"] == 0, after
    _provider_reports(
        monkeypatch, gw, PaymentStatus.REFUNDED, amount_captured=1000, amount_refunded=1000
    )
    await _due_now(gw)
    await reconcile_once(store, service)
    after, statuses = await _refunds_by_amount(gw, pay["id"])
    assert set(statuses.values()) == {"succeeded"}, after
    assert after["refunded"]["value"] == 1000 and after["status"] == "refunded", after


async def test_equal_pending_refunds_are_credited_oldest_first(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pending refunds of 400 and a total of 400: which one went through makes no
    difference to the money, and waiting would never tell; the older is credited."""
    pay = await _paid(gw, capture=True)
    pending = PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.PENDING)
    older = await refund_with_answer(gw, pay["id"], 400, pending)
    newer = await refund_with_answer(gw, pay["id"], 400, pending)
    _provider_reports(
        monkeypatch, gw, PaymentStatus.PARTIALLY_REFUNDED, amount_captured=1000,
        amount_refunded=400,
    )  # fmt: skip
    due = "UPDATE payment_attempts SET next_reconcile_at = $1 WHERE id = $2"
    await gw.resources.db.execute(due, 0, newer.id)  # the newer one is reconciled first
    await gw.resources.db.execute(due, 1, older.id)
    await reconcile_once(gw.resources.payment_store, gw.resources.payments)
    refunds = {r.id: r.status for r in await gw.resources.payment_store.refunds(pay["id"])}
    assert refunds == {
        older.refund_id: RefundStatus.SUCCEEDED,
        newer.refund_id: RefundStatus.PENDING,
    }


async def test_a_merchants_sync_does_not_credit_a_lost_refund_with_a_pending_ones_money(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 accepted as pending, then a refund of 300 whose answer was lost; the provider's
    total says 500, which only the 500 explains. The merchant's sync settles the 300 as failed
    (it used to be credited with the 500's money); the 500 stays for the reconciler."""
    pay = await _paid(gw, capture=True)
    pending = PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.PENDING)
    await refund_with_answer(gw, pay["id"], 500, pending)
    await refund_with_answer(gw, pay["id"], 300, PaymentResult.unknown())
    _provider_reports(
        monkeypatch, gw, PaymentStatus.PARTIALLY_REFUNDED, amount_captured=1000,
        amount_refunded=500,
    )  # fmt: skip
    status, body, _ = await _post(gw, f"/v1/payments/{pay['id']}/sync")
    assert status == 200, body
    after, statuses = await _refunds_by_amount(gw, pay["id"])
    assert statuses == {300: "failed", 500: "pending"}, after
    assert after["refunded"]["value"] == 0, after
    await _due_now(gw)
    await reconcile_once(gw.resources.payment_store, gw.resources.payments)
    after, statuses = await _refunds_by_amount(gw, pay["id"])
    assert statuses == {300: "failed", 500: "succeeded"}, after
    assert after["refunded"]["value"] == 500, after


async def test_an_operator_settling_one_of_equal_refunds_settles_that_one(
    gw: Gateway,
) -> None:
    """Two pending refunds of 400; the operator saw the newer one go through: that one is
    credited (the oldest-first rule is for totals, not for a person's verdict)."""
    pay = await _paid(gw, capture=True)
    pending = PaymentResult(outcome=Outcome.SUCCEEDED, status=PaymentStatus.PENDING)
    older = await refund_with_answer(gw, pay["id"], 400, pending)
    newer = await refund_with_answer(gw, pay["id"], 400, pending)
    payment, _ = await gw.resources.payments.settle_by_operator(
        newer.id, happened=True, reason="seen in the dashboard", actor="ops"
    )
    assert payment.refunded == 400
    refunds = {r.id: r.status for r in await gw.resources.payment_store.refunds(pay["id"])}
    assert refunds == {
        older.refund_id: RefundStatus.PENDING,
        newer.refund_id: RefundStatus.SUCCEEDED,
    }
