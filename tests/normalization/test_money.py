"""Money: exact round trips for every ISO 4217 currency Tessera knows, and loud failures."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from iso4217 import Currency
from pydantic import ValidationError

from normalization import (
    MAX_AMOUNT_MINOR,
    MAX_PROVIDER_EXPONENT,
    CurrencyMismatchError,
    InvalidAmountError,
    Money,
    UnknownCurrencyError,
    currency_exponent,
    known_currencies,
)
from tests.normalization.strategies import NON_ASCII_DIGIT_SETS, PROPERTY, translate_digits

CURRENCIES = sorted(known_currencies())
currencies = st.sampled_from(CURRENCIES)
amounts = st.integers(min_value=0, max_value=MAX_AMOUNT_MINOR)
# Small amounts and amounts with many trailing zeros find the edge cases; the rest covers range.
interesting_amounts = st.one_of(
    amounts,
    st.integers(0, 10_000),
    st.integers(0, 10**12).map(lambda v: v * 10**4),
).filter(lambda v: v <= MAX_AMOUNT_MINOR)
monies = st.builds(Money, interesting_amounts, currencies)


def oracle_major_string(value: int, exponent: int) -> str:
    """Written with Decimal arithmetic rather than integer division, as a second opinion."""
    if exponent == 0:
        return str(value)
    return f"{Decimal(value) / Decimal(10) ** exponent:.{exponent}f}"


# -- the currency data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("JPY", 0),
        ("KRW", 0),
        ("EUR", 2),
        ("USD", 2),
        ("GBP", 2),
        ("KWD", 3),
        ("BHD", 3),
        ("JOD", 3),
        ("CLF", 4),
    ],
)
def test_exponents_of_named_currencies(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent
    assert Money(1, currency).exponent == exponent


def test_known_currencies_are_exactly_the_iso_data_with_an_exponent() -> None:
    expected = {c.code for c in Currency if c.exponent is not None}
    assert known_currencies() == expected
    assert len(expected) > 150  # the real list, not a hand-typed handful
    for code in expected:
        assert currency_exponent(code) == Currency(code).exponent


@pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XXX", "XTS"])
def test_funds_and_metal_codes_without_an_exponent_are_unknown(code: str) -> None:
    assert code not in known_currencies()
    with pytest.raises(UnknownCurrencyError):
        currency_exponent(code)


# -- round trips, every currency --------------------------------------------------------------


@pytest.mark.parametrize("currency", CURRENCIES)
def test_every_currency_round_trips_at_its_edges(currency: str) -> None:
    exponent = currency_exponent(currency)
    for value in (0, 1, 10**exponent - 1, 10**exponent, 10**exponent + 1, MAX_AMOUNT_MINOR):
        money = Money(value, currency)
        text = money.to_major_string()
        assert text == oracle_major_string(value, exponent)
        assert Money.from_major(text, currency) == money
        assert Money.from_major(money.to_decimal(), currency) == money
        assert Money.model_validate_json(money.model_dump_json()) == money
        for provider_exponent in range(exponent, exponent + 3):
            minor = money.to_provider_minor(provider_exponent)
            assert Money.from_provider_minor(minor, currency, provider_exponent) == money


@PROPERTY
@given(monies)
def test_major_string_round_trip(money: Money) -> None:
    exponent = currency_exponent(money.currency)
    text = money.to_major_string()
    assert text == oracle_major_string(money.value, exponent)
    if exponent:
        _, frac = text.split(".")
        assert len(frac) == exponent
    else:
        assert "." not in text
    assert Money.from_major(text, money.currency) == money
    assert str(money) == f"{text} {money.currency}"


@PROPERTY
@given(monies, st.integers(1, 6))
def test_major_string_with_trailing_zeros_is_accepted(money: Money, zeros: int) -> None:
    text = money.to_major_string()
    padded = text + ("0" * zeros if "." in text else "." + "0" * zeros)
    assert Money.from_major(padded, money.currency) == money


@PROPERTY
@given(monies)
def test_decimal_round_trip(money: Money) -> None:
    decimal = money.to_decimal()
    assert decimal == Decimal(money.to_major_string())
    assert decimal * (Decimal(10) ** money.exponent) == money.value
    assert Money.from_major(decimal, money.currency) == money


@PROPERTY
@given(monies)
def test_json_round_trip(money: Money) -> None:
    text = money.model_dump_json()
    assert json.loads(text) == {"value": money.value, "currency": money.currency}
    assert Money.model_validate_json(text) == money
    assert Money.model_validate(money.model_dump()) == money
    assert Money.model_validate(json.loads(text)) == money


@PROPERTY
@given(monies, st.integers(0, 6))
def test_provider_exponent_at_or_above_iso_is_exact(money: Money, extra: int) -> None:
    provider_exponent = money.exponent + extra
    minor = money.to_provider_minor(provider_exponent)
    assert minor == money.value * 10**extra
    assert Money.from_provider_minor(minor, money.currency, provider_exponent) == money


@PROPERTY
@given(monies, st.integers(1, 4))
def test_provider_exponent_below_iso_is_exact_or_an_error(money: Money, fewer: int) -> None:
    assume(money.exponent >= fewer)
    provider_exponent = money.exponent - fewer
    factor = 10**fewer
    if money.value % factor:
        with pytest.raises(InvalidAmountError):
            money.to_provider_minor(provider_exponent)
    else:
        minor = money.to_provider_minor(provider_exponent)
        assert minor * factor == money.value
        assert Money.from_provider_minor(minor, money.currency, provider_exponent) == money


@PROPERTY
@given(
    currencies,
    st.one_of(amounts, st.integers(0, MAX_AMOUNT_MINOR * 10**6), st.integers(0, 10**6)),
    st.integers(0, 8),
)
def test_from_provider_minor_is_exact_or_an_error(currency: str, value: int, exp: int) -> None:
    iso = currency_exponent(currency)
    scaled = Decimal(value) * Decimal(10) ** (iso - exp)  # value in ISO minor units, exactly
    if scaled != scaled.to_integral_value() or scaled > MAX_AMOUNT_MINOR:
        with pytest.raises(InvalidAmountError):
            Money.from_provider_minor(value, currency, exp)
    else:
        assert Money.from_provider_minor(value, currency, exp) == Money(int(scaled), currency)


def test_provider_exponent_examples() -> None:
    # HUF is 2-decimal in ISO 4217 but some providers treat it as 0-decimal.
    assert Money(150000, "HUF").to_provider_minor(0) == 1500
    with pytest.raises(InvalidAmountError):
        Money(150050, "HUF").to_provider_minor(0)
    assert Money.from_provider_minor(1500, "HUF", 0) == Money(150000, "HUF")
    # A provider sending KWD with 2 decimals.
    assert Money.from_provider_minor(1050, "KWD", 2) == Money(10500, "KWD")
    assert Money(10500, "KWD").to_provider_minor(2) == 1050
    with pytest.raises(InvalidAmountError):
        Money(10505, "KWD").to_provider_minor(2)
    # A provider sending EUR with 3 decimals: only whole cents are EUR amounts.
    assert Money.from_provider_minor(10500, "EUR", 3) == Money(1050, "EUR")
    with pytest.raises(InvalidAmountError):
        Money.from_provider_minor(10505, "EUR", 3)
    assert Money(1, "JPY").to_provider_minor() == 1
    assert Money(1, "CLF").to_major_string() == "0.0001"
    assert Money(1, "KWD").to_major_string() == "0.001"
    assert Money(1050, "JPY").to_major_string() == "1050"


@pytest.mark.parametrize("exponent", [-1, MAX_PROVIDER_EXPONENT + 1, 2.0, 3.0, True, "2", None])
def test_bad_provider_exponents_are_refused(exponent: object) -> None:
    money = Money(1050, "EUR")
    if exponent is not None:
        with pytest.raises(InvalidAmountError):
            money.to_provider_minor(exponent)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmountError):
        Money.from_provider_minor(1050, "EUR", exponent)  # type: ignore[arg-type]


# -- construction errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [10.0, 10.5, 0.0, float("nan"), float("inf"), True, False, Decimal("10"), "10", None, [10]],
)
def test_non_integer_values_are_refused(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Money(value, "EUR")  # type: ignore[arg-type]
    assert info.value.errors()[0]["type"] == "invalid_amount"
    with pytest.raises(InvalidAmountError):
        Money.of(value, "EUR")  # type: ignore[arg-type]


def test_an_integer_past_64_bits_is_too_large_not_a_float() -> None:
    # orjson reads a JSON integer that does not fit 64 bits as a float.
    for value in (float(10**30), float(2**64)):
        with pytest.raises(ValidationError) as info:
            Money(value, "EUR")  # type: ignore[arg-type]
        assert "cannot exceed" in info.value.errors()[0]["msg"]


@pytest.mark.parametrize("value", [-1, -(10**20), MAX_AMOUNT_MINOR + 1, 10**40])
def test_out_of_range_values_are_refused(value: int) -> None:
    with pytest.raises(ValidationError) as info:
        Money(value, "EUR")
    assert info.value.errors()[0]["type"] == "invalid_amount"
    with pytest.raises(InvalidAmountError):
        Money.of(value, "EUR")


def test_bounds_are_inclusive() -> None:
    assert Money(0, "EUR").value == 0
    assert Money(MAX_AMOUNT_MINOR, "EUR").value == MAX_AMOUNT_MINOR
    assert MAX_AMOUNT_MINOR == 2**53 - 1
    assert Money.zero("JPY") == Money(0, "JPY")


@pytest.mark.parametrize(
    "body",
    [
        '{"value": 10.0, "currency": "EUR"}',
        '{"value": 1e3, "currency": "EUR"}',
        '{"value": "1050", "currency": "EUR"}',
        '{"value": true, "currency": "EUR"}',
        '{"value": -1, "currency": "EUR"}',
        '{"value": 9007199254740992, "currency": "EUR"}',
        '{"value": 99999999999999999999999999, "currency": "EUR"}',
        '{"value": 1050, "currency": "eur"}',
        '{"value": 1050, "currency": "XYZ"}',
        '{"value": 1050, "currency": 978}',
        '{"value": 1050}',
        '{"value": 1050, "currency": "EUR", "extra": 1}',
        '{"value": NaN, "currency": "EUR"}',
    ],
)
def test_bad_json_is_refused(body: str) -> None:
    with pytest.raises(ValidationError):
        Money.model_validate_json(body)


@pytest.mark.parametrize(
    "currency",
    ["eur", "Eur", "EURO", "EU", "XYZ", " EUR", "EUR ", "", "\u20ac", "\uff25\uff35\uff32", 978],
)
def test_unknown_currencies_are_refused(currency: object) -> None:
    with pytest.raises(UnknownCurrencyError):
        currency_exponent(currency)  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrencyError):
        Money.of(1, currency)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as info:
        Money(1, currency)  # type: ignore[arg-type]
    assert info.value.errors()[0]["type"] == "unknown_currency"


def test_unknown_currency_error_names_only_code_shaped_input() -> None:
    with pytest.raises(UnknownCurrencyError, match="'eur'"):
        currency_exponent("eur")
    with pytest.raises(UnknownCurrencyError) as info:
        currency_exponent("4111111111111111")
    assert "4111" not in str(info.value)


# -- from_major errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("1.005", "EUR"),
        ("0.001", "USD"),
        ("1.5", "JPY"),
        ("1.01", "KRW"),
        ("1.0001", "KWD"),
        ("0.00001", "CLF"),
    ],
)
def test_too_many_decimals_are_an_error_never_rounded(text: str, currency: str) -> None:
    with pytest.raises(InvalidAmountError, match="decimal places"):
        Money.from_major(text, currency)
    with pytest.raises(InvalidAmountError):
        Money.from_major(Decimal(text), currency)


@pytest.mark.parametrize(
    "text",
    [
        translate_digits("10", NON_ASCII_DIGIT_SETS["arabic_indic"]),  # U+0661 U+0660
        translate_digits("10.50", NON_ASCII_DIGIT_SETS["fullwidth"]),
        translate_digits("10", NON_ASCII_DIGIT_SETS["devanagari"]),
        "1" + NON_ASCII_DIGIT_SETS["arabic_indic"][0],
        "+10",
        "-10",
        "-0",
        " 10",
        "10 ",
        "1 0",
        "10\n",
        "1e3",
        "1E3",
        "1,000",
        "1_000",
        "10,50",
        "",
        ".",
        "10.",
        ".5",
        "0x10",
        "NaN",
        "Infinity",
        "ten",
    ],
)
def test_malformed_major_strings_are_refused(text: str) -> None:
    with pytest.raises(InvalidAmountError):
        Money.from_major(text, "EUR")


@pytest.mark.parametrize(
    "amount", [10.0, 10, True, None, Decimal("NaN"), Decimal("Infinity"), Decimal("-1")]
)
def test_non_string_non_decimal_major_amounts_are_refused(amount: object) -> None:
    with pytest.raises(InvalidAmountError):
        Money.from_major(amount, "EUR")  # type: ignore[arg-type]


def test_huge_major_strings_fail_cleanly() -> None:
    # int() raises ValueError on strings over 4,300 digits; Money must raise its own error.
    with pytest.raises(InvalidAmountError):
        Money.from_major("1" * 5000, "EUR")
    with pytest.raises(InvalidAmountError):
        Money.from_major("9007199254740992", "JPY")
    assert Money.from_major("0" * 5000 + "1", "JPY") == Money(1, "JPY")
    assert Money.from_major("1." + "0" * 5000, "EUR") == Money(100, "EUR")
    assert Money.from_major("90071992547409.91", "EUR") == Money(MAX_AMOUNT_MINOR, "EUR")
    with pytest.raises(InvalidAmountError):
        Money.from_major("90071992547409.92", "EUR")


def test_from_major_refuses_unknown_currency_first() -> None:
    with pytest.raises(UnknownCurrencyError):
        Money.from_major("10", "XAU")


# -- arithmetic and comparisons ----------------------------------------------------------------


@PROPERTY
@given(currencies, st.integers(0, MAX_AMOUNT_MINOR // 2), st.integers(0, MAX_AMOUNT_MINOR // 2))
def test_arithmetic_and_order_in_one_currency(currency: str, a: int, b: int) -> None:
    x, y = Money(a, currency), Money(b, currency)
    assert (x + y).value == a + b
    assert (x + y).currency == currency
    assert (x < y) == (a < b)
    assert (x <= y) == (a <= b)
    assert (x > y) == (a > b)
    assert (x >= y) == (a >= b)
    assert (x == y) == (a == b)
    if a >= b:
        assert (x - y).value == a - b
    else:
        with pytest.raises(InvalidAmountError):
            x - y


def test_mixed_currencies_never_combine() -> None:
    eur, usd = Money(100, "EUR"), Money(100, "USD")
    for operation in (
        lambda: eur + usd,
        lambda: eur - usd,
        lambda: eur < usd,
        lambda: eur <= usd,
        lambda: eur > usd,
        lambda: eur >= usd,
    ):
        with pytest.raises(CurrencyMismatchError):
            operation()
    assert eur != usd


def test_sum_overflow_is_an_error() -> None:
    with pytest.raises(InvalidAmountError):
        Money(MAX_AMOUNT_MINOR, "EUR") + Money(1, "EUR")


def test_money_does_not_mix_with_numbers() -> None:
    money = Money(100, "EUR")
    with pytest.raises(TypeError):
        money + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        1 + money  # type: ignore[operator]
    with pytest.raises(TypeError):
        money - 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = money < 1  # type: ignore[operator]
    assert money != 100
    assert money != Decimal("1.00")


def test_money_is_immutable_hashable_and_constructed_consistently() -> None:
    money = Money(1050, "EUR")
    assert money == Money.of(1050, "EUR") == Money.from_major("10.50", "EUR")
    assert hash(money) == hash(Money.of(1050, "EUR"))
    assert len({money, Money(1050, "EUR"), Money(1050, "USD")}) == 2
    with pytest.raises(ValidationError):
        money.value = 1  # type: ignore[misc]
    assert repr(money) == "Money(1050, 'EUR')"
    assert money.amount_minor == 1050
