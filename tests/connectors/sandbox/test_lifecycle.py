"""Follow-up operations: partial and multiple captures, void, partial and multiple refunds, and
the sandbox's refusals (over captured, over authorized, wrong state) as clean declined results."""

from __future__ import annotations

import pytest

from normalization import (
    CaptureRequest,
    DeclineCode,
    InvalidRequestError,
    Money,
    Outcome,
    PaymentResult,
    PaymentStatus,
    RefundRequest,
    SyncRequest,
    VoidRequest,
)
from sdk import ConnectorRuntime
from tests.connectors.sandbox.conftest import CardFactory, Sandbox, authorize_request, invoke


def capture(ref: str | None, amount: int, *, final: bool = False, key: str = "") -> CaptureRequest:
    return CaptureRequest(
        payment_id="pay_1",
        provider_reference=ref,
        amount=Money(amount, "EUR"),
        final=final,
        idempotency_key=key or None,
    )


def refund(ref: str | None, amount: int, *, key: str = "") -> RefundRequest:
    return RefundRequest(
        payment_id="pay_1",
        provider_reference=ref,
        amount=Money(amount, "EUR"),
        idempotency_key=key or None,
    )


async def authorized(runtime: ConnectorRuntime, card: CardFactory) -> str:
    result = await invoke(runtime, "authorize", authorize_request(card()))
    assert result.status is PaymentStatus.AUTHORIZED and result.provider_reference
    return result.provider_reference


def assert_refused(result: PaymentResult, provider_code: str, code: DeclineCode) -> None:
    assert result.outcome is Outcome.DECLINED
    assert result.decline is not None
    assert result.decline.code is code
    assert result.decline.provider_code == provider_code


async def test_partial_capture_then_the_rest(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    ref = await authorized(runtime, card)
    first = await invoke(runtime, "capture", capture(ref, 400, key="cap-1"))
    assert first.status is PaymentStatus.PARTIALLY_CAPTURED
    assert first.amount_captured == Money(400, "EUR")
    assert first.provider_references["capture"].startswith("cap_")
    rest = await invoke(runtime, "capture", capture(ref, 650, key="cap-2"))
    assert rest.status is PaymentStatus.CAPTURED
    assert rest.amount_captured == Money(1050, "EUR")
    assert rest.provider_references["capture"] != first.provider_references["capture"]
    [charge] = await sandbox.charges()
    assert [c["amount"] for c in charge["captures"]] == [400, 650]


async def test_final_partial_capture_releases_the_rest(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    ref = await authorized(runtime, card)
    done = await invoke(runtime, "capture", capture(ref, 300, final=True))
    assert done.status is PaymentStatus.CAPTURED and done.amount_captured == Money(300, "EUR")
    more = await invoke(runtime, "capture", capture(ref, 100))
    assert_refused(more, "invalid_state", DeclineCode.INVALID_REQUEST)


async def test_capture_over_authorized_is_a_clean_refusal(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    ref = await authorized(runtime, card)
    result = await invoke(runtime, "capture", capture(ref, 1051))
    assert_refused(result, "amount_exceeds_capturable", DeclineCode.INVALID_AMOUNT)


async def test_void(runtime: ConnectorRuntime, card: CardFactory) -> None:
    ref = await authorized(runtime, card)
    voided = await invoke(runtime, "void", VoidRequest(payment_id="p", provider_reference=ref))
    assert voided.status is PaymentStatus.VOIDED
    again = await invoke(runtime, "capture", capture(ref, 100))
    assert_refused(again, "invalid_state", DeclineCode.INVALID_REQUEST)


async def test_partial_refunds_twice_then_refunded(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    purchase = await invoke(runtime, "authorize", authorize_request(card(), capture=True))
    ref = purchase.provider_reference
    first = await invoke(runtime, "refund", refund(ref, 50, key="r-1"))
    assert first.status is PaymentStatus.PARTIALLY_REFUNDED
    assert first.amount_refunded == Money(50, "EUR")
    assert first.provider_references["refund"].startswith("ref_")
    second = await invoke(runtime, "refund", refund(ref, 1000, key="r-2"))
    assert second.status is PaymentStatus.REFUNDED
    assert second.amount_refunded == Money(1050, "EUR")
    after = await invoke(runtime, "refund", refund(ref, 1, key="r-3"))
    assert_refused(after, "invalid_state", DeclineCode.INVALID_REQUEST)


async def test_refund_over_captured_is_a_clean_refusal(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    ref = await authorized(runtime, card)
    await invoke(runtime, "capture", capture(ref, 500, final=True))
    over = await invoke(runtime, "refund", refund(ref, 501))
    assert_refused(over, "amount_exceeds_refundable", DeclineCode.INVALID_AMOUNT)
    [charge] = await sandbox.charges()
    assert charge["amount_refunded"] == 0 and charge["refunds"] == []


async def test_refund_of_an_uncaptured_authorization_is_refused(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    ref = await authorized(runtime, card)
    result = await invoke(runtime, "refund", refund(ref, 10))
    assert_refused(result, "invalid_state", DeclineCode.INVALID_REQUEST)


async def test_currency_mismatch_and_unknown_reference_are_refused(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    ref = await authorized(runtime, card)
    usd = CaptureRequest(payment_id="p", provider_reference=ref, amount=Money(100, "USD"))
    assert_refused(
        await invoke(runtime, "capture", usd), "currency_mismatch", DeclineCode.INVALID_AMOUNT
    )
    missing = await invoke(runtime, "capture", capture("auth_nope", 100))
    assert_refused(missing, "not_found", DeclineCode.INVALID_REQUEST)


async def test_follow_ups_need_the_provider_reference(runtime: ConnectorRuntime) -> None:
    with pytest.raises(InvalidRequestError):
        await invoke(runtime, "capture", capture(None, 100))
    with pytest.raises(InvalidRequestError):
        await invoke(runtime, "sync", SyncRequest(payment_id="p"))


async def test_sync_by_reference_finds_the_newest_or_reports_none(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    await invoke(runtime, "authorize", authorize_request(card(), reference="ord-7", key="a"))
    newest = await invoke(
        runtime, "authorize", authorize_request(card(), reference="ord-7", key="b", capture=True)
    )
    found = await invoke(runtime, "sync", SyncRequest(payment_id="p", reference="ord-7"))
    assert found.provider_reference == newest.provider_reference
    assert found.status is PaymentStatus.CAPTURED
    none = await invoke(runtime, "sync", SyncRequest(payment_id="p", reference="ord-8"))
    assert none.status is PaymentStatus.FAILED and none.raw_status == "not_found"
