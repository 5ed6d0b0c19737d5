"""An operator settles what no sync or replay can: ``tessera attempts list`` / ``settle``.

A connector without ``sync`` whose capture or refund answer was lost keeps its payment locked
(``operation_in_progress``) until a person looks at the provider's dashboard. The verdict goes
through the same settlement code as a sync's answer (amounts counted by totals), commits with the
attempt and an audit entry, and is refused, changing nothing, when it does not fit. End to end:
the real gateway, real OpenBao, the sandbox connector's HTTP server, SQLite and PostgreSQL; the
commands run as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.payments import OperationInProgressError, PaymentMethodSummary
from gateway.reconciliation import reconcile_once
from normalization import (
    IllegalTransitionError,
    InvalidRequestError,
    Money,
    Outcome,
    PaymentResult,
    PaymentStatus,
)
from sdk import Operation

from .conftest import Gateway, MakeGateway, refund_with_answer, sandbox_connector

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
HANGS = 99408  # the sandbox acts on this amount and never answers


@pytest.fixture
def nosync_connector() -> Iterator[None]:
    """The sandbox connector without ``sync``, registered as ``nosync``: nothing but a person
    can settle its follow-ups whose answer was lost."""
    from sdk import Connector, register_connector, unregister_connector
    from sdk.registry import load_connectors

    base = load_connectors()["sandbox"]
    manifest = base.manifest
    nosync = type(
        "NoSyncSandbox",
        (base,),
        {
            "sync": Connector.sync,
            "manifest": manifest.model_copy(
                update={
                    "id": "nosync",
                    "display_name": "No sync",
                    "operations": manifest.operations - {Operation.SYNC},
                }
            ),
        },
    )
    register_connector(nosync)
    try:
        yield
    finally:
        unregister_connector("nosync")


@pytest.fixture
async def gw(
    make_gateway: MakeGateway, sandbox: Any, database_url: str | None, nosync_connector: None
) -> Gateway:
    return await make_gateway(
        database_url=database_url,
        connectors={"nosync": sandbox_connector(sandbox, deadline_seconds=1.0, retry_attempts=1)},
        routing={"default": ["nosync"]},
        payments={"reconcile_interval_seconds": 3600},
    )


async def _post(gw: Gateway, path: str, body: Any = None) -> tuple[int, Any]:
    resp = await gw.client.post(path, json=body, headers=gw.auth)
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


async def _pay(gw: Gateway, value: int, *, capture: bool) -> Any:
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    token = (await resp.json())["id"]
    status, pay = await _post(
        gw,
        "/v1/payments",
        {
            "amount": {"value": value, "currency": "EUR"},
            "payment_method": {"type": "card", "token": token},
            "capture": capture,
        },
    )
    assert status == 201, pay
    return pay


def _eur(value: int) -> dict[str, Any]:
    return {"amount": {"value": value, "currency": "EUR"}}


async def test_a_lost_capture_waits_for_an_operator_then_counts(gw: Gateway) -> None:
    pay = await _pay(gw, 200_000, capture=False)
    capture = f"/v1/payments/{pay['id']}/capture"
    status, body = await _post(gw, capture, _eur(HANGS))
    assert status == 202 and body["attempts"][-1]["outcome"] == "unknown", body
    store, service = gw.resources.payment_store, gw.resources.payments
    attempt_id = body["attempts"][-1]["id"]

    # The reconciler cannot settle it, and says so; the payment stays locked.
    await gw.resources.db.execute(
        "UPDATE payment_attempts SET next_reconcile_at = 0 WHERE next_reconcile_at IS NOT NULL"
    )
    report = await reconcile_once(store, service)
    assert (report.claimed, report.settled) == (1, 0)
    status, problem = await _post(gw, capture)
    assert status == 409 and problem["code"] == "operation_in_progress", problem
    [open_attempt] = await store.open_attempts()
    record = await store.get_payment(gw.merchant.id, pay["id"])
    assert open_attempt.id == attempt_id and service.settled_by(open_attempt, record) == "operator"

    payment, attempt = await service.settle_by_operator(
        attempt_id, happened=True, reason="dashboard: capture cap_123 of 994.08", actor="ops:kim"
    )
    assert (attempt.outcome, payment.status) == (
        Outcome.SUCCEEDED,
        PaymentStatus.PARTIALLY_CAPTURED,
    )
    assert payment.captured == HANGS
    assert await store.open_attempts() == []
    entries = [e for e in await gw.resources.audit.entries() if e.action == "attempt.settle"]
    assert [(e.actor, e.target, e.purpose) for e in entries] == [
        ("ops:kim", attempt_id, "dashboard: capture cap_123 of 994.08")
    ]
    assert f"capture {HANGS} EUR: happened (partially_captured)" in (entries[0].detail or "")
    assert (await gw.resources.audit.verify()).ok

    with pytest.raises(IllegalTransitionError, match="already settled"):
        await service.settle_by_operator(attempt_id, happened=False, reason="again", actor="x")
    status, body = await _post(gw, capture)  # the rest: the lock is gone
    assert status == 200 and body["captured"]["value"] == 200_000, body


async def test_a_refund_that_did_not_happen_fails_and_frees_its_amount(gw: Gateway) -> None:
    pay = await _pay(gw, 1000, capture=True)
    # Requested, answer lost; it never reached the provider.
    attempt = await refund_with_answer(
        gw, pay["id"], 300, PaymentResult.unknown(), connector="nosync"
    )
    refunds = f"/v1/payments/{pay['id']}/refunds"
    status, problem = await _post(gw, refunds)
    assert status == 409 and problem["code"] == "operation_in_progress", problem
    payment, attempt = await gw.resources.payments.settle_by_operator(
        attempt.id, happened=False, reason="no trace at the provider", actor="ops"
    )
    assert (attempt.outcome, attempt.error_code) == (Outcome.NOT_SENT, "settled_by_operator")
    assert payment.status is PaymentStatus.CAPTURED and payment.refunded == 0
    [refund] = await gw.resources.payment_store.refunds(pay["id"])
    assert refund.status.value == "failed"
    status, body = await _post(gw, refunds)  # everything is refundable again
    assert status == 201 and body["refunded"]["value"] == 1000, body


async def test_a_lost_void_that_happened_voids_the_payment(gw: Gateway) -> None:
    pay = await _pay(gw, 1000, capture=False)
    record = await gw.resources.payment_store.get_payment(gw.merchant.id, pay["id"])
    void = await gw.resources.payment_store.start_attempt(record, "nosync", "void")
    await gw.resources.payment_store.finish_attempt(void, PaymentResult.unknown())
    payment, _ = await gw.resources.payments.settle_by_operator(
        void.id, happened=True, reason="voided in the dashboard", actor="ops"
    )
    assert payment.status is PaymentStatus.VOIDED


async def test_verdicts_that_do_not_fit_are_refused_and_change_nothing(gw: Gateway) -> None:
    pay = await _pay(gw, 1000, capture=False)
    store, service = gw.resources.payment_store, gw.resources.payments
    record = await store.get_payment(gw.merchant.id, pay["id"])
    capture = await store.start_attempt(record, "nosync", "capture", amount=Money.of(600, "EUR"))
    await store.finish_attempt(capture, PaymentResult.unknown())
    refusals: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"happened": True, "status": PaymentStatus.CAPTURED}, InvalidRequestError, "status"),
        (
            {"happened": True, "reason": "card 4242 4242 4242 4242 charged"},
            InvalidRequestError,
            "card numbers",
        ),
        (
            {"happened": True, "provider_reference": "4242424242424242"},
            InvalidRequestError,
            "card number",
        ),
    ]
    for verdict, error, says in refusals:
        args: dict[str, Any] = {"reason": "r", "actor": "ops", **verdict}
        with pytest.raises(error, match=says):
            await service.settle_by_operator(capture.id, **args)
    assert (await store.get_attempt(capture.id)).outcome is Outcome.UNKNOWN  # rolled back
    assert (await store.get_payment(gw.merchant.id, pay["id"])).captured == 0
    assert not [e for e in await gw.resources.audit.entries() if e.action == "attempt.settle"]

    # An authorization that happened needs what the provider shows; then it counts.
    other = await store.create_payment(
        gw.merchant.id, Money.of(500, "EUR"), payment_method=record.payment_method
    )
    authorize = await store.start_attempt(other, "nosync", "authorize")
    await store.finish_attempt(authorize, PaymentResult.unknown())
    with pytest.raises(InvalidRequestError, match="authorized or captured"):
        await service.settle_by_operator(authorize.id, happened=True, reason="r", actor="ops")
    with pytest.raises(InvalidRequestError, match="provider-reference"):
        await service.settle_by_operator(
            authorize.id, happened=True, status=PaymentStatus.AUTHORIZED, reason="r", actor="ops"
        )
    payment, _ = await service.settle_by_operator(
        authorize.id, happened=True, status=PaymentStatus.AUTHORIZED,
        provider_reference="auth_from_dashboard", reason="r", actor="ops",
    )  # fmt: skip
    assert payment.status is PaymentStatus.AUTHORIZED
    assert payment.provider_reference == "auth_from_dashboard"
    assert payment.connector == "nosync"


async def test_a_verdict_racing_the_reconciler_writes_nothing(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler settles the attempt with the same answer between the verdict's checks
    and its write (possible on PostgreSQL): the verdict is refused, and neither the amount nor
    an audit entry is written a second time."""
    pay = await _pay(gw, 1000, capture=True)
    attempt = await refund_with_answer(
        gw, pay["id"], 300, PaymentResult.unknown(), connector="nosync"
    )
    store = gw.resources.payment_store
    settle = store.settle_attempt

    async def raced(*args: Any, **kwargs: Any) -> Any:
        await settle(*args, **kwargs)  # the reconciler, a moment earlier
        return await settle(*args, **kwargs)

    monkeypatch.setattr(store, "settle_attempt", raced)
    with pytest.raises(IllegalTransitionError, match="already settled"):
        await gw.resources.payments.settle_by_operator(
            attempt.id, happened=False, reason="no trace at the provider", actor="ops"
        )
    assert not [e for e in await gw.resources.audit.entries() if e.action == "attempt.settle"]
    assert (await store.get_payment(gw.merchant.id, pay["id"])).refunded == 0


