"""Operation requests (shared fields, limits, amounts) and PaymentResult consistency."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from normalization import (
    AuthorizeRequest,
    CaptureRequest,
    ConsentRequest,
    DebitRequest,
    Decline,
    DeclineCode,
    Money,
    NextAction,
    Outcome,
    PaymentResult,
    PaymentStatus,
    PayoutRequest,
    RefundRequest,
    SyncRequest,
    VerifyRequest,
    VoidRequest,
)

EUR = {"value": 1050, "currency": "EUR"}
CARD_TOKEN = {"type": "card", "token": "tok_4f9c0d6b2a8e4c1f"}
IBAN_ACCOUNT = {"type": "bank_account", "holder_name": "Ada", "iban": "DE89370400440532013000"}
OPEN_BANKING = {
    "type": "open_banking",
    "creditor_account": {"scheme_name": "IBAN", "identification": "GB29NWBK60161331926819"},
}

#: A minimal valid body for every request model.
REQUESTS: dict[type[BaseModel], dict[str, Any]] = {
    AuthorizeRequest: {"amount": EUR, "payment_method": CARD_TOKEN},
    CaptureRequest: {"payment_id": "pay_1", "amount": EUR},
    VoidRequest: {"payment_id": "pay_1"},
    RefundRequest: {"payment_id": "pay_1", "amount": EUR},
    SyncRequest: {"payment_id": "pay_1"},
    VerifyRequest: {"payment_method": CARD_TOKEN, "currency": "EUR"},
    PayoutRequest: {"amount": EUR, "destination": IBAN_ACCOUNT},
    DebitRequest: {"amount": EUR, "source": IBAN_ACCOUNT},
    ConsentRequest: {"amount": EUR, "payer": OPEN_BANKING, "return_url": "https://shop.example"},
}
MONEY_MOVING = [AuthorizeRequest, CaptureRequest, RefundRequest, PayoutRequest, DebitRequest,
                ConsentRequest]  # fmt: skip


def model_id(model: type[BaseModel]) -> str:
    return model.__name__


def error_types(exc: ValidationError) -> list[str]:
    return [str(error["type"]) for error in exc.errors()]


def refusal(model: type[BaseModel], body: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return info.value


@pytest.mark.parametrize("model", REQUESTS, ids=model_id)
def test_minimal_requests_validate_and_round_trip(model: type[BaseModel]) -> None:
    request = model.model_validate(REQUESTS[model])
    assert model.model_validate_json(request.model_dump_json()) == request
    assert request.metadata == {}  # type: ignore[attr-defined]
    assert request.reference is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", REQUESTS, ids=model_id)
@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("reference", "r", True),
        ("reference", "r" * 128, True),
        ("reference", "r" * 129, False),
        ("reference", "", False),
        ("reference", 42, False),
        ("idempotency_key", "k" * 255, True),
        ("idempotency_key", "k" * 256, False),
        ("idempotency_key", "", False),
        ("metadata", {f"k{i}": "v" for i in range(50)}, True),
        ("metadata", {f"k{i}": "v" for i in range(51)}, False),
        ("metadata", {"k" * 40: "v" * 500}, True),
        ("metadata", {"k" * 41: "v"}, False),
        ("metadata", {"": "v"}, False),
        ("metadata", {"k": "v" * 501}, False),
        ("metadata", {"k": 1}, False),
        ("metadata", {"k": None}, False),
        ("metadata", {"k": {"nested": "v"}}, False),
        ("metadata", ["k", "v"], False),
        ("unknown_field", 1, False),
    ],
)
def test_shared_fields_and_their_limits(
    model: type[BaseModel], field: str, value: Any, ok: bool
) -> None:
    body = {**REQUESTS[model], field: value}
    if ok:
        assert getattr(model.model_validate(body), field) == value
    else:
        refusal(model, body)


@pytest.mark.parametrize("model", MONEY_MOVING, ids=model_id)
def test_money_moving_requests_need_a_positive_amount(model: type[BaseModel]) -> None:
    body = {**REQUESTS[model], "amount": {"value": 0, "currency": "EUR"}}
    assert error_types(refusal(model, body)) == ["invalid_amount"]
    body = {**REQUESTS[model], "amount": {"value": 1, "currency": "JPY"}}
    assert model.model_validate(body).amount == Money(1, "JPY")  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", MONEY_MOVING, ids=model_id)
@pytest.mark.parametrize(
    ("amount", "error"),
    [
        ({"value": 10.5, "currency": "EUR"}, "invalid_amount"),
        ({"value": -1, "currency": "EUR"}, "invalid_amount"),
        ({"value": 1050, "currency": "XXX"}, "unknown_currency"),
        ({"value": 1050}, "missing"),
        (1050, "model_type"),
    ],
)
def test_amounts_in_requests(model: type[BaseModel], amount: Any, error: str) -> None:
    body = {**REQUESTS[model], "amount": amount}
    assert error_types(refusal(model, body)) == [error]


@pytest.mark.parametrize(
    ("currency", "ok"),
    [("EUR", True), ("JPY", True), ("ZZZ", False), ("XAU", False), ("eur", False), ("EURO", False)],
)
def test_verify_needs_a_known_currency(currency: str, ok: bool) -> None:
    body = {**REQUESTS[VerifyRequest], "currency": currency}
    if ok:
        assert VerifyRequest.model_validate(body).currency == currency
    else:
        refusal(VerifyRequest, body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("return_url", "https://shop.example/return"),
        ("return_url", "http://localhost:8080/return"),
        ("country", "DE"),
        ("description", "d" * 500),
        ("capture", True),
    ],
)
def test_authorize_optional_fields(field: str, value: Any) -> None:
    request = AuthorizeRequest.model_validate({**REQUESTS[AuthorizeRequest], field: value})
    assert getattr(request, field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("return_url", "javascript:alert(1)"),
        ("return_url", "ftp://shop.example"),
        ("return_url", "https://" + "a" * 2048),
        ("country", "de"),
        ("country", "DEU"),
        ("description", "d" * 501),
        ("capture", "maybe"),
    ],
)
def test_authorize_field_refusals(field: str, value: Any) -> None:
    refusal(AuthorizeRequest, {**REQUESTS[AuthorizeRequest], field: value})


def test_capture_is_final_by_default_and_follow_ups_need_a_payment_id() -> None:
    capture = CaptureRequest.model_validate(REQUESTS[CaptureRequest])
    assert capture.final is True
    for model in (CaptureRequest, VoidRequest, RefundRequest, SyncRequest):
        body = {k: v for k, v in REQUESTS[model].items() if k != "payment_id"}
        assert "missing" in error_types(refusal(model, body))
    refund = RefundRequest.model_validate({**REQUESTS[RefundRequest], "reason": "r" * 200})
    assert refund.reason == "r" * 200
    refusal(RefundRequest, {**REQUESTS[RefundRequest], "reason": "r" * 201})


def test_payout_and_debit_take_bank_accounts_only() -> None:
    refusal(PayoutRequest, {**REQUESTS[PayoutRequest], "destination": CARD_TOKEN})
    refusal(DebitRequest, {**REQUESTS[DebitRequest], "source": OPEN_BANKING})
    refusal(PayoutRequest, {**REQUESTS[PayoutRequest], "description": "d" * 141})


def test_consent_needs_a_return_url() -> None:
    body = {k: v for k, v in REQUESTS[ConsentRequest].items() if k != "return_url"}
    assert error_types(refusal(ConsentRequest, body)) == ["missing"]


def test_requests_are_immutable() -> None:
    request = AuthorizeRequest.model_validate(REQUESTS[AuthorizeRequest])
    with pytest.raises(ValidationError):
        request.capture = True  # type: ignore[misc]


# -- results -----------------------------------------------------------------------------------

REDIRECT = {"url": "https://acs.example/3ds", "method": "POST", "data": {"PaReq": "x"}}


def test_factories() -> None:
    not_sent = PaymentResult.not_sent()
    assert (not_sent.status, not_sent.outcome) == (PaymentStatus.FAILED, Outcome.NOT_SENT)
    unknown = PaymentResult.unknown("psp_1")
    assert (unknown.status, unknown.outcome) == (PaymentStatus.UNKNOWN, Outcome.UNKNOWN)
    assert unknown.provider_reference == "psp_1"
    declined = PaymentResult.declined(DeclineCode.INSUFFICIENT_FUNDS, "Not enough", "51", "psp_2")
    assert (declined.status, declined.outcome) == (PaymentStatus.DECLINED, Outcome.DECLINED)
    assert declined.decline == Decline(
        code=DeclineCode.INSUFFICIENT_FUNDS, message="Not enough", provider_code="51"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "authorized", "outcome": "succeeded"},
        {"status": "captured", "outcome": "succeeded", "amount_captured": EUR},
        {"status": "pending", "outcome": "succeeded"},
        {"status": "requires_action", "outcome": "succeeded", "next_action": REDIRECT},
        {"status": "declined", "outcome": "declined", "decline": {"code": "do_not_honor"}},
        # A refused refund: the call is declined, the payment stays captured.
        {"status": "captured", "outcome": "declined", "decline": {"code": "limit_exceeded"}},
        {"status": "failed", "outcome": "not_sent"},
        {"status": "unknown", "outcome": "not_sent"},
        {"status": "unknown", "outcome": "unknown"},
        {"status": "failed", "outcome": "succeeded", "decline": {"code": "payment_returned"}},
    ],
)
def test_consistent_results(fields: dict[str, Any]) -> None:
    result = PaymentResult.model_validate(fields)
    assert PaymentResult.model_validate_json(result.model_dump_json()) == result


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "declined", "outcome": "declined"},  # declined needs a decline
        {"status": "captured", "outcome": "declined"},
        {"status": "declined", "outcome": "succeeded"},  # a declined status is a declined outcome
        {"status": "declined", "outcome": "succeeded", "decline": {"code": "do_not_honor"}},
        {"status": "requires_action", "outcome": "succeeded"},  # needs next_action
        {"status": "authorized", "outcome": "not_sent"},  # not_sent: failed or unknown
        {"status": "captured", "outcome": "unknown"},  # unknown: status unknown only
        {"status": "failed", "outcome": "unknown"},  # a final status would block reconciliation
    ],
)
def test_inconsistent_results_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        PaymentResult.model_validate(fields)
    assert error_types(info.value) == ["invalid_request"]


@pytest.mark.parametrize(
    "change",
    [
        {"status": "settled"},
        {"outcome": "maybe"},
        {"decline": {"code": "card_melted"}},
        {"decline": {"code": "do_not_honor", "message": "m" * 501}},
        {"next_action": {"url": "javascript:alert(1)"}},
        {"next_action": {"url": "https://acs.example", "method": "PUT"}},
        {"next_action": {"url": "https://acs.example", "type": "iframe"}},
        {"amount_authorized": {"value": 1.5, "currency": "EUR"}},
        {"provider_reference": "p" * 201},
        {"raw_status": "s" * 101},
    ],
)
def test_result_field_refusals(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PaymentResult.model_validate({"status": "authorized", "outcome": "succeeded", **change})


def test_next_action_defaults() -> None:
    action = NextAction(url="https://acs.example/3ds")
    assert (action.type, action.method, action.data) == ("redirect", "GET", {})


def test_decline_codes_cover_the_documented_set() -> None:
    documented = {
        "insufficient_funds", "do_not_honor", "expired_card", "incorrect_cvc",
        "invalid_card_number", "fraud_suspected", "card_not_supported", "currency_not_supported",
        "authentication_required", "limit_exceeded", "processing_error",
    }  # fmt: skip
    assert documented <= {code.value for code in DeclineCode}
    assert len({code.value for code in DeclineCode}) == len(DeclineCode)


def test_statuses_and_outcomes_are_the_documented_ones() -> None:
    assert {s.value for s in PaymentStatus} == {
        "requires_action", "pending", "authorized", "partially_captured", "captured", "voided",
        "declined", "failed", "partially_refunded", "refunded", "unknown",
    }  # fmt: skip
    assert {o.value for o in Outcome} == {"succeeded", "declined", "not_sent", "unknown"}


def test_result_json_shape() -> None:
    result = PaymentResult.declined(DeclineCode.EXPIRED_CARD, provider_code="54")
    body = json.loads(result.model_dump_json())
    assert body["status"] == "declined"
    assert body["outcome"] == "declined"
    assert body["decline"] == {"code": "expired_card", "message": "", "provider_code": "54"}
    assert body["next_action"] is None
