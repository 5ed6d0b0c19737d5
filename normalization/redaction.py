"""Redacting card data out of free text: log lines, provider messages, transcripts.

Code should never put card data into text; this is the safety net for text it does not control
(a provider's decline message, a third-party library's exception, a request body quoted in an
error). Two passes, both keeping everything else intact:

1. **Card numbers.** Every run of 12-19 decimal digits (single spaces or dashes allowed between
   them) that passes Luhn becomes its mask (BIN and last 4 at most, ``mask_pan``). Digits of any
   script count (``\\d``, not ``[0-9]``): a full-width or Arabic-Indic PAN is still the PAN, and
   its mask is written in ASCII digits.
2. **Security codes next to their name.** A CVV is 3-4 digits and cannot be told from any other
   number by itself, so it is recognised by what precedes it: ``cvc``, ``cvv``, ``cvc2``,
   ``cvv2``, ``cav2``, ``cid``, ``csc`` or ``security code`` (also as part of a key:
   ``card_cvc``, ``cardCvv``, ``card[cvc]``, ``card%5Bcvc%5D``) followed by separators (quotes,
   ``:``, ``=``, brackets, ``>``, spaces, ``+``; ``is``/``was``) and then 3-4 digits, as in JSON,
   Python reprs, forms, XML and prose (``"CVC 123 does not match"``). The digits become ``***``.

Both passes are pure functions of the text; nothing is logged or kept.
"""

from __future__ import annotations

import re
import unicodedata

from normalization.cards import luhn_valid, mask_pan

__all__ = ["ascii_digits", "redact_card_numbers", "redact_card_text", "redact_security_codes"]

#: What a redacted security code shows.
MASKED_CODE = "***"

_PAN_CANDIDATE_RE = re.compile(r"(?<!\d)\d(?:[ -]?\d){11,18}(?!\d)")
_ANY_DIGIT_RE = re.compile(r"\d")

_CODE_NAMES = r"(?i:cvc2?|cvv2?|cav2|cid|csc|security[ _-]?code)"
# Where a name may start: not inside a word or a number ("acid", "x1cvc"), except after a
# lower-case letter when the name is capitalised (camelCase: "cardCvc") and after an
# URL-encoded bracket ("card%5Bcvc%5D").
_NAME_START = r"(?:(?<![A-Za-z0-9])|(?<=[a-z])(?=[A-Z])|(?<=%5[Bb]))"
_SEPARATOR = r"(?:[\s\"'`:=\[\]>(\\+]|%5[BbDd]|%22|%27|%3[AaDd]|&quot;)"
_SECURITY_CODE_RE = re.compile(
    rf"({_NAME_START}{_CODE_NAMES}(?:[ _-]?(?i:code|value|number|no))?(?![A-Za-z0-9])"
    rf"{_SEPARATOR}{{1,12}}(?:(?i:is|was)\s+{_SEPARATOR}{{0,3}})?)"
    r"(\d{3,4})(?!\d)"
)


def ascii_digits(text: str) -> str:
    """The decimal digits of ``text`` (any script) as ASCII digits, everything else dropped:
    ``"\uff14\uff10 00-12"`` gives ``"400012"``."""
    return "".join(str(unicodedata.decimal(char)) for char in text if char.isdecimal())


def _mask_candidate(match: re.Match[str]) -> str:
    digits = ascii_digits(match.group(0))
    return mask_pan(digits) if luhn_valid(digits) else match.group(0)


def redact_card_numbers(text: str) -> str:
    """``text`` with every Luhn-valid run of 12-19 digits (spaces or dashes allowed) masked."""
    return _PAN_CANDIDATE_RE.sub(_mask_candidate, text)


def _may_name_a_code(text: str) -> bool:
    """False only when ``text`` cannot hold a security code's name, so the pass can be skipped
    (it runs on every string of every log line). Exact for ASCII text, where case-insensitive
    matching is plain lower-casing; other text always takes the full pass (``re``'s
    case-insensitive ``s`` and ``i`` also match U+017F, U+0131 and U+0130)."""
    if not text.isascii():
        return True
    lowered = text.lower()
    return (
        "cv" in lowered
        or "cid" in lowered
        or "csc" in lowered
        or "cav2" in lowered
        or ("security" in lowered)
    )


def redact_security_codes(text: str) -> str:
    """``text`` with every 3-4 digit number that follows a security code's name as ``***``."""
    if not _may_name_a_code(text):
        return text
    return _SECURITY_CODE_RE.sub(lambda m: m.group(1) + MASKED_CODE, text)


def redact_card_text(text: str) -> str:
    """Both passes: card numbers masked, security codes next to their name hidden.

    Both only ever replace digits, so text without any (a provider's ``"authorized"``, most log
    values) is returned as it is, without either pass: this runs on every provider text of every
    ``PaymentResult`` and every string of every log line."""
    if _ANY_DIGIT_RE.search(text) is None:
        return text
    return redact_security_codes(redact_card_numbers(text))