async def test_a_call_that_may_still_be_running_is_not_settled(gw: Gateway) -> None:
    """Started and never answered, within the in-flight grace: its answer may still come, so a
    verdict now could contradict it (the reconciler waits as long)."""
    pay = await _pay(gw, 1000, capture=False)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    capture = await store.start_attempt(record, "nosync", "capture", amount=Money.of(600, "EUR"))
    with pytest.raises(OperationInProgressError, match="may still be running") as info:
        await gw.resources.payments.settle_by_operator(
            capture.id, happened=False, reason="r", actor="ops"
        )
    assert info.value.retry_after is not None and 1 < info.value.retry_after <= 61
    assert (await store.get_attempt(capture.id)).outcome is None


async def test_a_void_the_payment_can_no_longer_take_is_refused(gw: Gateway) -> None:
    """The void's answer was lost; meanwhile the payment was captured (the dashboard, a
    webhook): "the void happened" does not fit, so nothing changes."""
    pay = await _pay(gw, 1000, capture=False)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    void = await store.start_attempt(record, "nosync", "void")
    await store.finish_attempt(void, PaymentResult.unknown())
    await store.apply(record, PaymentStatus.CAPTURED)
    with pytest.raises(IllegalTransitionError, match="void"):
        await gw.resources.payments.settle_by_operator(
            void.id, happened=True, reason="r", actor="ops"
        )
    assert (await store.get_attempt(void.id)).outcome is Outcome.UNKNOWN
    assert (await store.get_payment(gw.merchant.id, pay["id"])).status is PaymentStatus.CAPTURED


