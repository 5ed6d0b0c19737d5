"""Hypothesis settings, independent oracles and strategies shared by the normalization tests.

The oracles here are written from the rules, not from ``normalization``'s code, so that a test
comparing the two can fail.

Profiles: ``normalization`` (default, fast enough for every run) and ``normalization-thorough``
(ten times the examples); pick one with ``TESSERA_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "normalization",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "normalization-thorough",
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Decorate property tests with this (``@PROPERTY``): the selected profile, no deadline.
PROPERTY = settings(
    settings.get_profile(os.environ.get("TESSERA_HYPOTHESIS_PROFILE", "normalization"))
)

ASCII_DIGITS = "0123456789"
#: Digits that ``str.isdigit``, ``int()`` and ``\\d`` accept but a PAN must not contain.
NON_ASCII_DIGIT_SETS = {
    "arabic_indic": "".join(chr(0x0660 + i) for i in range(10)),
    "extended_arabic_indic": "".join(chr(0x06F0 + i) for i in range(10)),
    "devanagari": "".join(chr(0x0966 + i) for i in range(10)),
    "fullwidth": "".join(chr(0xFF10 + i) for i in range(10)),
    "mathematical_bold": "".join(chr(0x1D7CE + i) for i in range(10)),
}


def translate_digits(text: str, digits: str) -> str:
    return text.translate(str.maketrans(ASCII_DIGITS, digits))


def oracle_luhn(digits: str) -> bool:
    """Luhn, written out: double every second digit from the right, sum digit-wise, mod 10."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - ord("0")
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def oracle_is_pan(value: object) -> bool:
    """The rule: a ``str`` of 12-19 characters, each one of ``0``-``9``, passing Luhn."""
    return (
        isinstance(value, str)
        and 12 <= len(value) <= 19
        and all(char in ASCII_DIGITS for char in value)
        and oracle_luhn(value)
    )


def luhn_complete(partial: str) -> str:
    """``partial`` plus the one check digit that makes it pass Luhn."""
    for check in ASCII_DIGITS:
        if oracle_luhn(partial + check):
            return partial + check
    raise AssertionError("unreachable: exactly one check digit fits")  # pragma: no cover


def luhn_break(pan: str) -> str:
    """``pan`` with its check digit changed so that it fails Luhn."""
    wrong = str((int(pan[-1]) + 1) % 10)
    return pan[:-1] + wrong


def pan_with_prefix(prefix: str, length: int = 16) -> str:
    """A Luhn-valid PAN of ``length`` digits starting with ``prefix`` (zeros in between)."""
    return luhn_complete(prefix + "0" * (length - len(prefix) - 1))


@st.composite
def luhn_valid_digits(draw: st.DrawFn, min_size: int = 12, max_size: int = 19) -> str:
    length = draw(st.integers(min_size, max_size))
    body = draw(st.text(alphabet=ASCII_DIGITS, min_size=length - 1, max_size=length - 1))
    return luhn_complete(body)


#: Valid PANs: 12-19 ASCII digits passing Luhn.
valid_pans = luhn_valid_digits()

#: Strings close to PANs: mostly digits, some of them look-alikes or separators.
_NEAR_PAN_CHARS = st.sampled_from(
    [
        *(ASCII_DIGITS * 6),
        *(digits[index] for index, digits in enumerate(NON_ASCII_DIGIT_SETS.values())),
        *" _-+.\t\n\u00a0\u2007\u200b",
    ]
)
near_pans = st.text(alphabet=_NEAR_PAN_CHARS, min_size=10, max_size=21)
