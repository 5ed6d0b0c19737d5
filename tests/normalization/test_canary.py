"""Canary secrets (RELIABILITY.md item 4): no input, however malformed, shows a PAN or CVV.

A unique Luhn-valid PAN and CVV are generated for each run. They are fed through every model
that takes card data, valid and in many invalid shapes, and every text those produce (repr, str,
serializations, validation errors in all their renderings, Tessera errors, exception chains,
log lines) is searched for the PAN (raw, spaced in fours, dashed) and the CVV.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
import secrets
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from normalization import (
    AuthorizeRequest,
    CardData,
    CardMethod,
    CardNumber,
    CardSecurityCode,
    PaymentMethod,
    TesseraError,
    VerifyRequest,
    currency_exponent,
    validate_cvc,
    validate_pan,
)
from tests.normalization.strategies import (
    NON_ASCII_DIGIT_SETS,
    luhn_break,
    luhn_complete,
    oracle_is_pan,
    translate_digits,
)


@dataclass(frozen=True)
class Canary:
    pan: str
    cvv: str

    @classmethod
    def generate(cls) -> Canary:
        rng = secrets.SystemRandom()
        pan = luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))
        # Four digits from 5000-9999: no year, limit or amount used by these tests is in that
        # range, so a hit is a leak and not a coincidence.
        cvv = str(rng.randint(5000, 9999))
        return cls(pan, cvv)

    @property
    def spaced(self) -> str:
        return " ".join(self.pan[i : i + 4] for i in range(0, len(self.pan), 4))

    @property
    def dashed(self) -> str:
        return self.spaced.replace(" ", "-")

    def leaks_in(self, text: str) -> list[str]:
        found = [form for form in (self.pan, self.spaced, self.dashed) if form in text]
        # Delimited like a value (cvc=5123, "5123"): inside a hex request id or digest, four
        # digits are chance, not a CVV.
        if re.search(rf"(?<![0-9A-Za-z]){self.cvv}(?![0-9A-Za-z])", text):
            found.append("cvv")
        return found


CANARY = Canary.generate()
NEXT_YEAR = date.today().year + 1


def assert_clean(*texts: str) -> None:
    for text in texts:
        leaks = CANARY.leaks_in(text)
        assert not leaks, f"canary {leaks} leaked into: {text[:300]!r}"


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Every way an exception gets rendered, for it and everything chained to it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield "".join(traceback.format_exception(current))
        yield repr(current.args)
        if isinstance(current, ValidationError):
            yield json.dumps(current.errors(), default=str)
            yield json.dumps(current.errors(include_url=False, include_context=True), default=str)
            yield current.json()
        if isinstance(current, TesseraError):
            yield current.detail
            yield current.code
        chained = [current.__cause__, current.__context__]
        current = next((c for c in chained if c is not None), None)


def test_the_canary_is_a_valid_card_and_unique_per_run() -> None:
    assert oracle_is_pan(CANARY.pan)
    assert validate_pan(CANARY.pan) == CANARY.pan
    assert validate_cvc(CANARY.cvv) == CANARY.cvv
    assert CANARY.leaks_in(f"x{CANARY.pan}x") == [CANARY.pan]
    assert CANARY.leaks_in(f"cvc={CANARY.cvv}") == ["cvv"]
    assert CANARY.leaks_in(f'{{"cvc": "{CANARY.cvv}"}}') == ["cvv"]
    assert CANARY.leaks_in(f"request_id=3fa{CANARY.cvv}e1") == []  # hex by chance
    assert Canary.generate() != CANARY


def valid_card() -> dict[str, Any]:
    return {
        "number": CANARY.pan,
        "exp_month": 12,
        "exp_year": NEXT_YEAR,
        "cvc": CANARY.cvv,
        "holder_name": "Ada Lovelace",
    }


def in_card_data(card: Any) -> tuple[type[BaseModel], Any]:
    return CardData, card


def in_card_method(card: Any) -> tuple[type[BaseModel], Any]:
    return CardMethod, {"type": "card", "card": card}


def in_authorize(card: Any) -> tuple[type[BaseModel], Any]:
    return AuthorizeRequest, {
        "amount": {"value": 1050, "currency": "EUR"},
        "payment_method": {"type": "card", "card": card},
        "reference": "order-42",
    }


def in_verify(card: Any) -> tuple[type[BaseModel], Any]:
    return VerifyRequest, {"payment_method": {"type": "card", "card": card}, "currency": "EUR"}


WRAPPERS: dict[str, Callable[[Any], tuple[type[BaseModel], Any]]] = {
    "CardData": in_card_data,
    "CardMethod": in_card_method,
    "AuthorizeRequest": in_authorize,
    "VerifyRequest": in_verify,
}


def with_changes(**changes: Any) -> Callable[[], Any]:
    def build() -> dict[str, Any]:
        card = valid_card()
        for key, value in changes.items():
            if value is _DROP:
                del card[key]
            else:
                card[key] = value
        return card

    return build


_DROP = object()
P, C = CANARY.pan, CANARY.cvv
ARABIC, FULLWIDTH = NON_ASCII_DIGIT_SETS["arabic_indic"], NON_ASCII_DIGIT_SETS["fullwidth"]

#: Card payloads that must all be refused, each next to (or made of) the canary.
INVALID_CARDS: dict[str, Callable[[], Any]] = {
    # bad expiry next to a valid PAN and CVV
    "month_0": with_changes(exp_month=0),
    "month_13": with_changes(exp_month=13),
    "expired": with_changes(exp_month=1, exp_year=2001),
    "far_future": with_changes(exp_year=NEXT_YEAR + 40),
    "two_digit_year": with_changes(exp_year=NEXT_YEAR % 100),
    "month_as_string": with_changes(exp_month="12"),
    "year_as_string": with_changes(exp_year=str(NEXT_YEAR)),
    "month_bool": with_changes(exp_month=True),
    "month_float": with_changes(exp_month=12.0),
    "expiry_missing": with_changes(exp_month=_DROP, exp_year=_DROP),
    # extra fields
    "extra_field_holding_pan": with_changes(pan=P),
    "extra_field_holding_cvv": with_changes(cvv=C),
    "extra_field_named_pan": with_changes(**{P: "x"}),
    "extra_field_named_spaced_pan": with_changes(**{CANARY.spaced: 1}),
    "extra_field_named_cvv": with_changes(**{C: "x"}),
    # wrong types
    "number_as_int": with_changes(number=int(P)),
    "number_as_float": with_changes(number=float(P)),
    "number_in_list": with_changes(number=[P]),
    "number_in_object": with_changes(number={"value": P}),
    "number_as_bytes": with_changes(number=P.encode()),
    "number_missing": with_changes(number=_DROP),
    "cvc_as_int": with_changes(cvc=int(C)),
    "holder_name_as_int": with_changes(holder_name=5),
    "card_as_string": lambda: P,
    "card_as_list": lambda: [P, C],
    # bad CVC next to a valid PAN
    "cvc_too_short": with_changes(cvc=C[:2]),
    "cvc_too_long": with_changes(cvc=C + "1"),
    "cvc_padded": with_changes(cvc=f" {C} "),
    "cvc_arabic_indic": with_changes(cvc=translate_digits(C, ARABIC)),
    "cvc_fullwidth": with_changes(cvc=translate_digits(C, FULLWIDTH)),
    "cvc_is_the_pan": with_changes(cvc=P),
    # the PAN in invalid shapes
    "pan_spaced": with_changes(number=CANARY.spaced),
    "pan_dashed": with_changes(number=CANARY.dashed),
    "pan_underscored": with_changes(number=CANARY.spaced.replace(" ", "_")),
    "pan_padded": with_changes(number=f" {P} "),
    "pan_newline": with_changes(number=P + "\n"),
    "pan_signed": with_changes(number="+" + P),
    "pan_arabic_indic": with_changes(number=translate_digits(P, ARABIC)),
    "pan_fullwidth": with_changes(number=translate_digits(P, FULLWIDTH)),
    "pan_plus_cvv": with_changes(number=P + C),
    "pan_luhn_broken_and_cvv": with_changes(number=luhn_break(P)),
    "pan_in_holder_name": with_changes(holder_name=P),
    "spaced_pan_in_holder_name": with_changes(holder_name=f"Ada {CANARY.spaced}"),
    # several problems at once
    "everything_wrong": with_changes(
        number=CANARY.dashed, cvc=P, exp_month=13, exp_year="x", extra=CANARY.spaced
    ),
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_valid_models_show_no_canary(wrapper: str) -> None:
    model, payload = WRAPPERS[wrapper](valid_card())
    instances = [model.model_validate(payload), model.model_validate_json(json.dumps(payload))]
    if model is CardData:
        instances.append(CardData(**valid_card()))
    for instance in instances:
        assert_clean(
            repr(instance),
            str(instance),
            f"{instance}",
            f"{instance!r}",
            instance.model_dump_json(),
            instance.model_dump_json(indent=2),
            json.dumps(instance.model_dump(), default=str),
            json.dumps(instance.model_dump(mode="json")),
            repr(instance.model_dump()),
            repr(instance.__dict__),
            repr(copy.deepcopy(instance)),
            repr(instance.model_copy(deep=True)),
        )
        with pytest.raises(TypeError) as info:
            pickle.dumps(instance)
        assert_clean(*exception_texts(info.value))


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("variant", sorted(INVALID_CARDS))
def test_invalid_cards_show_no_canary(wrapper: str, variant: str) -> None:
    model, payload = WRAPPERS[wrapper](INVALID_CARDS[variant]())
    try:
        body = json.dumps(payload)
    except TypeError:  # bytes: not JSON; the Python path still runs
        body = None
    attempts: list[Callable[[], object]] = [lambda: model.model_validate(payload)]
    if body is not None:
        attempts.append(lambda: model.model_validate_json(body))
    if isinstance(payload, dict):
        attempts.append(lambda: model(**payload))
    for attempt in attempts:
        with pytest.raises(ValidationError) as info:
            attempt()
        assert_clean(*exception_texts(info.value))
        assert info.value.errors(), "a refusal says why"


def test_raised_errors_carry_the_codes_the_gateway_reports() -> None:
    with pytest.raises(ValidationError) as info:
        CardData.model_validate(INVALID_CARDS["pan_spaced"]())
    [error] = info.value.errors()
    assert error["type"] == "invalid_card_number"
    assert error["loc"] == ("number",)
    assert error["input"] == "[hidden]"
    with pytest.raises(ValidationError) as info:
        AuthorizeRequest.model_validate(in_authorize(INVALID_CARDS["cvc_padded"]())[1])
    [error] = info.value.errors()
    assert error["type"] == "invalid_cvc"
    assert error["loc"] == ("payment_method", "card", "card", "cvc")
    with pytest.raises(ValidationError) as info:
        CardData.model_validate(INVALID_CARDS["extra_field_named_pan"]())
    [error] = info.value.errors()
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ("[redacted]",)


@pytest.mark.parametrize(
    "payment_method",
    [
        {"type": "card", "token": P},  # a PAN where a token goes
        {"type": "card", "token": CANARY.spaced},
        {"type": "card", "token": f"tok_{P}"[:10]},
        {"type": "card", "token": "tok_" + "a" * 16, "card": valid_card()},
        {"type": "card"},
        {"type": "cards", "card": valid_card()},
        {"type": P, "card": valid_card()},
        {"type": C, "number": P},
        {"card": valid_card()},
        {"type": "bank_account", "holder_name": "Ada", "iban": P},
        {"type": "bank_account", "holder_name": "Ada", "account_number": P},
        {"type": "open_banking", "creditor_account": P},
    ],
)
def test_misplaced_card_data_shows_no_canary(payment_method: dict[str, Any]) -> None:
    body = {"amount": {"value": 1050, "currency": "EUR"}, "payment_method": payment_method}
    for attempt in (
        lambda: AuthorizeRequest.model_validate(body),
        lambda: AuthorizeRequest.model_validate_json(json.dumps(body)),
        lambda: VerifyRequest.model_validate({"payment_method": payment_method, "currency": "EUR"}),
        lambda: TypeAdapter(PaymentMethod).validate_python(payment_method),
    ):
        with pytest.raises(ValidationError) as info:
            attempt()
        assert_clean(*exception_texts(info.value))


@pytest.mark.parametrize(
    "change",
    [
        {"amount": _DROP},
        {"amount": {"value": 10.5, "currency": "EUR"}},
        {"amount": {"value": 1050, "currency": P}},
        {"amount": {"value": P, "currency": "EUR"}},
        {"capture": "maybe"},
        {"return_url": "ftp://example.com"},
        {"country": "de"},
        {"metadata": {"k" * 41: "v"}},
        {"unexpected": True},
        {C: P},
    ],
)
def test_errors_elsewhere_in_a_request_show_no_canary(change: dict[str, Any]) -> None:
    _, body = in_authorize(valid_card())
    for key, value in change.items():
        if value is _DROP:
            del body[key]
        else:
            body[key] = value
    for attempt in (
        lambda: AuthorizeRequest.model_validate(body),
        lambda: AuthorizeRequest.model_validate_json(json.dumps(body)),
        lambda: AuthorizeRequest(**body),
    ):
        with pytest.raises(ValidationError) as info:
            attempt()
        assert_clean(*exception_texts(info.value))


def test_malformed_json_shows_no_canary() -> None:
    truncated = json.dumps(in_authorize(valid_card())[1])[:-3]
    for model in (AuthorizeRequest, CardData, VerifyRequest):
        with pytest.raises(ValidationError) as info:
            model.model_validate_json(truncated)
        assert info.value.errors()[0]["type"] == "json_invalid"
        assert_clean(*exception_texts(info.value))


def test_a_foreign_model_embedding_card_data_gets_scrubbed_card_errors() -> None:
    """The gateway's own wire models embed CardData; errors inside it stay input-free."""

    class TokenizeBody(BaseModel):
        card: CardData

    for variant in ("pan_spaced", "expired", "cvc_is_the_pan", "extra_field_named_pan"):
        with pytest.raises(ValidationError) as info:
            TokenizeBody.model_validate({"card": INVALID_CARDS[variant]()})
        assert_clean(*exception_texts(info.value))


