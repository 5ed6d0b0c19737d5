"""Canary card data and the forms it could leak in (RELIABILITY.md item 26). Reusable.

A canary is a unique, Luhn-valid PAN (and a CVV) drawn per run, so any trace of it anywhere is a
leak rather than a coincidence. ``leak_forms`` lists the shapes a leak could take: raw, spaced
and dashed groups, base64 (standard and URL-safe, at every alignment inside a larger blob), hex
(either case) and URL encoding. ``find_leaks`` says which forms occur in a text.

A CVV is only 3-4 digits and would match random digit runs, so its raw forms are searched as a
whole token (not inside a longer run of letters or digits).
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

__all__ = ["Canary", "find_leaks", "leak_forms", "luhn_complete", "new_canary"]


def luhn_complete(partial: str) -> str:
    """``partial`` + the check digit that makes it pass Luhn."""
    total = 0
    for index, char in enumerate(reversed(partial)):
        digit = int(char)
        if index % 2 == 0:  # these get doubled once the check digit is appended
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return partial + str((10 - total % 10) % 10)


@dataclass(frozen=True)
class Canary:
    pan: str
    cvc: str


def new_canary(prefix: str = "4000") -> Canary:
    """A fresh 16-digit Luhn-valid PAN under ``prefix`` and a 4-digit CVV (rare in text).

    The CVV is drawn from 3000-9999: every log line and stored row carries this era's years
    (``2026-11-21``, expiry ``2031``), and a canary equal to one of them is found everywhere
    without anything having leaked (seen once on CI)."""
    body = prefix + "".join(secrets.choice("0123456789") for _ in range(15 - len(prefix)))
    cvc = str(3000 + secrets.randbelow(7000))
    return Canary(pan=luhn_complete(body), cvc=cvc)


def _groups(value: str, separator: str) -> str:
    return separator.join(value[i : i + 4] for i in range(0, len(value), 4))


def _base64_forms(value: bytes) -> set[str]:
    """The base64 text of ``value`` as it appears inside any larger blob, at each of the three
    alignments: encode with 0-2 filler bytes in front and keep only the characters that depend
    on ``value`` alone."""
    forms: set[str] = set()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + value).decode()
        start = (pad * 8 + 5) // 6 if pad else 0  # first char not mixed with filler
        usable_end = ((pad + len(value)) * 8) // 6  # last char fully made of value bits
        core = encoded[start:usable_end]
        if len(core) >= 8:
            forms.add(core)
            forms.add(core.replace("+", "-").replace("/", "_"))
    return forms


def leak_forms(secret: str, *, grouped: bool = True) -> dict[str, str]:
    """Every searchable form of ``secret`` by a name saying which encoding it is."""
    forms: dict[str, str] = {"raw": secret}
    if grouped:
        forms["spaced"] = _groups(secret, " ")
        forms["dashed"] = _groups(secret, "-")
        forms["url_spaced"] = quote(forms["spaced"])
        forms["url_plus"] = quote_plus(forms["spaced"])
    raw = secret.encode()
    for index, form in enumerate(sorted(_base64_forms(raw))):
        forms[f"base64_{index}"] = form
    forms["hex"] = raw.hex()
    forms["HEX"] = raw.hex().upper()
    forms["url"] = quote(secret, safe="")
    unique: dict[str, str] = {}
    for name, form in forms.items():  # digits URL-encode to themselves: report each form once
        if form not in unique.values():
            unique[name] = form
    return unique


def find_leaks(text: str, canary: Canary) -> list[str]:
    """Names of the canary forms present in ``text`` (empty when nothing leaked)."""
    hits = [f"pan:{name}" for name, form in leak_forms(canary.pan).items() if form and form in text]
    for name, form in leak_forms(canary.cvc, grouped=False).items():
        if name == "raw":
            pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])")
            if pattern.search(text):
                hits.append(f"cvc:{name}")
        elif form in text:
            hits.append(f"cvc:{name}")
    return hits


def find_leaks_in(texts: Iterable[str], canary: Canary) -> list[str]:
    """``find_leaks`` over many texts; each hit says which text (by index) held it."""
    return [f"#{i} {hit}" for i, text in enumerate(texts) for hit in find_leaks(text, canary)]
