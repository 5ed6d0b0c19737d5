"""Redacting card data out of free text: log lines, provider messages, transcripts.

Code should never put card data into text; this is the safety net for text it does not control
(a provider's decline message, a third-party library's exception, a request body quoted in an
error). Two passes, both keeping everything else intact:

1. **Card numbers** (``find_card_numbers``). A *run* is 12 or more decimal digits of any script
   (``\\d``: a full-width or Arabic-Indic PAN is still the PAN) with up to three separators
   between any two of them, as card numbers get written and encoded: whitespace of any kind
   (a no-break space too), dashes of any kind, dots, slashes, underscores, ``+``, and the URL
   (``%20``, ``%2D``) and JSON (``\\u00a0``, ``\\u2007``, ...) escapes of a space or a dash. A run
   that is itself 12-19 digits passing Luhn becomes its mask (BIN and last 4 at most,
   ``mask_pan``). A longer run, or one that fails as a whole, may still *hold* a card number
   beside something else: ``PAN 123`` (its CVC), ``PAN 12/30`` (its expiry), ``PAN-1``. So every
   stretch of whole groups of its digits (as separators part them), 12-19 digits long, that
   passes Luhn in a known brand's range counts too; then the whole run is masked down to that
   card's BIN (its last 4 may be the other number's digits, a CVC's among them). Whole groups
   only: a numeric token fails Luhn by design, and no shorter stretch of it may pass for a card
   (a PAN glued to other digits, ``PAN123``, is one group that fails as a whole: not found).
   The mask is written in ASCII digits.
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
from dataclasses import dataclass, field

from normalization.cards import CardBrand, card_bin, card_brand, luhn_valid, mask_pan

__all__ = [
    "CARD_NUMBER_GAP",
    "SECURITY_CODE_NAMES",
    "CardNumberMatch",
    "ascii_digits",
    "contains_pan",
    "find_card_numbers",
    "holds_long_digit_run",
    "redact_card_numbers",
    "redact_card_text",
    "redact_security_codes",
    "unescape_digits",
]

#: What a redacted security code shows.
MASKED_CODE = "***"

#: What may stand between two digits of a written card number (at most three of them in a row):
#: one regular-expression alternative, also read by the conformance kit's leak scan.
CARD_NUMBER_GAP = (
    r"(?:[\s\-\u2010-\u2015\u2212./_+]|%20|%2[dD]"
    r"|\\u00[aA]0|\\u0020|\\u20(?:0[0-9aA]|1[0-5]|2[fF])|\\u2212|\\u3000)"
)
_ESCAPE_RE = re.compile(r"\\u([0-9a-fA-F]{4})")
_RUN_RE = re.compile(rf"(?<!\d)\d(?:{CARD_NUMBER_GAP}{{0,3}}\d){{11,}}(?!\d)")
#: A run taken apart: each separator whole (``%20`` is not the digits 2 and 0), or one digit.
_TOKEN_RE = re.compile(rf"{CARD_NUMBER_GAP}|\d")
_MIN_PAN, _MAX_PAN = 12, 19
_ANY_DIGIT_RE = re.compile(r"\d")

#: The names a security code goes by (any case), one regular-expression group: also read by
#: the SDK's scrubber and the conformance kit's leak scan.
SECURITY_CODE_NAMES = r"(?:cvc2?|cvv2?|cav2|cid|csc|security[ _-]?code|verification[ _-]?value)"
_CODE_NAMES = rf"(?i:{SECURITY_CODE_NAMES})"
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


@dataclass(frozen=True, slots=True)
class CardNumberMatch:
    """A run of digits in a text that is or holds a card number (``find_card_numbers``)."""

    start: int
    end: int
    #: The card number found, in ASCII digits (never in a repr: a match may be printed).
    pan: str = field(repr=False)
    #: Whether the run is the card number and nothing else.
    whole: bool

    @property
    def mask(self) -> str:
        """What the run becomes when redacted: the card's mask when the run is the card alone,
        else its BIN only (the run's other digits may be a CVC or an expiry)."""
        if self.whole:
            return mask_pan(self.pan)
        shown = card_bin(self.pan)
        return shown + "*" * (len(self.pan) - len(shown))


def _groups(run: str) -> list[str]:
    """The run's groups of digits (ASCII), as separators part them."""
    groups: list[str] = []
    digits: list[str] = []
    for token in _TOKEN_RE.findall(run):
        if len(token) == 1 and token.isdecimal():
            digits.append(str(unicodedata.decimal(token)))
        elif digits:  # a separator, escapes included: their digits are not the number's
            groups.append("".join(digits))
            digits = []
    groups.append("".join(digits))
    return groups


def _held_card(groups: list[str]) -> str | None:
    """The first (then longest) stretch of whole groups, 12-19 digits, that passes Luhn and falls
    in a known brand's range. Whole groups only: a numeric token (16 digits failing Luhn by
    design) is one group, and no shorter stretch of it may count as a card."""
    for first in range(len(groups)):
        stretch = ""
        candidates: list[str] = []
        for group in groups[first:]:
            stretch += group
            if len(stretch) > _MAX_PAN:
                break
            if len(stretch) >= _MIN_PAN:
                candidates.append(stretch)
        for candidate in reversed(candidates):
            if luhn_valid(candidate) and card_brand(candidate) is not CardBrand.UNKNOWN:
                return candidate
    return None


def unescape_digits(text: str) -> str:
    """``text`` with the JSON escapes of digits of any script (``\u0034``, ``\uff14``) written
    as those digits, so a card number a provider escaped is found like any other. The JSON
    means the same; other escapes are kept."""
    if "\\u" not in text:
        return text

    def digit(match: re.Match[str]) -> str:
        character = chr(int(match.group(1), 16))
        return character if character.isdecimal() else match.group(0)

    return _ESCAPE_RE.sub(digit, text)


def holds_long_digit_run(text: str) -> bool:
    """Whether ``text`` has a run (as ``find_card_numbers`` reads one) of more than 19 digits:
    too long to be a card number, long enough to hide one where Luhn cannot tell."""
    return any(len("".join(_groups(m.group(0)))) > _MAX_PAN for m in _RUN_RE.finditer(text))


def find_card_numbers(text: str, *, known_brand: bool = False) -> list[CardNumberMatch]:
    """Every run of ``text`` that is or holds a card number (see the module's docstring).

    ``known_brand``: a run that is a Luhn-valid number as a whole counts only in a known brand's
    IIN range too (one long numeric order id in ten passes Luhn alone; a form field refusing card
    numbers should not refuse those). A card *held* in a longer run always needs the brand.
    """
    found: list[CardNumberMatch] = []
    for match in _RUN_RE.finditer(text):
        groups = _groups(match.group(0))
        digits = "".join(groups)
        if (
            len(digits) <= _MAX_PAN
            and luhn_valid(digits)
            and (not known_brand or card_brand(digits) is not CardBrand.UNKNOWN)
        ):
            found.append(CardNumberMatch(match.start(), match.end(), digits, whole=True))
            continue
        held = _held_card(groups)
        if held is not None:
            found.append(CardNumberMatch(match.start(), match.end(), held, whole=False))
    return found


def contains_pan(text: str) -> bool:
    """True if ``text`` holds what is likely a card number, however it is written (any digits'
    script, separators, ``PAN 123``: ``find_card_numbers``).

    Likely means: Luhn-valid, in a known brand's IIN range. The brand condition keeps one long
    numeric order id in ten (Luhn alone) from being mistaken for a card.
    """
    return bool(find_card_numbers(text, known_brand=True))


def redact_card_numbers(text: str, *, known_brand: bool = False) -> str:
    """``text`` with every run that is or holds a card number masked (``find_card_numbers``;
    ``known_brand`` as there: identifiers, which must come back unchanged, pass it)."""
    matches = find_card_numbers(text, known_brand=known_brand)
    if not matches:
        return text
    parts: list[str] = []
    position = 0
    for match in matches:
        parts.append(text[position : match.start])
        parts.append(match.mask)
        position = match.end
    parts.append(text[position:])
    return "".join(parts)


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
        or ("verification" in lowered)
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
