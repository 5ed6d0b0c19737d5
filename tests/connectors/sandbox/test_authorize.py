"""Authorize, purchase, declines, 3-D Secure, pending settlement, verification, currencies and
what the connector refuses before sending anything."""

from __future__ import annotations

import httpx
import pytest

from connectors.sandbox.simulator import MAGIC_CARDS
from normalization import (
    BankAccountMethod,
    CardData,
    CardMethod,
    CardNumber,
    DeclineCode,
    Money,
    NotSupportedError,
    Outcome,
    PaymentStatus,
    SyncRequest,
    VerifyRequest,
)
from sdk import CompleteAuthorizationRequest, ConnectorRuntime, Deadline
from tests.connectors.sandbox.conftest import (
    CardFactory,
    Sandbox,
    authorize_request,
    eventually,
    invoke,
)

#: Every magic decline card and the normalized code it must come back as.
EXPECTED_DECLINES = {
    "insufficient_funds": DeclineCode.INSUFFICIENT_FUNDS,
    "do_not_honor": DeclineCode.DO_NOT_HONOR,
    "expired_card": DeclineCode.EXPIRED_CARD,
    "incorrect_cvc": DeclineCode.INCORRECT_CVC,
    "invalid_card_number": DeclineCode.INVALID_CARD_NUMBER,
    "fraud_suspected": DeclineCode.FRAUD_SUSPECTED,
    "lost_card": DeclineCode.LOST_OR_STOLEN,
    "stolen_card": DeclineCode.LOST_OR_STOLEN,
    "card_not_supported": DeclineCode.CARD_NOT_SUPPORTED,
    "limit_exceeded": DeclineCode.LIMIT_EXCEEDED,
    "authentication_required": DeclineCode.AUTHENTICATION_REQUIRED,
    "restricted_card": DeclineCode.RESTRICTED_CARD,
    "processing_error": DeclineCode.PROCESSING_ERROR,
    "try_again_later": DeclineCode.PROCESSING_ERROR,
}
DECLINE_CARDS = [c for c in MAGIC_CARDS if c.behaviour == "decline"]


def magic(behaviour: str) -> str:
    return next(c.number for c in MAGIC_CARDS if c.behaviour == behaviour)


def test_every_decline_card_has_an_expectation() -> None:
    assert {c.code for c in DECLINE_CARDS} == set(EXPECTED_DECLINES)


async def test_approved_authorization_echoes_amount_and_reference(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card()))
    assert result.outcome is Outcome.SUCCEEDED
    assert result.status is PaymentStatus.AUTHORIZED
    assert result.provider_reference is not None
    assert result.provider_reference.startswith("auth_")
    assert result.amount_authorized == Money(1050, "EUR")
    assert result.amount_captured == Money(0, "EUR")
    [charge] = await sandbox.charges()
    assert charge["id"] == result.provider_reference and charge["reference"] == "order-42"


async def test_purchase_captures_at_once(runtime: ConnectorRuntime, card: CardFactory) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(), capture=True))
    assert result.status is PaymentStatus.CAPTURED
    assert result.amount_captured == Money(1050, "EUR")


@pytest.mark.parametrize("magic_card", DECLINE_CARDS, ids=lambda c: c.code)
async def test_each_magic_decline_maps_to_its_normalized_code(
    make_runtime, card: CardFactory, magic_card
) -> None:
    # One attempt: try_again_later is retryable, and here only its mapping is under test.
    runtime = make_runtime(max_attempts=1)
    result = await invoke(runtime, "authorize", authorize_request(card(magic_card.number)))
    assert result.outcome is Outcome.DECLINED
    assert result.status is PaymentStatus.DECLINED
    assert result.decline is not None
    assert result.decline.code is EXPECTED_DECLINES[magic_card.code]
    assert result.decline.provider_code == magic_card.code


async def test_retryable_decline_is_retried_then_returned(
    make_runtime, card: CardFactory, sandbox: Sandbox
) -> None:
    runtime = make_runtime(max_attempts=3)
    result = await invoke(runtime, "authorize", authorize_request(card("4000000000000184")))
    assert result.decline is not None and result.decline.provider_code == "try_again_later"
    assert len(sandbox.api_requests()) == 3
    assert await sandbox.charges() == []  # the issuer never acted


