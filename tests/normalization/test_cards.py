"""Card validation (RELIABILITY.md item 2): only ASCII ``[0-9]{12,19}`` passing Luhn is a PAN."""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalization import (
    MAX_EXPIRY_YEARS,
    CardNumber,
    CardSecurityCode,
    InvalidCardNumberError,
    InvalidExpiryError,
    InvalidSecurityCodeError,
    cards,
    is_valid_pan,
    luhn_valid,
    validate_cvc,
    validate_expiry,
    validate_pan,
)
from tests.normalization.strategies import (
    ASCII_DIGITS,
    NON_ASCII_DIGIT_SETS,
    PROPERTY,
    luhn_break,
    luhn_complete,
    luhn_valid_digits,
    near_pans,
    oracle_is_pan,
    oracle_luhn,
    translate_digits,
    valid_pans,
)

VISA_TEST = "4242424242424242"


def test_oracle_agrees_with_published_test_numbers() -> None:
    # Published scheme test numbers: the oracle itself must be right before it judges anything.
    for pan in (VISA_TEST, "5555555555554444", "378282246310005", "6011111111111117"):
        assert oracle_luhn(pan)
        assert oracle_is_pan(pan)
    assert not oracle_luhn("4242424242424241")


# -- the accepted set, against the oracle ------------------------------------------------------


@PROPERTY
@given(st.one_of(near_pans, valid_pans, luhn_valid_digits(10, 21)))
def test_is_valid_pan_matches_the_oracle(candidate: str) -> None:
    expected = oracle_is_pan(candidate)
    assert is_valid_pan(candidate) is expected
    if expected:
        assert validate_pan(candidate) == candidate
    else:
        with pytest.raises(InvalidCardNumberError):
            validate_pan(candidate)


@PROPERTY
@given(st.text(alphabet=ASCII_DIGITS, min_size=1, max_size=30))
def test_luhn_valid_matches_the_oracle(digits: str) -> None:
    assert luhn_valid(digits) is oracle_luhn(digits)


@PROPERTY
@given(st.text(alphabet=ASCII_DIGITS, min_size=1, max_size=30))
def test_luhn_valid_matches_python_stdnum(digits: str) -> None:
    """The hot path sums Luhn itself; python-stdnum stays the reference it must agree with."""
    from stdnum import luhn

    assert luhn_valid(digits) is luhn.is_valid(digits)


@PROPERTY
@given(valid_pans)
def test_every_valid_pan_is_accepted_and_its_check_digit_matters(pan: str) -> None:
    assert is_valid_pan(pan)
    assert validate_pan(pan) == pan
    assert CardNumber(pan).reveal() == pan
    assert not is_valid_pan(luhn_break(pan))


@pytest.mark.parametrize("length", [12, 13, 15, 16, 19])
def test_lengths_12_to_19_are_accepted(length: int) -> None:
    pan = luhn_complete("4" + "1" * (length - 2))
    assert len(pan) == length
    assert is_valid_pan(pan)


@pytest.mark.parametrize("length", [1, 2, 8, 11, 20, 21, 40])
def test_luhn_valid_numbers_of_other_lengths_are_refused(length: int) -> None:
    number = luhn_complete("4" + "1" * (length - 2)) if length > 1 else "0"
    assert len(number) == length
    assert oracle_luhn(number)
    assert not is_valid_pan(number)


# -- look-alikes, separators, padding, signs, types --------------------------------------------


@PROPERTY
@given(valid_pans, st.sampled_from(sorted(NON_ASCII_DIGIT_SETS)), st.data())
def test_non_ascii_digits_are_refused(pan: str, script: str, data: st.DataObject) -> None:
    digits = NON_ASCII_DIGIT_SETS[script]
    whole = translate_digits(pan, digits)
    assert whole.isdigit()  # what str.isdigit/int() would accept ...
    assert int(whole) == int(pan)
    assert not is_valid_pan(whole)  # ... is not a PAN
    position = data.draw(st.integers(0, len(pan) - 1))
    one = pan[:position] + translate_digits(pan[position], digits) + pan[position + 1 :]
    assert not is_valid_pan(one)


@pytest.mark.parametrize("script", sorted(NON_ASCII_DIGIT_SETS))
def test_named_non_ascii_digit_scripts_are_refused(script: str) -> None:
    with pytest.raises(InvalidCardNumberError):
        validate_pan(translate_digits(VISA_TEST, NON_ASCII_DIGIT_SETS[script]))


@PROPERTY
@given(valid_pans, st.sampled_from(list(" _-.\t\u00a0\u2007\u200b/,")), st.data())
def test_inner_separators_are_refused(pan: str, separator: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(1, len(pan) - 1))
    assert not is_valid_pan(pan[:position] + separator + pan[position:])


@pytest.mark.parametrize(
    "variant",
    [
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "4242_4242_4242_4242",
        "4242.4242.4242.4242",
        " " + VISA_TEST,
        VISA_TEST + " ",
        VISA_TEST + "\n",
        "\t" + VISA_TEST,
        "\u00a0" + VISA_TEST,
        VISA_TEST + "\x00",
        "+" + VISA_TEST,
        "-" + VISA_TEST,
        "0x" + VISA_TEST,
        luhn_break(VISA_TEST[:-1]),  # 15 digits, Luhn fails
        VISA_TEST + "0",  # 17 digits, Luhn fails
        "4242424242424241",
        "",
        "abcdabcdabcdabcd",
    ],
)
def test_padding_signs_and_separators_are_refused(variant: str) -> None:
    assert not is_valid_pan(variant)
    with pytest.raises(InvalidCardNumberError):
        validate_pan(variant)
    with pytest.raises(InvalidCardNumberError):
        CardNumber(variant)


