"""Webhooks (RELIABILITY 34): the sandbox's signed events verify; a tampered body, a wrong
secret, a stale timestamp or a malformed body are refused; a replayed event id is claimed once;
parsing yields the normalized state; the simulator delivers its events to a webhook URL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from connectors.sandbox import SandboxConnector
from connectors.sandbox.transformers import WEBHOOK_SCHEME
from normalization import (
    CaptureRequest,
    ConnectorConfigurationError,
    Money,
    PaymentStatus,
)
from sdk import (
    ConnectorRuntime,
    Credentials,
    InMemoryEventStore,
    WebhookDeduplicator,
    WebhookRequest,
    WebhookVerificationError,
)
from tests.connectors.sandbox.conftest import (
    WEBHOOK_SECRET,
    CardFactory,
    RuntimeFactory,
    Sandbox,
    authorize_request,
    eventually,
    invoke,
    start_sandbox,
)

CONNECTOR = SandboxConnector()
CREDENTIALS = Credentials({"api_key": "unused_here", "webhook_secret": WEBHOOK_SECRET})


@pytest.fixture
async def captured_event(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> tuple[bytes, str]:
    """(body, signature) of the event a partial capture made the sandbox emit."""
    auth = await invoke(runtime, "authorize", authorize_request(card()))
    await invoke(
        runtime,
        "capture",
        CaptureRequest(
            payment_id="p",
            provider_reference=auth.provider_reference,
            amount=Money(400, "EUR"),
            final=False,
        ),
    )
    [event] = (await sandbox.admin("GET", "/__sandbox/events"))["events"]
    return event["body"].encode(), event["signature"]


def webhook(body: bytes, signature: str) -> WebhookRequest:
    return WebhookRequest.of({"Sandbox-Signature": signature, "Content-Type": "x"}, body)


def test_a_sandbox_event_verifies_and_parses(captured_event: tuple[bytes, str]) -> None:
    body, signature = captured_event
    request = webhook(body, signature)
    CONNECTOR.verify_webhook(request, CREDENTIALS)
    [event] = CONNECTOR.parse_webhook(request)
    assert event.event_type == "authorization.partially_captured"
    assert event.event_id.startswith("evt_")
    assert event.provider_reference is not None and event.provider_reference.startswith("auth_")
    assert event.result is not None
    assert event.result.status is PaymentStatus.PARTIALLY_CAPTURED
    assert event.result.amount_captured == Money(400, "EUR")
    assert event.occurred_at is not None and abs(event.occurred_at.timestamp() - time.time()) < 60


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tampered", "does not match"),
        ("wrong_secret", "does not match"),
        ("stale", "replay window"),
        ("missing", "missing"),
    ],
)
def test_bad_webhooks_are_refused(
    captured_event: tuple[bytes, str], case: str, message: str
) -> None:
    body, signature = captured_event
    if case == "tampered":
        request = webhook(
            body.replace(b'"amount_captured":400', b'"amount_captured":1050'), signature
        )
    elif case == "wrong_secret":
        request = webhook(body, WEBHOOK_SCHEME.sign("whsec_not_the_one", body))
    elif case == "stale":
        stale = WEBHOOK_SCHEME.sign(WEBHOOK_SECRET, body, int(time.time()) - 301)
        request = webhook(body, stale)
    else:
        request = WebhookRequest.of({}, body)
    with pytest.raises(WebhookVerificationError, match=message) as refused:
        CONNECTOR.verify_webhook(request, CREDENTIALS)
    assert WEBHOOK_SECRET not in str(refused.value)


async def test_a_replayed_event_id_is_claimed_once(captured_event: tuple[bytes, str]) -> None:
    body, signature = captured_event
    dedup = WebhookDeduplicator(InMemoryEventStore())
    claims = []
    for _ in range(2):  # the same delivery twice: both authentic, only the first is applied
        request = webhook(body, signature)
        CONNECTOR.verify_webhook(request, CREDENTIALS)
        [event] = CONNECTOR.parse_webhook(request)
        claims.append(await dedup.claim("sandbox", event.event_id))
    assert claims == [True, False]


def test_previous_secret_is_accepted_during_rotation(captured_event: tuple[bytes, str]) -> None:
    body, signature = captured_event
    rotated = Credentials(
        {
            "api_key": "k_unused",
            "webhook_secret": "whsec_new_one",
            "webhook_secret_previous": WEBHOOK_SECRET,
        }
    )
    CONNECTOR.verify_webhook(webhook(body, signature), rotated)


def test_unconfigured_secret_and_malformed_body() -> None:
    with pytest.raises(ConnectorConfigurationError):
        CONNECTOR.verify_webhook(webhook(b"{}", "t=1,v1=00"), Credentials({"api_key": "k_1234"}))
    body = b'{"id": "evt_1"}'
    request = webhook(body, WEBHOOK_SCHEME.sign(WEBHOOK_SECRET, body))
    CONNECTOR.verify_webhook(request, CREDENTIALS)  # authentic...
    with pytest.raises(WebhookVerificationError, match="malformed"):
        CONNECTOR.parse_webhook(request)  # ...but not an event


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[WebhookRequest]]]:
    received: list[WebhookRequest] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(WebhookRequest.of(dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", accept)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hooks", received
    await runner.cleanup()


async def test_the_simulator_delivers_signed_events_when_pending_settles(
    make_runtime: RuntimeFactory,
    card: CardFactory,
    receiver: tuple[str, list[WebhookRequest]],
) -> None:
    url, received = receiver
    sandbox = await start_sandbox(webhook_url=url, settle_delay=0.1)
    try:
        runtime = make_runtime(sandbox.url)
        pending = await invoke(
            runtime, "authorize", authorize_request(card("4000000000000200"), capture=True)
        )
        assert pending.status is PaymentStatus.PENDING
        await eventually(lambda: len(received) == 1)
        CONNECTOR.verify_webhook(received[0], CREDENTIALS)
        [event] = CONNECTOR.parse_webhook(received[0])
        assert event.event_type == "authorization.captured"
        assert event.provider_reference == pending.provider_reference
        assert event.result is not None and event.result.status is PaymentStatus.CAPTURED
        [record] = (await sandbox.admin("GET", "/__sandbox/events"))["events"]
        assert record["delivered"] is True and record["delivery_attempts"] == 1
    finally:
        await sandbox.runner.cleanup()