async def test_an_open_banking_authorization_is_left_to_complete(gw: Gateway) -> None:
    """An authorized consent still has to be submitted: "it happened" is refused (the payment
    would be stranded ``authorized`` with no submit); "it did not" lets the next ``complete``
    ask the bank again."""
    store = gw.resources.payment_store
    consent = PaymentMethodSummary(type="open_banking", country="GB", scheme="faster_payments")
    payment = await store.create_payment(
        gw.merchant.id, Money.of(500, "GBP"), payment_method=consent, connector="nosync"
    )
    payment = await store.apply(payment, PaymentStatus.UNKNOWN, provider_reference="cons_1")
    attempt = await store.start_attempt(payment, "nosync", "complete_authorization")
    await store.finish_attempt(attempt, PaymentResult.unknown())
    service = gw.resources.payments
    with pytest.raises(InvalidRequestError, match="complete"):
        await service.settle_by_operator(
            attempt.id, happened=True, status=PaymentStatus.AUTHORIZED,
            provider_reference="cons_1", reason="r", actor="ops",
        )  # fmt: skip
    _, settled = await service.settle_by_operator(
        attempt.id, happened=False, reason="r", actor="ops"
    )
    assert settled.outcome is Outcome.NOT_SENT

    # Its submit (the consent authorized meanwhile): "authorized" is the consent's state before
    # a submit, so only "captured" (the bank shows the payment) settles it.
    payment = await store.get_payment(gw.merchant.id, payment.id)
    submit = await store.start_attempt(payment, "nosync", "submit")
    await store.finish_attempt(submit, PaymentResult.unknown())
    with pytest.raises(InvalidRequestError, match="captured"):
        await service.settle_by_operator(
            submit.id, happened=True, status=PaymentStatus.AUTHORIZED, reason="r", actor="ops"
        )
    paid, _ = await service.settle_by_operator(
        submit.id, happened=True, status=PaymentStatus.CAPTURED, reason="r", actor="ops"
    )
    assert paid.status is PaymentStatus.CAPTURED and paid.captured == 500


