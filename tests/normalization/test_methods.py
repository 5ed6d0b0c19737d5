"""Payment methods: the discriminated union, card sources, bank accounts, open banking."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from normalization import (
    AuthorizeRequest,
    BankAccountMethod,
    BankAccountType,
    CardData,
    CardMethod,
    InvalidBankAccountError,
    OpenBankingMethod,
    OpenBankingScheme,
    PaymentMethod,
    PaymentMethodType,
    validate_aba_routing_number,
    validate_iban,
)
from tests.normalization.strategies import PROPERTY, luhn_break, luhn_complete, oracle_luhn

METHODS: TypeAdapter[Any] = TypeAdapter(PaymentMethod)
NEXT_YEAR = date.today().year + 1
TOKEN = "tok_4f9c0d6b2a8e4c1f"
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": "123"}
IBAN_DE = "DE89370400440532013000"
IBAN_GB = "GB29NWBK60161331926819"
US_ACCOUNT = {
    "routing_number": "011000015",
    "account_number": "000123456789",
    "account_type": "checking",
}


def error_types(exc: ValidationError) -> list[str]:
    return [str(error["type"]) for error in exc.errors()]


def refused(payload: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        METHODS.validate_python(payload)
    return info.value


# -- the union ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "model"),
    [
        ({"type": "card", "token": TOKEN}, CardMethod),
        ({"type": "card", "card": CARD}, CardMethod),
        ({"type": "bank_account", "holder_name": "Ada", "iban": IBAN_DE}, BankAccountMethod),
        ({"type": "bank_account", "holder_name": "Ada", **US_ACCOUNT}, BankAccountMethod),
        (
            {"type": "open_banking", "creditor_account": {"scheme_name": "IBAN",
                                                          "identification": IBAN_GB}},
            OpenBankingMethod,
        ),
    ],
)  # fmt: skip
def test_the_type_field_picks_the_model(payload: dict[str, Any], model: type) -> None:
    method = METHODS.validate_python(payload)
    assert type(method) is model
    assert method.type == payload["type"]
    assert type(METHODS.validate_json(json.dumps(payload))) is model
    if "card" not in payload:  # inline card data serializes masked, by design
        assert METHODS.validate_json(method.model_dump_json()) == method


def test_method_types_are_the_union_tags() -> None:
    assert {t.value for t in PaymentMethodType} == {"card", "bank_account", "open_banking"}


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"token": TOKEN}, "union_tag_not_found"),
        ({"type": "cash"}, "union_tag_invalid"),
        ({"type": "CARD", "token": TOKEN}, "union_tag_invalid"),
        ({"type": None, "token": TOKEN}, "union_tag_invalid"),
        ("card", "model_attributes_type"),
    ],
)
def test_a_missing_or_unknown_type_is_refused(payload: Any, error: str) -> None:
    assert error_types(refused(payload)) == [error]


def test_the_union_reports_the_branch_in_the_error_location() -> None:
    exc = refused({"type": "card", "card": {**CARD, "cvc": "12"}})
    assert [e["loc"] for e in exc.errors()] == [("card", "card", "cvc")]
    assert error_types(exc) == ["invalid_cvc"]


# -- cards -------------------------------------------------------------------------------------


def test_card_by_token_or_inline() -> None:
    by_token = CardMethod(token=TOKEN)
    assert (by_token.token, by_token.card) == (TOKEN, None)
    inline = CardMethod(card=CardData(**CARD))
    assert inline.token is None
    assert inline.card is not None
    assert inline.card.number.last4 == "4242"


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "card", "token": TOKEN, "card": CARD},  # both
        {"type": "card"},  # neither
        {"type": "card", "token": None, "card": None},
    ],
)
def test_card_needs_exactly_one_source(payload: dict[str, Any]) -> None:
    assert error_types(refused(payload)) == ["invalid_request"]


@pytest.mark.parametrize(
    "token",
    [TOKEN, "tok_" + "A1" * 8, "tok_" + "z" * 64, luhn_break("4242424242424242"),
     luhn_break("1" * 12), luhn_break("9" * 19)],
)  # fmt: skip
def test_valid_tokens(token: str) -> None:
    assert CardMethod(token=token).token == token


@pytest.mark.parametrize(
    "token",
    [
        "tok_" + "a" * 15,
        "tok_" + "a" * 65,
        "tok_" + "a" * 15 + "-",
        "TOK_" + "a" * 16,
        "tok_" + "\u0430" * 16,  # Cyrillic a
        " " + TOKEN,
        TOKEN + "\n",
        "",
        "4242424242424242",  # a PAN in the token field: refused, not stored in clear
        luhn_complete("1" * 11),
        "4242 4242 4242 4242",
        luhn_break("1" * 11),  # 11 digits
        luhn_break("1" * 20),  # 20 digits
    ],
)
def test_invalid_tokens(token: str) -> None:
    assert error_types(refused({"type": "card", "token": token})) == ["invalid_request"]


@PROPERTY
@given(st.integers(12, 19).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n)))
def test_numeric_tokens_are_exactly_the_luhn_invalid_ones(digits: str) -> None:
    if oracle_luhn(digits):
        refused({"type": "card", "token": digits})
    else:
        assert CardMethod(token=digits).token == digits


def test_card_data_fields() -> None:
    card = CardData(**CARD, holder_name="Ada Lovelace")
    assert (card.exp_month, card.exp_year, card.holder_name) == (12, NEXT_YEAR, "Ada Lovelace")
    assert card.is_expired(date(NEXT_YEAR + 1, 1, 1))
    assert not card.is_expired(date(NEXT_YEAR, 12, 31))
    assert CardData(number=CARD["number"], exp_month=1, exp_year=NEXT_YEAR).cvc is None


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"exp_month": "12"}, "int_type"),
        ({"exp_year": 2030.0}, "int_type"),
        ({"exp_month": 13}, "invalid_expiry"),
        ({"exp_year": 2001}, "invalid_expiry"),
        ({"holder_name": "x" * 201}, "string_too_long"),
        ({"holder_name": "4242424242424242"}, "invalid_card"),
        ({"holder_name": "Ada 4242 4242 4242 4242"}, "invalid_card"),
        ({"number": "4242424242424241"}, "invalid_card_number"),
        ({"cvc": "12345"}, "invalid_cvc"),
        ({"brand": "visa"}, "extra_forbidden"),
    ],
)
def test_card_data_refusals(change: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError) as info:
        CardData(**{**CARD, **change})
    assert error_types(info.value) == [error]


def test_holder_names_with_a_few_digits_are_fine() -> None:
    assert CardData(**CARD, holder_name="Ada Lovelace 3rd").holder_name == "Ada Lovelace 3rd"


@pytest.mark.parametrize(
    "name", ["Ada\x00", "Ada\nLovelace", "Ada\x1b[31m", "Ada\x85", "evil\u202egpj.exe", "A\u2066da"]
)
def test_holder_names_with_control_or_bidi_override_characters_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        CardData(**CARD, holder_name=name)
    assert error_types(info.value) == ["invalid_card"]
    assert info.value.errors()[0]["loc"] == ("holder_name",)
    with pytest.raises(ValidationError) as info:
        BankAccountMethod(holder_name=name, iban=IBAN_DE)
    assert error_types(info.value) == ["invalid_bank_account"]


def test_holder_names_in_any_script_are_fine() -> None:
    # Joiners are format characters that scripts need (Persian, Devanagari); only overrides
    # and isolates are refused.
    for name in (
        "Zoë O'Brien-Łukasz",
        "\u0645\u06cc\u200c\u0631\u0632\u0627",
        "\u0915\u094d\u200d\u0937",
    ):
        assert CardData(**CARD, holder_name=name).holder_name == name
        assert BankAccountMethod(holder_name=name, iban=IBAN_DE).holder_name == name


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"exp_month": 13}, ("exp_month",)),
        ({"exp_month": 0}, ("exp_month",)),
        ({"exp_year": 99}, ("exp_year",)),
        ({"exp_year": NEXT_YEAR + 40}, ("exp_year",)),
        ({"exp_year": NEXT_YEAR - 3}, ()),  # expired: month and year together, the card's
    ],
)
def test_expiry_errors_name_their_field(change: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        CardData(**{**CARD, **change})
    [error] = info.value.errors()
    assert (error["type"], error["loc"]) == ("invalid_expiry", loc)


def test_card_models_are_immutable() -> None:
    card = CardData(**CARD)
    with pytest.raises(ValidationError):
        card.exp_month = 1  # type: ignore[misc]


# -- bank accounts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_iban", "compact"),
    [
        (IBAN_DE, IBAN_DE),
        (IBAN_GB, IBAN_GB),
        ("GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432"),
        ("de89 3704 0044 0532 0130 00", IBAN_DE),
        ("FR1420041010050500013M02606", "FR1420041010050500013M02606"),
        ("NL91ABNA0417164300", "NL91ABNA0417164300"),
    ],
)
def test_valid_ibans_are_kept_compact(given_iban: str, compact: str) -> None:
    assert validate_iban(given_iban) == compact
    method = BankAccountMethod(holder_name="Ada", iban=given_iban)
    assert method.iban == compact
    assert not method.is_us
    assert method.masked_account == "*" * (len(compact) - 4) + compact[-4:]


@pytest.mark.parametrize(
    "iban",
    [
        "DE88370400440532013000",  # wrong check digits
        "DE89370400440532013001",
        "GB28NWBK60161331926819",
        "DE8937040044053201300",  # one digit short
        "XX89370400440532013000",  # no such country
        "DE89 3704 0044 0532 0130 0\u0660",  # Arabic-Indic zero
        "",
        "4242424242424242",
    ],
)
def test_invalid_ibans(iban: str) -> None:
    with pytest.raises(InvalidBankAccountError):
        validate_iban(iban)
    with pytest.raises(ValidationError) as info:
        BankAccountMethod(holder_name="Ada", iban=iban)
    assert error_types(info.value) == ["invalid_bank_account"]


@pytest.mark.parametrize("bic", ["DEUTDEFF", "DEUTDEFF500", "COBADEFFXXX", "NWBKGB2L", "deutdeff"])
def test_valid_bics(bic: str) -> None:
    method = BankAccountMethod(holder_name="Ada", iban=IBAN_DE, bic=bic)
    assert method.bic == bic.upper()


@pytest.mark.parametrize("bic", ["DEUT", "DEUTDEFF5", "12345678", "DEUTXXFF", "DEUTDEFF50", ""])
def test_invalid_bics(bic: str) -> None:
    with pytest.raises(ValidationError) as info:
        BankAccountMethod(holder_name="Ada", iban=IBAN_DE, bic=bic)
    assert error_types(info.value) == ["invalid_bank_account"]


def oracle_aba(number: str) -> bool:
    """ABA check: 3, 7, 1 weights over the nine digits sum to a multiple of ten."""
    if len(number) != 9 or any(char not in "0123456789" for char in number):
        return False
    weights = [3, 7, 1] * 3
    return sum(w * int(d) for w, d in zip(weights, number, strict=True)) % 10 == 0


@pytest.mark.parametrize("routing", ["011000015", "021000021", "026009593", "121000358"])
def test_valid_routing_numbers(routing: str) -> None:
    assert oracle_aba(routing)
    assert validate_aba_routing_number(routing) == routing


@pytest.mark.parametrize(
    "routing",
    ["011000016", "01100001", "0110000150", " 011000015", "011000015 ", "011-000-015",
     "\uff10\uff11\uff11000015", "\u0660\u0661\u0661000015", ""],
)  # fmt: skip
def test_invalid_routing_numbers(routing: str) -> None:
    with pytest.raises(InvalidBankAccountError):
        validate_aba_routing_number(routing)


@PROPERTY
@given(st.text("0123456789", min_size=9, max_size=9))
def test_routing_check_digit_matches_the_oracle(routing: str) -> None:
    if oracle_aba(routing):
        assert validate_aba_routing_number(routing) == routing
    else:
        with pytest.raises(InvalidBankAccountError):
            validate_aba_routing_number(routing)


def test_us_account() -> None:
    method = BankAccountMethod(holder_name="Ada", **US_ACCOUNT)  # type: ignore[arg-type]
    assert method.is_us
    assert method.account_type is BankAccountType.CHECKING
    assert method.masked_account == "********6789"
    assert "000123456789" not in repr(method)


@pytest.mark.parametrize(
    "account_number", ["123", "1" * 18, "12a4", "1234 5678", "\uff11\uff12\uff13\uff14", ""]
)
def test_invalid_account_numbers(account_number: str) -> None:
    with pytest.raises(ValidationError) as info:
        BankAccountMethod(holder_name="Ada", **{**US_ACCOUNT, "account_number": account_number})
    assert error_types(info.value) == ["invalid_bank_account"]


@pytest.mark.parametrize("account_number", ["1234", "1" * 17])
def test_account_number_bounds(account_number: str) -> None:
    fields = {**US_ACCOUNT, "account_number": account_number}
    method = BankAccountMethod(holder_name="Ada", **fields)
    assert method.account_number == account_number


@pytest.mark.parametrize(
    "fields",
    [
        {"iban": IBAN_DE, "routing_number": "011000015"},  # IBAN and US fields mixed
        {"iban": IBAN_DE, "account_number": "000123456789"},
        {"iban": IBAN_DE, "account_type": "savings"},
        {"iban": IBAN_DE, **US_ACCOUNT},
        {"routing_number": "011000015", "account_number": "000123456789"},  # no account type
        {"routing_number": "011000015", "account_type": "checking"},
        {**US_ACCOUNT, "bic": "DEUTDEFF"},  # a BIC without an IBAN
        {},
    ],
)
def test_schemes_do_not_mix(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        BankAccountMethod(holder_name="Ada", **fields)
    assert error_types(info.value) == ["invalid_bank_account"]


@pytest.mark.parametrize(
    "change",
    [{"holder_name": ""}, {"holder_name": "x" * 201}, {"account_type": "brokerage"},
     {"country": "de"}, {"country": "DEU"}],
)  # fmt: skip
def test_other_bank_account_fields(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BankAccountMethod(**{"holder_name": "Ada", **US_ACCOUNT, **change})


# -- open banking ------------------------------------------------------------------------------


def creditor(**extra: Any) -> dict[str, Any]:
    return {
        "scheme_name": "UK.OBIE.SortCodeAccountNumber",
        "identification": "08080021325698",
        **extra,
    }


def test_open_banking_payer() -> None:
    method = OpenBankingMethod.model_validate(
        {
            "type": "open_banking",
            "creditor_account": creditor(name="ACME Ltd"),
            "debtor_account": creditor(identification="08080021325699"),
            "return_url": "https://shop.example/return",
        }
    )
    assert method.scheme is OpenBankingScheme.UK_OPEN_BANKING
    assert method.creditor_account.name == "ACME Ltd"
    assert method.debtor_account is not None
    berlin = OpenBankingMethod.model_validate(
        {"scheme": "berlin_group", "creditor_account": creditor(scheme_name="IBAN")}
    )
    assert berlin.scheme is OpenBankingScheme.BERLIN_GROUP
    assert berlin.debtor_account is None


@pytest.mark.parametrize(
    "change",
    [
        {"creditor_account": None},
        {"creditor_account": creditor(scheme_name="")},
        {"creditor_account": creditor(identification="")},
        {"creditor_account": creditor(identification="x" * 257)},
        {"creditor_account": creditor(extra=1)},
        {"scheme": "psd2"},
        {"return_url": "javascript:alert(1)"},
        {"return_url": "ftp://shop.example"},
        {"return_url": "https://" + "a" * 2048},
    ],
)
def test_open_banking_refusals(change: dict[str, Any]) -> None:
    payload = {"type": "open_banking", "creditor_account": creditor(), **change}
    refused(payload)


def test_methods_inside_a_request() -> None:
    request = AuthorizeRequest.model_validate(
        {
            "amount": {"value": 1050, "currency": "EUR"},
            "payment_method": {"type": "bank_account", "holder_name": "Ada", "iban": IBAN_DE},
        }
    )
    assert isinstance(request.payment_method, BankAccountMethod)
    dumped = json.loads(request.model_dump_json())
    assert dumped["payment_method"]["type"] == "bank_account"
    assert dumped["payment_method"]["iban"] == IBAN_DE
