"""Webhook verification (RELIABILITY item 34): valid signature inside the window only; tampered
body, wrong secret, stale or future timestamp, missing header rejected; each event id once."""

from __future__ import annotations

import pytest

from sdk import (
    InMemoryEventStore,
    TimestampedHmacScheme,
    WebhookDeduplicator,
    WebhookRequest,
    WebhookVerificationError,
)

SECRET = "whsec_9fJ2kQ"
BODY = b'{"id": "evt_1", "type": "payment.captured"}'
NOW = 1_700_000_000
SCHEME = TimestampedHmacScheme(header="Demo-Signature", tolerance_seconds=300)


def request(signature: str | None, body: bytes = BODY) -> WebhookRequest:
    headers = {"Demo-Signature": signature} if signature is not None else {}
    return WebhookRequest.of(headers, body, received_at=NOW)


def test_valid_signature_inside_window_is_accepted() -> None:
    SCHEME.verify(request(SCHEME.sign(SECRET, BODY, NOW - 299)), SECRET)
    # secret rotation: any of several secrets, any of several signatures
    both = (
        SCHEME.sign("old_secret_1", BODY, NOW) + "," + SCHEME.sign(SECRET, BODY, NOW).split(",")[1]
    )
    SCHEME.verify(request(both), ["unrelated_1", SECRET])


@pytest.mark.parametrize(
    ("signature", "body", "message"),
    [
        (SCHEME.sign(SECRET, BODY, NOW), BODY + b" ", "does not match"),
        (SCHEME.sign("wrong_secret", BODY, NOW), BODY, "does not match"),
        (SCHEME.sign(SECRET, BODY, NOW - 301), BODY, "replay window"),
        (SCHEME.sign(SECRET, BODY, NOW + 301), BODY, "replay window"),
        (None, BODY, "header is missing"),
        ("v1=abc", BODY, "no valid timestamp"),
        (f"t={NOW}", BODY, "no v1 signature"),
        ("t=\uff11\uff17,v1=00", BODY, "no valid timestamp"),  # full-width digits
        ("t=" + "1" * 5000 + ",v1=ab", BODY, "no valid timestamp"),  # int() would raise
    ],
)
def test_bad_webhooks_are_rejected(signature: str | None, body: bytes, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message) as caught:
        SCHEME.verify(request(signature, body), SECRET)
    assert SECRET not in str(caught.value)


async def test_each_event_is_claimed_once_and_released_on_failure() -> None:
    dedup = WebhookDeduplicator(InMemoryEventStore(), retention_seconds=60)
    assert await dedup.claim("demo", "evt_1")
    assert not await dedup.claim("demo", "evt_1")
    assert await dedup.claim("other", "evt_1")  # ids are per connector
    assert await dedup.claim("demo", "evt_2")
    await dedup.release("demo", "evt_2")  # processing failed: a redelivery is processed
    assert await dedup.claim("demo", "evt_2")


async def test_claims_expire_after_retention() -> None:
    dedup = WebhookDeduplicator(InMemoryEventStore(), retention_seconds=0.0)
    assert await dedup.claim("demo", "evt_1")
    assert await dedup.claim("demo", "evt_1")
