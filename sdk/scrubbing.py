"""Scrubbing card data and credentials out of text that is kept: transcripts, cassettes, logs.

Three layers, applied in order by ``Scrubber.scrub_text``:

0. JSON escapes of digits written as the digits (``\u0034`` as ``4``), so the layers below see
   a card number a provider escaped;
1. known secrets (credential values, revealed PANs) replaced by ``[REDACTED]``, whatever
   surrounds them;
2. a sweep for anything shaped like a PAN (12-19 digits of any script, optionally grouped by
   spaces or dashes) that passes Luhn, replaced by its mask (BIN and last four at most);
3. values of security-code and secret-looking keys (``cvc``, ``card[cvc]``, ``<cvv>``,
   ``"password"``, and JSON keys naming a security code in any way: ``"card_cvc"``,
   ``"cardCvv"``, ``"security_code"``) in JSON, form and XML text, replaced by ``***``;
4. a security code written next to its name anywhere else, as providers do in their messages
   (``"CVC 123 does not match"``, ``cvv2: 123``): the digits become ``***``
   (``normalization.redaction``).

Headers are scrubbed by name (``Authorization``, cookies, API-key headers) and then as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from normalization.redaction import redact_card_numbers, redact_security_codes, unescape_digits

__all__ = ["REDACTED", "SENSITIVE_HEADERS", "SENSITIVE_KEYS", "Scrubber"]

REDACTED = "[REDACTED]"

SENSITIVE_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-client-secret",
    }
)

SENSITIVE_KEYS = (
    "cvc",
    "cvv",
    "cvv2",
    "cvc2",
    "cav2",
    "cid",
    "csc",
    "security_code",
    "securitycode",
    "card_security_code",
    "cardsecuritycode",
    "verification_value",  # ActiveMerchant's and Spreedly's name for the CVV
    "verificationvalue",
    "card_verification_value",
    "password",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
)

_KEYS = "|".join(re.escape(k) for k in sorted(SENSITIVE_KEYS, key=len, reverse=True))
# "cvc": "123"  /  "cvc":123
_JSON_KEY = re.compile(rf'("(?:{_KEYS})"\s*:\s*)("(?:[^"\\]|\\.)*"|[0-9]+)', re.IGNORECASE)
# Any other key naming a security code, with a code as its value: "card_cvc": "123",
# "cardCvv": 123 ("cvc_check": "pass" is left alone). The names of SECURITY_CODE_NAMES less
# "cid", which this unanchored search would find in "incidentId" or "decidedAt". Quoted in the
# result: the document parses.
_JSON_CODE_KEY = re.compile(
    r'("[^"\\]{0,40}(?:cvc|cvv|cav2|csc|security_?code|verification_?value)[^"\\]{0,40}"\s*:\s*)("\s*[0-9]{3,4}\s*"|[0-9]{3,4}(?![0-9]))',
    re.IGNORECASE,
)
# cvc=123, card[cvc]=123, card%5Bcvc%5D=123
_FORM_KEY = re.compile(
    rf"((?:^|[&?])(?:[^=&\s]*?(?:\[|%5B))?(?:{_KEYS})(?:\]|%5D)?=)([^&\s]*)", re.IGNORECASE
)
# <cvc>123</cvc>, <ns:cvv>123</ns:cvv>
_XML_KEY = re.compile(rf"(<(?:[A-Za-z0-9_]+:)?(?:{_KEYS})>)([^<]*)(</)", re.IGNORECASE)


# The scheme word before a credential: "Bearer", "Basic", "Token", "AWS4-HMAC-SHA256", ...
_AUTH_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{1,30}")


def _sensitive_names(extra: Iterable[str]) -> frozenset[str]:
    """The header names whose values are credentials: ours and a manifest's (lower case)."""
    return SENSITIVE_HEADERS | {name.lower() for name in extra}


class Scrubber:
    """Removes card data and credentials from text; see the module docstring."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole. Very short values
        # (under 4 characters) would mangle ordinary text and protect nothing; they are skipped.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def with_secrets(self, secrets: Iterable[str]) -> Scrubber:
        return Scrubber([*self._secrets, *secrets])

    def scrub_text(self, text: str) -> str:
        text = unescape_digits(text)  # a card number a provider escaped (``\u0034242...``)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = redact_card_numbers(text)
        text = _JSON_KEY.sub(lambda m: f'{m.group(1)}"***"', text)
        text = _JSON_CODE_KEY.sub(lambda m: f'{m.group(1)}"***"', text)
        text = _FORM_KEY.sub(lambda m: f"{m.group(1)}***", text)
        text = _XML_KEY.sub(lambda m: f"{m.group(1)}***{m.group(3)}", text)
        return redact_security_codes(text)

    @staticmethod
    def secrets_in_headers(
        headers: Iterable[tuple[str, str]], extra_sensitive: Iterable[str] = ()
    ) -> list[str]:
        """The values of sensitive headers (their auth scheme, ``Bearer``/``Basic``/..., left
        off), 8 characters or longer: shorter ones would mangle ordinary text."""
        names = _sensitive_names(extra_sensitive)
        found = []
        for name, value in headers:
            if name.lower() not in names:
                continue
            scheme, _, rest = value.strip().partition(" ")
            for candidate in (
                value.strip(),
                rest.strip() if _AUTH_SCHEME.fullmatch(scheme) else "",
            ):
                if len(candidate) >= 8:
                    found.append(candidate)
        return found

    def scrub_headers(
        self, headers: Iterable[tuple[str, str]], extra_sensitive: Iterable[str] = ()
    ) -> tuple[tuple[str, str], ...]:
        names = _sensitive_names(extra_sensitive)
        return tuple(
            (name, REDACTED if name.lower() in names else self.scrub_text(value))
            for name, value in headers
        )
