"""The leak scanner: canary card data and credentials, searched for in every encoding.

Every run injects canaries: fresh Luhn-valid PANs and CVCs (``sdk.testing.canary_pan``) put in the
fake vault behind the run's tokens and passed inline to the leak-probe scenario, plus the run's
credential values. After the run, ``LeakScanner.scan`` searches transcripts, captured log lines,
exception texts and the rendered reports for each of them:

- PANs: raw, and with any single separator between digits (spaces, dashes, dots, ``+``, ``%20``),
  which covers spaced, dashed and URL-encoded forms; base64 (standard and URL-safe, at all three
  byte alignments, so a PAN inside a longer encoded string is found); hex (either case);
- CVCs: only next to a security-code key (``"cvc": "123"``, ``cvv=123``): three digits alone
  occur everywhere;
- credentials: raw, URL-encoded, base64, hex.

``redact`` replaces every form found by ``[CANARY]``, so what the kit keeps and reports never
carries a canary even when the connector leaked one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

from conformance.results import LeakFinding
from normalization import CARD_NUMBER_GAP, SECURITY_CODE_NAMES, unescape_digits
from sdk.transcript import TranscriptRecorder

__all__ = ["REDACTION", "LeakScanner", "Secret", "safe_name", "transcript_items"]

REDACTION = "[CANARY]"
# Between two digits of a card number: up to three separators, read as the redaction reads them.
_SEPARATOR = rf"(?:{CARD_NUMBER_GAP}){{0,3}}"
_CVC_KEYS = SECURITY_CODE_NAMES  # searched: "card_security_code" holds "security_code"
#: A card number already hidden (a scrubber's mark, or a mask) and then the code after it:
#: "Card [REDACTED] 486 declined".
_HIDDEN_CARD = r"(?:\[REDACTED\]|\[CANARY\]|[0-9]{0,8}\*{4,}[0-9]{0,4})"


@dataclass(frozen=True, slots=True)
class Secret:
    """One value that must never appear. ``kind`` is "pan", "cvc" or "credential"."""

    label: str
    value: str
    kind: str


def _base64_cores(value: bytes) -> set[str]:
    """Substrings of the base64 text of any data containing ``value``, at each alignment."""
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + value).decode("ascii")
        start = -(-8 * offset // 6)  # first character made only of value's bits
        end = (8 * (offset + len(value))) // 6
        core = encoded[start:end]
        if len(core) >= 8:
            cores.add(core)
            cores.add(core.replace("+", "-").replace("/", "_"))
    return cores


@functools.cache
def _digit_forms() -> tuple[str, ...]:
    """For each digit value 0-9, every Unicode character with that decimal value."""
    forms: list[list[str]] = [[] for _ in range(10)]
    for point in range(sys.maxunicode + 1):
        char = chr(point)
        if char.isdecimal():
            forms[unicodedata.decimal(char)].append(char)
    return tuple("".join(chars) for chars in forms)


@dataclass
class _Pattern:
    secret: Secret
    encoding: str
    regex: re.Pattern[str]


def _patterns(secret: Secret) -> Iterator[_Pattern]:
    value = secret.value
    raw = value.encode("utf-8")
    if secret.kind == "pan":
        # Each digit in any script (ASCII, full width, Arabic-Indic, ...), as the redaction reads
        # card numbers (``normalization.find_card_numbers``): a form it masks is one we find.
        forms = _digit_forms()
        spaced = _SEPARATOR.join(f"[{forms[int(d)]}]" for d in value)
        yield _Pattern(
            secret, "raw/spaced/dashed/url-encoded", re.compile(rf"(?<!\d){spaced}(?!\d)")
        )
    elif secret.kind == "cvc":
        yield _Pattern(
            secret,
            "next to a security-code key",
            re.compile(
                rf"{_CVC_KEYS}[\"'\]]?(?:\s|%22|%5[dD]|\\\")*[:=](?:\s|%22|\\\"|[\"'])*"
                rf"{re.escape(value)}(?!\d)",
                re.IGNORECASE,
            ),
        )
        yield _Pattern(
            secret,
            "after a hidden card number",
            re.compile(rf"{_HIDDEN_CARD}[\s/-]{{1,3}}{re.escape(value)}(?!\d)"),
        )
        return
    else:
        yield _Pattern(secret, "raw", re.compile(re.escape(value)))
        quoted = quote(value, safe="")
        if quoted != value:
            yield _Pattern(secret, "url-encoded", re.compile(re.escape(quoted), re.IGNORECASE))
    cores = sorted(_base64_cores(raw))
    if cores:
        yield _Pattern(secret, "base64", re.compile("|".join(re.escape(c) for c in cores)))
    yield _Pattern(
        secret, "hex", re.compile(re.escape(binascii.hexlify(raw).decode()), re.IGNORECASE)
    )


@dataclass
class LeakScanner:
    """Searches texts for the run's canaries; see the module docstring."""

    secrets: list[Secret] = field(default_factory=list)
    _compiled: list[_Pattern] = field(default_factory=list)

    def add(self, label: str, value: str, kind: str) -> None:
        if kind != "cvc" and len(value) < 6:
            return  # too short to search for without matching ordinary text
        if any(s.value == value and s.kind == kind for s in self.secrets):
            return
        secret = Secret(label, value, kind)
        self.secrets.append(secret)
        self._compiled.extend(_patterns(secret))

    def find(self, text: str) -> Iterator[tuple[Secret, str]]:
        """``(secret, encoding)`` for every canary form present in ``text`` (once each),
        JSON-escaped digits (``\u0034``) read as digits."""
        text = unescape_digits(text)
        for pattern in self._compiled:
            if pattern.regex.search(text):
                yield pattern.secret, pattern.encoding

    def scan(self, source: str, items: Iterable[tuple[str, str]]) -> list[LeakFinding]:
        """Findings for ``(location, text)`` items that all come from ``source``."""
        findings: list[LeakFinding] = []
        for location, text in items:
            for secret, encoding in self.find(text):
                findings.append(LeakFinding(secret.label, encoding, source, location))
        return findings

    def redact(self, text: str) -> str:
        text = unescape_digits(text)
        for pattern in self._compiled:
            text = pattern.regex.sub(REDACTION, text)
        return text


