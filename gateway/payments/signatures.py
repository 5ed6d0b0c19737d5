"""Signatures on the notifications Tessera sends to merchants (Stripe's scheme).

Header: ``Tessera-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, keyed by
the merchant's ``whsec_`` secret. Signing the timestamp with the body lets a receiver refuse
replays of an old delivery: ``verify_signature`` rejects a timestamp more than ``tolerance``
seconds from now, a missing or malformed header, and a signature that does not match. Several
``v1`` entries may appear (during a secret rotation); any one matching is enough.

Pure standard library, so a merchant can use it without running the gateway (the client module
re-exports ``verify_signature``). The format is the one ``sdk.webhooks.TimestampedHmacScheme``
verifies for providers.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = [
    "SIGNATURE_HEADER",
    "InvalidSignatureError",
    "sign_payload",
    "verify_signature",
]

SIGNATURE_HEADER = "Tessera-Signature"
_SCHEME = "v1"


class InvalidSignatureError(ValueError):
    """The notification is not authentic or not fresh. The text never echoes secret or body."""


def _mac(secret: str | bytes, timestamp: str, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign_payload(secret: str | bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The ``Tessera-Signature`` header value for ``body`` at ``timestamp`` (default: now)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return f"t={stamp},{_SCHEME}={_mac(secret, stamp, body)}"


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> int:
    """Check a ``Tessera-Signature`` header against the raw request ``body``.

    Returns the signed timestamp; raises ``InvalidSignatureError`` if the header is missing or
    malformed, the timestamp is further than ``tolerance`` seconds from ``now`` (default: the
    current time), or no ``v1`` signature matches. Pass the body bytes exactly as received:
    re-serialized JSON will not match.
    """
    if not header:
        raise InvalidSignatureError(f"The {SIGNATURE_HEADER} header is missing.")
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            timestamp = value
        elif name == _SCHEME:
            signatures.append(value)
    # Unix seconds: up to 12 digits (int() of thousands of digits is slow, then refused).
    if timestamp is None or not (
        timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
    ):
        raise InvalidSignatureError("The signature has no valid timestamp.")
    if not signatures:
        raise InvalidSignatureError(f"The signature has no {_SCHEME} entry.")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        raise InvalidSignatureError("The signature timestamp is outside the tolerance window.")
    expected = _mac(secret, timestamp, body).encode()
    # Check every entry without stopping early: timing says nothing about which one matched.
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected, signature.encode("ascii", "replace"))
    if not matched:
        raise InvalidSignatureError("The signature does not match.")
    return int(timestamp)
