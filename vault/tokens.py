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

Random symbols come from ``secrets.token_bytes`` through a ``bytes.translate`` table with
rejection of the bytes that would bias the draw: a 1,000-card batch needs 24,000 random
characters, and this keeps that in C. They are drawn 4 KiB at a time into a pool per alphabet
(one ``getrandom`` system call per ~165 opaque tokens instead of one per token: the call was
≈ 8 % of a batch's CPU here) and each symbol is handed out once. The pools are emptied in a
forked child, so parent and child never share symbols (``os.register_at_fork``).
"""

from __future__ import annotations

import os
import re
import secrets
import string
import threading
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


_DRAW_BYTES = 4096


class _SymbolPool:
    """Uniform random symbols of one alphabet, drawn in bulk, each handed out once."""

    __slots__ = ("_lock", "_next", "_reject", "_symbols", "_table")

    def __init__(self, table: bytes, reject: bytes) -> None:
        self._table, self._reject = table, reject
        self._symbols = b""
        self._next = 0  # symbols before this index have been handed out
        # Tokens are made on the event loop, but nothing stops a thread from making one: the
        # lock keeps two callers from taking the same symbols.
        self._lock = threading.Lock()

    def take(self, count: int) -> str:
        with self._lock:
            end = self._next + count
            if end > len(self._symbols):
                symbols = self._symbols[self._next :]
                while len(symbols) < count:
                    drawn = secrets.token_bytes(max(_DRAW_BYTES, 2 * count))
                    symbols += drawn.translate(self._table, self._reject)
                self._symbols, self._next, end = symbols, 0, count
            taken = self._symbols[self._next : end]
            self._next = end
        return taken.decode("ascii")

    def clear(self) -> None:
        self._lock = threading.Lock()  # a fork may have copied it held
        self._symbols, self._next = b"", 0


_BASE62_POOL = _SymbolPool(_BASE62_TABLE, _BASE62_REJECT)
_DIGIT_POOL = _SymbolPool(_DIGIT_TABLE, _DIGIT_REJECT)


def _forget_symbols() -> None:
    _BASE62_POOL.clear()
    _DIGIT_POOL.clear()


os.register_at_fork(after_in_child=_forget_symbols)


def new_opaque_token() -> str:
    """``tok_`` + 24 random base62 characters."""
    return OPAQUE_TOKEN_PREFIX + _BASE62_POOL.take(_OPAQUE_LENGTH)


def new_numeric_token(pan: str) -> str:
    """A random numeric token shaped like ``pan`` (same length, BIN6 where allowed, last 4).

    ``pan`` must already be a validated PAN (12-19 ASCII digits). The result fails Luhn.
    """
    kept_prefix = card_bin(pan)  # "" where showing the BIN would reveal too much
    last4 = pan[-4:]
    middle_length = len(pan) - len(kept_prefix) - 4
    middle = _DIGIT_POOL.take(middle_length)
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
