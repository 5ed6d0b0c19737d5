"""Webhooks: what a connector's webhook verbs take and return, and the checks around them.

- ``WebhookRequest``/``WebhookEvent``: the input of ``Connector.verify_webhook`` and
  ``Connector.parse_webhook``, and the normalized events the gateway applies.
- ``TimestampedHmacScheme``: the common provider scheme (Stripe's shape): a header carrying a
  timestamp and one or more HMAC signatures of ``"{timestamp}.{body}"``. Verification compares in
  constant time, accepts any of several signatures (secret rotation) and refuses timestamps
  outside the replay window, in the past or the future.
- ``WebhookDeduplicator`` over an ``EventStore``: each provider event id is processed once. The
  gateway claims an event id before applying it and releases the claim if applying fails, so a
  redelivery is processed then.

Verification failures raise ``WebhookVerificationError`` whose text says which check failed and
never echoes the signature, secret or body.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from normalization import PaymentResult, TesseraError

__all__ = [
    "EventStore",
    "InMemoryEventStore",
    "TimestampedHmacScheme",
    "WebhookDeduplicator",
    "WebhookEvent",
    "WebhookRequest",
    "WebhookVerificationError",
]


class WebhookVerificationError(TesseraError):
    code = "webhook_verification_failed"
    default_detail = "The webhook could not be verified."


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A webhook as received: header names lower-cased, the raw body, when it arrived (epoch)."""

    headers: Mapping[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    @classmethod
    def of(
        cls, headers: Mapping[str, str], body: bytes, received_at: float | None = None
    ) -> WebhookRequest:
        return cls(
            {k.lower(): v for k, v in headers.items()},
            body,
            time.time() if received_at is None else received_at,
        )

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One normalized provider event. ``result`` is the state it reports, when it reports one."""

    event_id: str
    event_type: str
    provider_reference: str | None = None
    result: PaymentResult | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TimestampedHmacScheme:
    """``<header>: t=<unix seconds>,v1=<hex hmac>[,v1=<hex hmac>...]`` over ``"{t}.{body}"``."""

    header: str = "Tessera-Signature"
    scheme: str = "v1"
    tolerance_seconds: float = 300.0
    digest: str = "sha256"

    def _mac(self, secret: str, timestamp: str, body: bytes) -> str:
        payload = timestamp.encode("ascii") + b"." + body
        return hmac.new(secret.encode(), payload, self.digest).hexdigest()

    def sign(self, secret: str, body: bytes, timestamp: int | None = None) -> str:
        """The header value a provider (or a simulator) would send."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return f"t={stamp},{self.scheme}={self._mac(secret, stamp, body)}"

    def verify(
        self, request: WebhookRequest, secrets: str | list[str], *, now: float | None = None
    ) -> None:
        """Raise ``WebhookVerificationError`` unless a signature matches and is fresh."""
        value = request.header(self.header)
        if not value:
            raise WebhookVerificationError(f"The {self.header} header is missing.")
        timestamp: str | None = None
        signatures: list[str] = []
        for part in value.split(","):
            key, sep, item = part.strip().partition("=")
            if not sep:
                continue
            if key == "t":
                timestamp = item
            elif key == self.scheme:
                signatures.append(item)
        # Unix seconds: up to 12 digits (int() of thousands of digits is slow, then refused).
        if timestamp is None or not (
            timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
        ):
            raise WebhookVerificationError("The webhook signature has no valid timestamp.")
        if not signatures:
            raise WebhookVerificationError(f"The webhook has no {self.scheme} signature.")
        current = request.received_at if now is None else now
        if abs(current - int(timestamp)) > self.tolerance_seconds:
            raise WebhookVerificationError("The webhook timestamp is outside the replay window.")
        candidates = [secrets] if isinstance(secrets, str) else secrets
        expected = [self._mac(s, timestamp, request.body) for s in candidates if s]
        # Compare every pair, without stopping early, so timing says nothing about which matched.
        matched = False
        for mac in expected:
            for signature in signatures:
                matched |= hmac.compare_digest(mac.encode(), signature.encode("ascii", "replace"))
        if not matched:
            raise WebhookVerificationError("The webhook signature does not match.")


class EventStore(Protocol):
    """Remembers event keys for a while. The gateway backs it with its database."""

    async def add_if_absent(self, key: str, ttl_seconds: float) -> bool:
        """Store ``key``; True if it was not there (or had expired), False if it was."""
        ...

    async def discard(self, key: str) -> None: ...


class InMemoryEventStore:
    """An ``EventStore`` for one process (tests, single-instance development)."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    async def add_if_absent(self, key: str, ttl_seconds: float) -> bool:
        now = time.monotonic()
        if len(self._expiry) > 10_000:
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        expires = self._expiry.get(key)
        if expires is not None and expires > now:
            return False
        self._expiry[key] = now + ttl_seconds
        return True

    async def discard(self, key: str) -> None:
        self._expiry.pop(key, None)


class WebhookDeduplicator:
    """Claims provider event ids so each event is applied once."""

    def __init__(self, store: EventStore, *, retention_seconds: float = 7 * 86400) -> None:
        self._store = store
        self._retention = retention_seconds

    @staticmethod
    def _key(connector_id: str, event_id: str) -> str:
        return f"webhook:{connector_id}:{event_id}"

    async def claim(self, connector_id: str, event_id: str) -> bool:
        """True the first time an event id is seen (within retention), False for a replay."""
        return await self._store.add_if_absent(self._key(connector_id, event_id), self._retention)

    async def release(self, connector_id: str, event_id: str) -> None:
        """Forget a claim whose processing failed, so a redelivery is processed."""
        await self._store.discard(self._key(connector_id, event_id))
