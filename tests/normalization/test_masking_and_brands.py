"""Masking (RELIABILITY.md item 28, PCI DSS 3.4.1) and card brand by IIN range."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given

from normalization import (
    CardBrand,
    CardData,
    CardNumber,
    CardSecurityCode,
    card_bin,
    card_brand,
    card_last4,
    mask_pan,
)
from tests.normalization.strategies import PROPERTY, pan_with_prefix, valid_pans

# -- masking -----------------------------------------------------------------------------------


def shown_positions(mask: str) -> list[int]:
    return [index for index, char in enumerate(mask) if char != "*"]


@PROPERTY
@given(valid_pans)
def test_mask_shows_at_most_bin_and_last4(pan: str) -> None:
    mask = mask_pan(pan)
    length = len(pan)
    assert len(mask) == length
    shown = shown_positions(mask)
    for index in shown:
        assert mask[index] == pan[index]
        assert index < 6 or index >= length - 4
    assert len(shown) <= 10
    hidden = length - len(shown)
    assert mask.endswith(pan[-4:])
    shows_bin = mask[:6] == pan[:6]
    if shows_bin:
        assert hidden >= 5
    else:
        assert set(mask[:-4]) == {"*"}
    # Never enough digits to rebuild the PAN: at least 5 (often more) stay hidden.
    assert hidden >= 5


@pytest.mark.parametrize(
    ("pan", "mask"),
    [
        ("4242424242424242", "424242******4242"),
        ("378282246310005", "378282*****0005"),
        ("4000000000000000006", "400000*********0006"),
        ("424242424242", "********4242"),
        ("4242424242422", "*********2422"),
        ("42424242424244", "**********4244"),
    ],
)
def test_mask_examples(pan: str, mask: str) -> None:
    assert mask_pan(pan) == mask


@PROPERTY
@given(valid_pans)
def test_bin_and_last4_follow_the_mask(pan: str) -> None:
    number = CardNumber(pan)
    assert card_last4(pan) == pan[-4:] == number.last4
    expected_bin = pan[:6] if len(pan) >= 15 else ""
    assert card_bin(pan) == expected_bin == number.bin
    assert number.masked == mask_pan(pan)


@PROPERTY
@given(valid_pans)
def test_card_number_renders_only_its_mask(pan: str) -> None:
    number = CardNumber(pan)
    mask = mask_pan(pan)
    rendered = [
        repr(number),
        str(number),
        f"{number}",
        f"{number!r}",
        f"{number:>30}",
        format(number, ""),
        "%s %r" % (number, number),  # noqa: UP031 - old-style formatting is what logging does
        repr([number]),
        repr({"n": number}),
    ]
    for text in rendered:
        assert pan not in text
        assert mask in text
    assert len(number) == len(pan)


@PROPERTY
@given(valid_pans)
def test_models_serialize_only_the_mask(pan: str) -> None:
    card = CardData(number=pan, exp_month=12, exp_year=2040, cvc="737")
    mask = mask_pan(pan)
    dumped = card.model_dump()
    assert dumped["number"] == mask
    assert dumped["cvc"] == "***"
    for text in (
        repr(card),
        str(card),
        card.model_dump_json(),
        json.dumps(card.model_dump(mode="json")),
        json.dumps(dumped),
    ):
        assert pan not in text
        assert "737" not in text.replace(mask, "")  # the BIN may contain "737" by chance
    assert json.loads(card.model_dump_json())["number"] == mask
    assert card.number.reveal() == pan
    assert card.cvc is not None
    assert card.cvc.reveal() == "737"


def test_logging_shows_only_the_mask(caplog: pytest.LogCaptureFixture) -> None:
    pan = "4242424242424242"
    card = CardData(number=pan, exp_month=12, exp_year=2040, cvc="737")
    logger = logging.getLogger("tessera.test.masking")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("card %s %r number %s cvc %s", card, card, card.number, card.cvc)
    text = caplog.text
    assert "424242******4242" in text
    assert pan not in text
    assert "737" not in text


def test_secret_equality_and_hash_do_not_need_the_value() -> None:
    a, b = CardNumber("4242424242424242"), CardNumber("4242424242424242")
    c = CardNumber("5555555555554444")
    assert a == b
    assert a != c
    assert hash(a) == hash(b)
    assert CardSecurityCode("123") != CardSecurityCode("124")
    assert a != "4242424242424242"  # never equal to the raw string


def test_json_schema_marks_secrets_write_only() -> None:
    schema = CardData.model_json_schema()
    number = schema["properties"]["number"]
    assert number["writeOnly"] is True
    assert number["pattern"] == "^[0-9]{12,19}$"


# -- brands ------------------------------------------------------------------------------------

V, M, A, D = CardBrand.VISA, CardBrand.MASTERCARD, CardBrand.AMEX, CardBrand.DISCOVER
J, DC, U, MA, X = CardBrand.JCB, CardBrand.DINERS, CardBrand.UNIONPAY, CardBrand.MAESTRO, None
UNKNOWN = CardBrand.UNKNOWN

BRAND_CASES = [
    # Visa: 4
    ("4", V),
    ("400000", V),
    ("499999", V),
    # Mastercard: 51-55 and the 2-series 2221-2720 (edges: 2220 and 2721 are not Mastercard)
    ("51", M),
    ("55", M),
    ("2221", M),
    ("2720", M),
    ("2500", M),
    ("2220", UNKNOWN),
    ("2721", UNKNOWN),
    ("2200", UNKNOWN),
    ("2799", UNKNOWN),
    # Amex: 34, 37
    ("34", A),
    ("37", A),
    ("33", UNKNOWN),
    ("35", UNKNOWN),
    # Discover: 6011, 644-649, 65
    ("6011", D),
    ("644", D),
    ("649", D),
    ("65", D),
    ("650000", D),
    # JCB: 3528-3589 (edges: 3527 and 3590 are not JCB)
    ("3528", J),
    ("3589", J),
    ("3550", J),
    ("3527", UNKNOWN),
    ("3590", UNKNOWN),
    # Diners Club: 300-305, 36, 38-39 (and 3095)
    ("300", DC),
    ("305", DC),
    ("36", DC),
    ("38", DC),
    ("39", DC),
    ("3095", DC),
    ("306", UNKNOWN),
    ("3094", UNKNOWN),
    # UnionPay: 62 (all of it, including the range Discover's network also accepts), 81
    ("62", U),
    ("620000", U),
    ("622126", U),
    ("622925", U),
    ("629999", U),
    ("81", U),
    # Maestro
    ("50", MA),
    ("5018", MA),
    ("5020", MA),
    ("5038", MA),
    ("56", MA),
    ("5893", MA),
    ("6304", MA),
    ("6759", MA),
    ("6761", MA),
    ("6763", MA),
    ("63", MA),
    ("643", MA),
    ("67", MA),
    # Nothing
    ("1", UNKNOWN),
    ("7", UNKNOWN),
    ("8", UNKNOWN),
    ("9", UNKNOWN),
    ("0", UNKNOWN),
]


@pytest.mark.parametrize(("prefix", "brand"), BRAND_CASES)
def test_brand_by_iin_range(prefix: str, brand: CardBrand) -> None:
    for length in (16, 19) if brand is not A else (15,):
        assert card_brand(pan_with_prefix(prefix, length)) is brand


def oracle_brand(pan: str) -> CardBrand:
    """The documented IIN ranges, written as prefix tests rather than a table."""

    def prefix_in(n: int, low: int, high: int) -> bool:
        return low <= int(pan[:n]) <= high

    if pan.startswith("4"):
        return V
    if prefix_in(2, 51, 55) or prefix_in(4, 2221, 2720):
        return M
    if pan[:2] in ("34", "37"):
        return A
    if pan.startswith(("6011", "65")) or prefix_in(3, 644, 649):
        return D
    if prefix_in(4, 3528, 3589):
        return J
    if prefix_in(3, 300, 305) or pan.startswith("3095") or pan[:2] in ("36", "38", "39"):
        return DC
    if pan[:2] in ("62", "81"):
        return U
    if pan.startswith("50") or prefix_in(2, 56, 69):
        return MA
    return UNKNOWN


@PROPERTY
@given(valid_pans)
def test_brand_matches_the_documented_ranges(pan: str) -> None:
    assert card_brand(pan) is oracle_brand(pan)


@pytest.mark.parametrize("value", ["", "4", "42", "abcd", "\u0664\u0662" * 8, "\uff14\uff12" * 4])
def test_brand_of_garbage_is_safe(value: str) -> None:
    assert card_brand(value) in set(CardBrand)
    if not value.isascii():
        assert card_brand(value) is UNKNOWN