#: A key or header name that cannot hold card data or a credential: short, no run of digits.
_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,40}")


def safe_name(name: str) -> str:
    """``name`` quoted when it is safe to print in a report: short, without a run of three
    digits (so neither a card number nor a security code), else a placeholder."""
    if _SAFE_NAME.fullmatch(name) and not re.search(r"[0-9]{3}", name):
        return repr(name)
    return "(a name not shown)"


def transcript_items(scenario: str, transcript: TranscriptRecorder) -> list[tuple[str, str]]:
    """``(location, text)`` pairs for the scanner, one per part of each recorded exchange, so a
    finding names the exchange (its number, operation and method; never its URL, which may be
    the leak) and the part: the URL, a header by name, a body, the error."""
    items: list[tuple[str, str]] = []
    for number, exchange in enumerate(transcript.exchanges, 1):
        where = f"{scenario}, exchange {number} ({exchange.operation} {exchange.method})"
        items.append((f"{where}, URL", exchange.url))
        items.extend(
            (f"{where}, request header {safe_name(name)}", f"{name}: {value}")
            for name, value in exchange.request_headers
        )
        items.append((f"{where}, request body", exchange.request_body))
        items.extend(
            (f"{where}, response header {safe_name(name)}", f"{name}: {value}")
            for name, value in exchange.response_headers
        )
        items.append((f"{where}, response body", exchange.response_body))
        if exchange.error:
            items.append((f"{where}, error", exchange.error))
    return items