# -- the commands, as an operator runs them ---------------------------------------------------


def _tessera(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


async def test_attempts_list_and_settle_commands(
    make_gateway: MakeGateway, sandbox: Any, tmp_path: Path
) -> None:
    db = tmp_path / "ops.db"
    gw = await make_gateway(
        database_url=f"sqlite:///{db}",
        connectors={"sandbox": sandbox_connector(sandbox)},
        payments={"reconcile_interval_seconds": 3600},
    )
    pay = await _pay(gw, 1000, capture=False)
    store = gw.resources.payment_store
    record = await store.get_payment(gw.merchant.id, pay["id"])
    # A capture whose answer was lost (it never reached the provider). This gateway's
    # reconciler made its first pass at start-up; the commands run none of their own.
    capture = await store.start_attempt(record, "sandbox", "capture", amount=Money.of(600, "EUR"))
    await store.finish_attempt(capture, PaymentResult.unknown())
    await gw.resources.db.execute(
        "UPDATE payment_attempts SET next_reconcile_at = 0 WHERE next_reconcile_at IS NOT NULL"
    )
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\n\n[vault]\naddr = "{gw.settings.vault.addr}"\n\n'
        f'[connectors.sandbox]\nbase_url = "{str(sandbox.make_url("")).rstrip("/")}"\n'
        "test_mode = true\n\n[payments]\nreconcile_interval_seconds = 3600\n"
    )
    assert gw.settings.vault.token is not None
    env = {"TESSERA_VAULT_TOKEN": gw.settings.vault.token.get_secret_value()}

    out = _tessera("attempts", "list", "--config", str(config), env=env)
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if line.startswith(capture.id)]
    assert pay["id"] in row and "sandbox capture" in row and "600 EUR" in row
    assert "unknown" in row and row.endswith("sync")
    # Listing called no provider and settled nothing (no reconciler runs beside the command).
    assert (await store.get_attempt(capture.id)).reconcile_count == 0

    out = _tessera(
        "attempts", "settle", capture.id, "--happened", "--status", "captured",
        "--reason", "r", "--config", str(config), env=env,
    )  # fmt: skip
    assert out.returncode == 1 and "tessera: A status is given only" in out.stderr, out.stderr
    out = _tessera(
        "attempts", "settle", "att_nope", "--not-happened", "--reason", "r",
        "--config", str(config), env=env,
    )  # fmt: skip
    assert out.returncode == 1 and "No such attempt" in out.stderr, out.stderr

    out = _tessera(
        "attempts", "settle", capture.id, "--not-happened", "--reason", "INC-42: no capture",
        "--config", str(config), env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"attempt {capture.id}: capture settled as not_sent" in out.stdout
    assert f"payment {pay['id']}: authorized, captured 0" in out.stdout

    out = _tessera("attempts", "list", "--config", str(config), env=env)
    assert out.returncode == 0 and "No open attempts." in out.stdout, out.stderr
    out = _tessera("audit", "verify", "--config", str(config), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    status, body = await _post(gw, f"/v1/payments/{pay['id']}/capture")
    assert status == 200 and body["status"] == "captured", body