async def test_card_expired_since_tokenization_is_declined_by_the_sandbox(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    expired = card(exp_year=2020)
    result = await invoke(runtime, "authorize", authorize_request(expired, key="k-expired"))
    assert result.decline is not None and result.decline.code is DeclineCode.EXPIRED_CARD


async def test_3ds_requires_action_then_completes(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    request = authorize_request(card(magic("3ds")), return_url="https://shop.example/back")
    result = await invoke(runtime, "authorize", request)
    assert result.status is PaymentStatus.REQUIRES_ACTION
    assert result.next_action is not None
    challenge = result.next_action.url
    assert challenge.startswith(f"{sandbox.url}/3ds/")

    complete = CompleteAuthorizationRequest(
        payment_id="pay_1", provider_reference=result.provider_reference
    )
    still = await invoke(runtime, "complete_authorization", complete)
    assert still.status is PaymentStatus.REQUIRES_ACTION

    async with httpx.AsyncClient() as browser:
        page = await browser.get(challenge)
        assert page.status_code == 200 and "Authenticate" in page.text
        back = await browser.post(challenge, data={"outcome": "authenticated"})
    assert back.status_code == 303
    location = httpx.URL(back.headers["location"])
    assert location.host == "shop.example"
    assert location.params["authentication"] == "succeeded"

    # The return leg carries the authorization id; the connector finds it there too.
    done = await invoke(
        runtime,
        "complete_authorization",
        CompleteAuthorizationRequest(payment_id="pay_1", callback_parameters=dict(location.params)),
    )
    assert done.status is PaymentStatus.AUTHORIZED
    assert done.provider_reference == result.provider_reference
    [event] = (await sandbox.admin("GET", "/__sandbox/events"))["events"]
    assert event["type"] == "authorization.authorized"


async def test_3ds_failed_authentication_declines(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(magic("3ds"))))
    assert result.next_action is not None
    async with httpx.AsyncClient() as browser:
        answer = await browser.post(result.next_action.url, data={"outcome": "failed"})
    assert answer.status_code == 200  # no return_url: the object itself
    done = await invoke(
        runtime,
        "complete_authorization",
        CompleteAuthorizationRequest(payment_id="p", provider_reference=result.provider_reference),
    )
    assert done.decline is not None and done.decline.code is DeclineCode.AUTHENTICATION_FAILED


async def test_pending_settles_and_sync_sees_it(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(magic("pending"))))
    assert result.status is PaymentStatus.PENDING
    sync = SyncRequest(payment_id="pay_1", provider_reference=result.provider_reference)

    async def settled() -> bool:
        return (await invoke(runtime, "sync", sync)).status is PaymentStatus.AUTHORIZED

    await eventually(settled)
    events = (await sandbox.admin("GET", "/__sandbox/events"))["events"]
    assert [e["type"] for e in events] == ["authorization.authorized"]


async def test_pending_that_settles_declined(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(
        runtime, "authorize", authorize_request(card(magic("pending_decline")), capture=True)
    )
    assert result.status is PaymentStatus.PENDING
    await sandbox.admin("POST", f"/__sandbox/authorizations/{result.provider_reference}/settle")
    synced = await invoke(
        runtime, "sync", SyncRequest(payment_id="p", provider_reference=result.provider_reference)
    )
    assert synced.decline is not None and synced.decline.code is DeclineCode.DO_NOT_HONOR


async def test_verify_checks_the_card_for_nothing(
    runtime: ConnectorRuntime, card: CardFactory
) -> None:
    ok = await invoke(
        runtime, "verify", VerifyRequest(payment_method=CardMethod(token=card()), currency="GBP")
    )
    assert ok.status is PaymentStatus.AUTHORIZED and ok.raw_status == "verified"
    assert ok.amount_authorized == Money(0, "GBP")
    declined = await invoke(
        runtime,
        "verify",
        VerifyRequest(payment_method=CardMethod(token=card("4000000000009995")), currency="GBP"),
    )
    assert declined.decline is not None
    assert declined.decline.code is DeclineCode.INSUFFICIENT_FUNDS


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(1, "JPY"), (123_456, "JPY"), (1_234, "KWD"), (10_001, "KWD"), (12_345, "CLF"), (1, "CLF")],
)
async def test_amounts_round_trip_exactly(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox, amount: int, currency: str
) -> None:
    result = await invoke(
        runtime, "authorize", authorize_request(card(), amount, currency, capture=True)
    )
    assert result.amount_authorized == Money(amount, currency)
    assert result.amount_captured == Money(amount, currency)
    _, _, body = sandbox.bodies[-1]
    assert f'"amount":{amount},"currency":"{currency}"'.encode() in body


async def test_unsupported_currency_refused_before_any_request(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    with pytest.raises(NotSupportedError):
        await invoke(runtime, "authorize", authorize_request(card(), 1000, "NOK"))
    with pytest.raises(NotSupportedError):
        await invoke(
            runtime,
            "verify",
            VerifyRequest(payment_method=CardMethod(token=card()), currency="SEK"),
        )
    assert sandbox.api_requests() == []


async def test_unsupported_method_refused_before_any_request(
    runtime: ConnectorRuntime, sandbox: Sandbox
) -> None:
    account = BankAccountMethod(iban="DE89370400440532013000", holder_name="Ada Lovelace")
    request = authorize_request("tok_" + "a" * 24).model_copy(update={"payment_method": account})
    with pytest.raises(NotSupportedError):
        await invoke(runtime, "authorize", request)
    # The connector itself refuses too, when called past the manifest check.
    with pytest.raises(NotSupportedError):
        await runtime.call(
            "authorize",
            lambda ctx: runtime.connector.authorize(request, ctx),
            deadline=Deadline.after(5),
            tenant="t",
        )
    assert sandbox.api_requests() == []


async def test_inline_card_without_cvc_and_token_whose_cvc_expired(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    inline = CardMethod(
        card=CardData(number=CardNumber("4242424242424242"), exp_month=3, exp_year=2031)
    )
    request = authorize_request("tok_" + "a" * 24).model_copy(update={"payment_method": inline})
    assert (await invoke(runtime, "authorize", request)).status is PaymentStatus.AUTHORIZED
    no_cvc = await invoke(runtime, "authorize", authorize_request(card(cvc=None), key="k2"))
    assert no_cvc.status is PaymentStatus.AUTHORIZED
    assert all(b'"cvc"' not in body for _, _, body in sandbox.bodies)