@pytest.mark.parametrize(
    "value",
    [int(VISA_TEST), float(VISA_TEST), VISA_TEST.encode(), bytearray(VISA_TEST.encode()), None,
     [VISA_TEST], True, object()],
)  # fmt: skip
def test_non_strings_are_refused(value: object) -> None:
    assert not is_valid_pan(value)
    with pytest.raises(InvalidCardNumberError):
        validate_pan(value)
    with pytest.raises(InvalidCardNumberError):
        CardNumber(value)  # type: ignore[arg-type]


def test_the_error_never_carries_the_number() -> None:
    for variant in (
        VISA_TEST + " ",
        translate_digits(VISA_TEST, NON_ASCII_DIGIT_SETS["fullwidth"]),
    ):
        with pytest.raises(InvalidCardNumberError) as info:
            validate_pan(variant)
        assert "4242" not in str(info.value)
        assert "4242" not in repr(info.value)
        assert info.value.code == "invalid_card_number"


# -- expiry ------------------------------------------------------------------------------------

TODAY = date(2025, 6, 15)


@pytest.mark.parametrize(
    ("month", "year"),
    [(6, 2025), (12, 2025), (1, 2026), (12, 2045), (1, 2045), (7, 2025)],
)
def test_expiry_accepted(month: int, year: int) -> None:
    assert validate_expiry(month, year, today=TODAY) == (month, year)


@pytest.mark.parametrize(
    ("month", "year"),
    [
        (0, 2030),
        (13, 2030),
        (-1, 2030),
        (5, 2025),  # last month
        (12, 2024),
        (1, 2000),
        (1, 2046),  # more than 20 years ahead
        (12, 9999),
        (12, 30),  # two-digit year
        (12, 10000),
        (True, 2030),
        (False, 2030),
        (12, True),
        ("12", 2030),
        (12, "2030"),
        (12.0, 2030),
        (12, 2030.0),
        (None, 2030),
        (12, None),
    ],
)
def test_expiry_refused(month: object, year: object) -> None:
    with pytest.raises(InvalidExpiryError):
        validate_expiry(month, year, today=TODAY)


def test_expiry_window_is_twenty_years() -> None:
    assert MAX_EXPIRY_YEARS == 20
    validate_expiry(1, TODAY.year + MAX_EXPIRY_YEARS, today=TODAY)
    with pytest.raises(InvalidExpiryError):
        validate_expiry(1, TODAY.year + MAX_EXPIRY_YEARS + 1, today=TODAY)


def test_expiry_defaults_to_today() -> None:
    today = date.today()
    assert validate_expiry(today.month, today.year) == (today.month, today.year)
    with pytest.raises(InvalidExpiryError):
        validate_expiry(today.month, today.year - 1)


def test_expiry_default_month_follows_the_clock_across_months(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The current month is cached between clock reads; the cache never outlives its month,
    forwards (a new month begins) or backwards (the clock is set back)."""
    clock = [datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()]

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> FrozenDatetime:
            return cls.fromtimestamp(clock[0], tz)

    monkeypatch.setattr(cards, "datetime", FrozenDatetime)
    monkeypatch.setattr(cards, "time", SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(cards, "_MONTH", (0.0, 0.0, 0, 0))
    assert validate_expiry(12, 2030) == (12, 2030)
    clock[0] += 1  # 2031-01-01T00:00:00Z
    with pytest.raises(InvalidExpiryError):
        validate_expiry(12, 2030)
    assert validate_expiry(1, 2031) == (1, 2031)
    assert validate_expiry(1, 2031 + MAX_EXPIRY_YEARS) == (1, 2031 + MAX_EXPIRY_YEARS)
    clock[0] -= 2  # set back into December
    assert validate_expiry(12, 2030) == (12, 2030)
    with pytest.raises(InvalidExpiryError):
        validate_expiry(1, 2031 + MAX_EXPIRY_YEARS)


@PROPERTY
@given(st.integers(-2, 15), st.integers(1990, 2060), st.dates(date(2000, 1, 1), date(2040, 12, 31)))
def test_expiry_matches_the_rule(month: int, year: int, today: date) -> None:
    valid = (
        1 <= month <= 12
        and (year, month) >= (today.year, today.month)
        and year <= today.year + MAX_EXPIRY_YEARS
    )
    if valid:
        assert validate_expiry(month, year, today=today) == (month, year)
    else:
        with pytest.raises(InvalidExpiryError):
            validate_expiry(month, year, today=today)


# -- CVC ---------------------------------------------------------------------------------------


@PROPERTY
@given(st.text(alphabet=st.sampled_from([*(ASCII_DIGITS * 4), *" \u0663\uff17a-+"]), max_size=6))
def test_cvc_is_three_or_four_ascii_digits(candidate: str) -> None:
    expected = 3 <= len(candidate) <= 4 and all(char in ASCII_DIGITS for char in candidate)
    if expected:
        assert validate_cvc(candidate) == candidate
        assert CardSecurityCode(candidate).reveal() == candidate
    else:
        with pytest.raises(InvalidSecurityCodeError):
            validate_cvc(candidate)


@pytest.mark.parametrize(
    "value",
    ["12", "12345", " 123", "123 ", "12 3", "+123", "-123", "\u0661\u0662\u0663",
     "\uff11\uff12\uff13", "12a", "", 123, 1234, None, True, b"123"],
)  # fmt: skip
def test_cvc_refused(value: object) -> None:
    with pytest.raises(InvalidSecurityCodeError):
        validate_cvc(value)
    with pytest.raises(InvalidSecurityCodeError):
        CardSecurityCode(value)  # type: ignore[arg-type]
