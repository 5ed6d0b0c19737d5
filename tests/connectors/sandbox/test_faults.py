"""Outcome certainty against the real simulator (RELIABILITY 5, 10, 12-14): timeouts and resets
after the request was read are ``unknown`` and never retried blindly; 5xx and 429 are retried
with the same idempotency key; a closed port is ``not_sent``; replays charge once."""

from __future__ import annotations

import asyncio
import socket
import time

from normalization import CaptureRequest, DeclineCode, Money, Outcome, PaymentStatus, SyncRequest
from sdk import ConnectorRuntime
from tests.connectors.sandbox.conftest import (
    CardFactory,
    RuntimeFactory,
    Sandbox,
    authorize_request,
    invoke,
    start_sandbox,
)

HANG, RESET, RESET_ONCE = 99_408, 99_104, 99_105
SERVER_ERROR, UNAVAILABLE_ONCE, THROTTLE = 99_500, 99_503, 99_429


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def reconcile(runtime: ConnectorRuntime, reference: str = "order-42") -> PaymentStatus:
    result = await invoke(runtime, "sync", SyncRequest(payment_id="pay_1", reference=reference))
    return result.status


async def test_slower_than_the_deadline_is_unknown_on_time_and_not_retried(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    budget = 0.6
    started = time.perf_counter()
    result = await invoke(runtime, "authorize", authorize_request(card(), HANG), budget=budget)
    elapsed = time.perf_counter() - started
    assert result.outcome is Outcome.UNKNOWN and result.status is PaymentStatus.UNKNOWN
    # On time: the sandbox would hold the reply far longer; the slack is for a loaded machine
    # (the sandbox shares this event loop).
    assert budget * 0.9 <= elapsed < budget * 1.1 + 0.25
    [charge] = await sandbox.charges()
    assert charge["key_seen"] == 1  # one attempt, no blind retry
    # The sandbox did act: reconciliation finds the authorization.
    assert await reconcile(runtime) is PaymentStatus.AUTHORIZED


async def test_reset_after_the_request_was_read_is_unknown_and_retried_only_with_the_key(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(), RESET, key="k-reset"))
    assert result.outcome is Outcome.UNKNOWN
    # authorize is declared retry-safe because the sandbox honours the key: every retry carried
    # it, and the sandbox charged once.
    keys = [r["idempotency_key"] for r in sandbox.api_requests()]
    assert keys == ["k-reset"] * 3
    [charge] = await sandbox.charges()
    assert charge["key_seen"] == 3 and charge["status"] == "authorized"
    assert await reconcile(runtime) is PaymentStatus.AUTHORIZED


async def test_reset_without_an_idempotency_key_is_never_retried(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(), RESET, key=None))
    assert result.outcome is Outcome.UNKNOWN
    assert len(sandbox.api_requests()) == 1
    assert len(await sandbox.charges()) == 1


async def test_reset_once_is_recovered_by_the_same_key_retry(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(), RESET_ONCE))
    assert result.outcome is Outcome.SUCCEEDED and result.status is PaymentStatus.AUTHORIZED
    [charge] = await sandbox.charges()
    assert charge["id"] == result.provider_reference and charge["key_seen"] == 2


async def test_5xx_is_retried_with_the_same_key_and_charges_nothing(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(), SERVER_ERROR, key="k5"))
    assert result.outcome is Outcome.UNKNOWN and result.raw_status == "http_500"
    assert [r["idempotency_key"] for r in sandbox.api_requests()] == ["k5"] * 3
    assert await sandbox.charges() == []


async def test_5xx_without_a_key_is_not_retried(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(), SERVER_ERROR, key=None))
    assert result.outcome is Outcome.UNKNOWN
    assert len(sandbox.api_requests()) == 1


async def test_transient_503_is_retried_to_success_with_one_charge(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    result = await invoke(runtime, "authorize", authorize_request(card(), UNAVAILABLE_ONCE))
    assert result.status is PaymentStatus.AUTHORIZED
    assert [r["status"] for r in sandbox.api_requests()] == [503, 201]
    [charge] = await sandbox.charges()
    assert charge["key_seen"] == 2


async def test_429_honours_retry_after_and_ends_not_sent(
    make_runtime: RuntimeFactory, card: CardFactory, sandbox: Sandbox
) -> None:
    runtime = make_runtime(max_attempts=2)
    started = time.perf_counter()
    result = await invoke(runtime, "authorize", authorize_request(card(), THROTTLE), budget=3)
    elapsed = time.perf_counter() - started
    assert result.outcome is Outcome.NOT_SENT and result.raw_status == "http_429"
    assert elapsed >= 1.0  # Retry-After: 1, not the 10-50 ms jitter
    assert len(sandbox.api_requests()) == 2
    assert await sandbox.charges() == []


async def test_closed_port_is_not_sent(make_runtime: RuntimeFactory, card: CardFactory) -> None:
    runtime = make_runtime(f"http://127.0.0.1:{unused_port()}")
    result = await invoke(runtime, "authorize", authorize_request(card()))
    assert result.outcome is Outcome.NOT_SENT and result.status is PaymentStatus.FAILED


async def test_idempotent_replay_charges_once(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    token = card()
    first = await invoke(runtime, "authorize", authorize_request(token, key="same"))
    second = await invoke(runtime, "authorize", authorize_request(token, key="same"))
    assert second.provider_reference == first.provider_reference
    assert second.status is PaymentStatus.AUTHORIZED
    [charge] = await sandbox.charges()
    assert charge["idempotency_key"] == "same" and charge["key_seen"] == 2

    other = await invoke(runtime, "authorize", authorize_request(token, 2000, key="same"))
    assert other.decline is not None
    assert other.decline.code is DeclineCode.INVALID_REQUEST
    assert other.decline.provider_code == "idempotency_key_reused"
    assert len(await sandbox.charges()) == 1


async def test_idempotency_key_expires_after_its_retention(
    make_runtime: RuntimeFactory, card: CardFactory
) -> None:
    short = await start_sandbox(idempotency_retention_seconds=1.0)
    try:
        runtime = make_runtime(short.url)
        token = card()
        first = await invoke(runtime, "authorize", authorize_request(token, key="brief"))
        inside = await invoke(runtime, "authorize", authorize_request(token, key="brief"))
        assert inside.provider_reference == first.provider_reference
        await asyncio.sleep(1.1)
        after = await invoke(runtime, "authorize", authorize_request(token, key="brief"))
        assert after.provider_reference != first.provider_reference
        assert len(await short.charges()) == 2
    finally:
        await short.runner.cleanup()


async def test_capture_fault_is_retried_with_its_key_and_captures_nothing(
    runtime: ConnectorRuntime, card: CardFactory, sandbox: Sandbox
) -> None:
    auth = await invoke(runtime, "authorize", authorize_request(card(), 200_000))
    request = CaptureRequest(
        payment_id="p",
        provider_reference=auth.provider_reference,
        amount=Money(SERVER_ERROR, "EUR"),
        idempotency_key="cap-k",
    )
    result = await invoke(runtime, "capture", request)
    assert result.outcome is Outcome.UNKNOWN
    [charge] = await sandbox.charges()
    assert charge["captures"] == [] and sandbox.state.idempotency.seen["cap-k"] == 3