@pytest.mark.parametrize(
    "call",
    [
        lambda: validate_pan(CANARY.spaced),
        lambda: validate_pan(CANARY.pan + " "),
        lambda: validate_pan(int(CANARY.pan)),
        lambda: validate_pan(translate_digits(CANARY.pan, ARABIC)),
        lambda: CardNumber(CANARY.dashed),
        lambda: CardSecurityCode(CANARY.pan),
        lambda: CardSecurityCode(CANARY.cvv + " "),
        lambda: validate_cvc(int(CANARY.cvv)),
        lambda: currency_exponent(CANARY.pan),
        lambda: currency_exponent(CANARY.cvv),
    ],
)
def test_tessera_errors_show_no_canary(call: Callable[[], object]) -> None:
    with pytest.raises(TesseraError) as info:
        call()
    assert_clean(*exception_texts(info.value))


def test_secrets_refuse_pickling_and_keep_their_mask_through_copies() -> None:
    number, cvc = CardNumber(CANARY.pan), CardSecurityCode(CANARY.cvv)
    for secret in (number, cvc):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError) as info:
                pickle.dumps(secret, protocol=protocol)
            assert_clean(*exception_texts(info.value))
        with pytest.raises(TypeError):
            secret.__getstate__()
        assert copy.copy(secret) is secret
        assert copy.deepcopy(secret) is secret
        assert_clean(repr(secret), str(secret), f"{secret}", f"{secret:>40}")
    assert number.reveal() == CANARY.pan
    assert cvc.reveal() == CANARY.cvv
    assert not hasattr(number, "__dict__")


def test_log_lines_show_no_canary(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tessera.test.canary")
    card = CardData.model_validate(valid_card())
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.info("tokenizing %s / %r", card, card)
        try:
            CardData.model_validate(INVALID_CARDS["everything_wrong"]())
        except ValidationError:
            logger.exception("validation failed")
    assert "validation failed" in caplog.text
    assert_clean(caplog.text)
