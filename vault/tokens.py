"""Token identifiers: the two formats a merchant can ask for, and how to tell a token from a PAN.

- ``opaque`` (default): ``tok_`` + 24 random base62 characters (about 143 bits from ``secrets``).
- ``numeric``: as long as the PAN, for systems whose columns only take card-shaped digits. It keeps
  the last 4 digits and, where the PAN is long enough, the BIN (first 6); every other digit is
  random. It deliberately **fails** the Luhn check (one random digit is nudged when the draw
  happens to pass), so a numeric token can never be taken for a PAN, by us or by anyone's PAN
  scanner (PCI DSS v4, 3.5.1 and RELIABILITY.md item 29).

How much of the PAN a numeric token keeps follows the masking rule of
``normalization.cards`` (PCI DSS 3.4.1): the BIN only when at least 5 digits stay hidden, i.e. for
PANs of 15 digits or more. A 12-digit token keeping BIN6 + last4 would leave two unknown digits,
and with the Luhn digit that is one PAN in ten: shorter PANs keep the last 4 alone.

Random digits come from ``secrets.token_bytes`` through a ``bytes.translate`` table with
rejection of the bytes that would bias the draw: a 1,000-card batch needs 24,000 random
characters, and this keeps that in C.
"""

from __future__ import annotations

import re
import secrets
import string
from typing import Literal, get_args

from normalization import card_bin, luhn_valid

__all__ = [
    "OPAQUE_TOKEN_PREFIX",
    "TokenFormat",
    "is_token_id",
    "new_numeric_token",
    "new_opaque_token",
    "new_token",
]

TokenFormat = Literal["opaque", "numeric"]
TOKEN_FORMATS: tuple[TokenFormat, ...] = get_args(TokenFormat)

OPAQUE_TOKEN_PREFIX = "tok_"  # noqa: S105 - a public prefix, not a credential
_OPAQUE_LENGTH = 24
_BASE62 = string.digits + string.ascii_letters

_OPAQUE_RE = re.compile(r"tok_[0-9A-Za-z]{24}", re.ASCII)
_NUMERIC_RE = re.compile(r"[0-9]{12,19}", re.ASCII)


def _translation(alphabet: str) -> tuple[bytes, bytes]:
    """A ``bytes.translate`` table mapping a uniform byte to a uniform symbol of ``alphabet``.

    Bytes at or above the largest multiple of ``len(alphabet)`` are deleted rather than folded,
    which would favour the first symbols.
    """
    limit = 256 - 256 % len(alphabet)
    table = bytes(ord(alphabet[b % len(alphabet)]) if b < limit else 0 for b in range(256))
    return table, bytes(range(limit, 256))


_BASE62_TABLE, _BASE62_REJECT = _translation(_BASE62)
_DIGIT_TABLE, _DIGIT_REJECT = _translation(string.digits)


def _random_symbols(count: int, table: bytes, reject: bytes) -> str:
    drawn = b""
    while len(drawn) < count:
        # A few spare bytes make a second draw rare (3% of bytes are rejected for base62).
        drawn += secrets.token_bytes(count + 8).translate(table, reject)
    return drawn[:count].decode("ascii")


def new_opaque_token() -> str:
    """``tok_`` + 24 random base62 characters."""
    return OPAQUE_TOKEN_PREFIX + _random_symbols(_OPAQUE_LENGTH, _BASE62_TABLE, _BASE62_REJECT)


def new_numeric_token(pan: str) -> str:
    """A random numeric token shaped like ``pan`` (same length, BIN6 where allowed, last 4).

    ``pan`` must already be a validated PAN (12-19 ASCII digits). The result fails Luhn.
    """
    kept_prefix = card_bin(pan)  # "" where showing the BIN would reveal too much
    last4 = pan[-4:]
    middle_length = len(pan) - len(kept_prefix) - 4
    middle = _random_symbols(middle_length, _DIGIT_TABLE, _DIGIT_REJECT)
    candidate = kept_prefix + middle + last4
    if luhn_valid(candidate):
        # Changing any single digit changes the Luhn sum modulo 10 (the doubling map is a
        # bijection on digits), so one nudge always breaks it. Nudge a random position.
        position = len(kept_prefix) + secrets.randbelow(middle_length)
        nudged = str((int(candidate[position]) + 1) % 10)
        candidate = candidate[:position] + nudged + candidate[position + 1 :]
    return candidate


def new_token(token_format: TokenFormat, pan: str) -> str:
    """A fresh token id of ``token_format`` for ``pan`` (only numeric tokens look at it)."""
    if token_format == "numeric":  # noqa: S105 - a format name
        return new_numeric_token(pan)
    return new_opaque_token()


def is_token_id(value: object) -> bool:
    """True for something shaped like a Tessera token: opaque, or numeric failing Luhn.

    A Luhn-valid digit string is never a token: it may be a PAN, and must be treated as one.
    """
    if not isinstance(value, str):
        return False
    if _OPAQUE_RE.fullmatch(value) is not None:
        return True
    return _NUMERIC_RE.fullmatch(value) is not None and not luhn_valid(value)
