"""Outcome certainty against real sockets: what each failure means, and what is retried.

RELIABILITY items 12-15: slower than the deadline -> unknown, on time; 5xx/429 retried with the
same idempotency key and Retry-After only where declared safe; refused -> not_sent; reset after
the request was written -> unknown and never retried blindly; a trickled reply is cut off.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import structlog
from aiohttp import web

from normalization import (
    CaptureRequest,
    DeclineCode,
    Money,
    Outcome,
    PaymentStatus,
)
from sdk import Deadline
from sdk.outcomes import classify_transport_error, parse_retry_after
from tests.sdk.conftest import TENANT, RuntimeFactory, authorize_request, metric
from tests.sdk.loopback import (
    LoopbackProvider,
    RawServer,
    raw_server,
    read_request,
    reset,
    unused_port,
)


def capture_request(key: str = "cap-1") -> CaptureRequest:
    return CaptureRequest(
        payment_id="pay_local_1",
        provider_reference="pay_123",
        amount=Money(1050, "EUR"),
        idempotency_key=key,
    )


async def test_connection_refused_is_not_sent_and_retried(
    make_runtime: RuntimeFactory, canary, metrics
) -> None:
    runtime = make_runtime(f"http://127.0.0.1:{unused_port()}", fail_max=10)
    result = await runtime.invoke(
        "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
    )
    assert result.outcome is Outcome.NOT_SENT
    assert result.status is PaymentStatus.FAILED
    # not_sent is safe to retry even for an authorization: every attempt was made.
    assert (
        metric(
            metrics,
            "tessera_connector_retries_total",
            connector="demo",
            operation="authorize",
            reason="not_sent",
        )
        == 2
    )


async def test_reset_after_request_written_is_unknown_and_not_retried(
    make_runtime: RuntimeFactory, canary, metrics
) -> None:
    async def read_then_reset(state: RawServer, reader, writer) -> None:
        state.bodies.append(await read_request(reader))
        reset(writer)

    server = await raw_server(read_then_reset)
    try:
        runtime = make_runtime(server.url)
        result = await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
        )
    finally:
        await server.close()
    assert result.outcome is Outcome.UNKNOWN
    assert result.status is PaymentStatus.UNKNOWN
    assert server.connections == 1  # never retried blindly
    assert len(server.bodies) == 1 and b"POST /payments" in server.bodies[0]


async def test_reset_after_write_on_retry_safe_operation_is_retried_with_same_key(
    make_runtime: RuntimeFactory,
) -> None:
    async def read_then_reset(state: RawServer, reader, writer) -> None:
        state.bodies.append(await read_request(reader))
        reset(writer)

    server = await raw_server(read_then_reset)
    try:
        runtime = make_runtime(server.url, max_attempts=2, fail_max=10)
        result = await runtime.invoke(
            "capture", capture_request("cap-7"), deadline=Deadline.after(5), tenant=TENANT
        )
    finally:
        await server.close()
    assert result.outcome is Outcome.UNKNOWN
    assert len(server.bodies) == 2
    assert all(b"Idempotency-Key: cap-7" in body for body in server.bodies)


async def test_provider_slower_than_deadline_answers_unknown_on_time(
    make_runtime: RuntimeFactory, canary
) -> None:
    released = asyncio.Event()

    async def hang(state: RawServer, reader, writer) -> None:
        await read_request(reader)
        await released.wait()

    server = await raw_server(hang)
    try:
        runtime = make_runtime(server.url)
        budget = 0.5
        started = time.perf_counter()
        result = await runtime.invoke(
            "authorize",
            authorize_request(canary[0]),
            deadline=Deadline.after(budget),
            tenant=TENANT,
        )
        elapsed = time.perf_counter() - started
    finally:
        released.set()
        await server.close()
    assert result.outcome is Outcome.UNKNOWN
    # The deadline ends the call (not an error before it), within 10 % plus what a loaded CI
    # machine adds to cancelling and cleaning up; a late deadline would be off by whole budgets.
    assert budget * 0.9 <= elapsed < budget * 1.1 + 0.25
    assert server.connections == 1


async def test_trickled_reply_is_cut_off_by_the_deadline(
    make_runtime: RuntimeFactory, canary
) -> None:
    async def trickle(state: RawServer, reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    server = await raw_server(trickle)
    try:
        runtime = make_runtime(server.url)
        started = time.perf_counter()
        result = await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(0.6), tenant=TENANT
        )
        elapsed = time.perf_counter() - started
    finally:
        await server.close()
    assert result.outcome is Outcome.UNKNOWN
    # The trickle would last 100 s; the deadline (plus slack for a loaded machine) cuts it.
    assert 0.6 * 0.9 <= elapsed < 0.6 * 1.1 + 0.25


async def test_5xx_retried_for_retry_safe_operation_honouring_retry_after(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, metrics
) -> None:
    async def flaky(request: web.Request) -> web.StreamResponse:
        if len(provider.requests) == 1:
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "1"})
        return web.json_response({"id": "pay_123", "status": "captured"})

    provider.handler = flaky
    runtime = make_runtime(provider.url, max_attempts=3)
    started = time.perf_counter()
    result = await runtime.invoke(
        "capture", capture_request("cap-9"), deadline=Deadline.after(5), tenant=TENANT
    )
    elapsed = time.perf_counter() - started
    assert result.outcome is Outcome.SUCCEEDED and result.status is PaymentStatus.CAPTURED
    assert len(provider.requests) == 2
    assert {r.headers["Idempotency-Key"] for r in provider.requests} == {"cap-9"}
    assert elapsed >= 1.0  # Retry-After honoured, not the 10-50 ms jitter
    assert (
        metric(
            metrics,
            "tessera_connector_retries_total",
            connector="demo",
            operation="capture",
            reason="server_error",
        )
        == 1
    )


async def test_retry_after_beyond_the_deadline_stops_retrying(
    provider: LoopbackProvider, make_runtime: RuntimeFactory
) -> None:
    async def unavailable(request: web.Request) -> web.StreamResponse:
        return web.json_response({}, status=503, headers={"Retry-After": "30"})

    provider.handler = unavailable
    runtime = make_runtime(provider.url, max_attempts=5)
    started = time.perf_counter()
    result = await runtime.invoke(
        "capture", capture_request(), deadline=Deadline.after(2), tenant=TENANT
    )
    # Gave up at once: waiting would have cost the 2 s deadline (or the 30 s Retry-After).
    assert time.perf_counter() - started < 1.5
    assert len(provider.requests) == 1
    assert result.outcome is Outcome.UNKNOWN and result.raw_status == "http_503"


async def test_5xx_on_authorize_is_unknown_and_not_retried(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "boom"}, status=500)

    provider.handler = broken
    runtime = make_runtime(provider.url)
    result = await runtime.invoke(
        "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
    )
    assert result.outcome is Outcome.UNKNOWN and result.raw_status == "http_500"
    assert len(provider.requests) == 1


async def test_429_on_authorize_is_not_sent_and_not_retried(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    async def throttled(request: web.Request) -> web.StreamResponse:
        return web.json_response({}, status=429, headers={"Retry-After": "0"})

    provider.handler = throttled
    runtime = make_runtime(provider.url)
    result = await runtime.invoke(
        "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
    )
    assert result.outcome is Outcome.NOT_SENT and result.raw_status == "http_429"
    assert len(provider.requests) == 1
    assert runtime.breaker.fail_counter == 0  # 429 is not a fault


async def test_401_is_the_gateways_credentials_not_sent_never_retried_and_counted(
    provider: LoopbackProvider, make_runtime: RuntimeFactory
) -> None:
    """A wrong or revoked API key: the provider did nothing, retrying cannot help, and every
    call will fail the same way (the breaker counts it). It used to reach the connector's
    parser, which read the error envelope as a card decline."""

    async def refused(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"code": "card_declined", "message": "Invalid API key"}}, status=401
        )

    provider.handler = refused
    runtime = make_runtime(provider.url, max_attempts=3)
    with structlog.testing.capture_logs() as logs:
        result = await runtime.invoke(
            "capture", capture_request(), deadline=Deadline.after(5), tenant=TENANT
        )
    assert result.outcome is Outcome.NOT_SENT and result.decline is None
    assert result.status is PaymentStatus.FAILED and result.raw_status == "http_401"
    assert len(provider.requests) == 1  # capture is retry-safe here, and still not retried
    assert runtime.breaker.fail_counter == 1
    assert any(
        line["event"] == "connector_credentials_refused" and line["log_level"] == "error"
        for line in logs
    )


async def test_decline_is_a_value_mapped_through_the_error_map(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary, metrics
) -> None:
    codes = iter(["insufficient_funds", "brand_new_code"])

    async def declined(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"code": next(codes), "message": f"Card {canary[1]} declined"}}, status=402
        )

    provider.handler = declined
    runtime = make_runtime(provider.url)
    first = await runtime.invoke(
        "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
    )
    assert first.outcome is Outcome.DECLINED and first.decline is not None
    assert first.decline.code is DeclineCode.INSUFFICIENT_FUNDS
    assert first.decline.provider_code == "insufficient_funds"
    assert canary[1] not in first.decline.message  # an echoed PAN is masked
    second = await runtime.invoke(
        "authorize",
        authorize_request(canary[0], key="idem-2"),
        deadline=Deadline.after(5),
        tenant=TENANT,
    )
    assert second.decline is not None
    assert second.decline.code is DeclineCode.PROCESSING_ERROR
    assert second.decline.provider_code == "brand_new_code"
    assert (
        metric(
            metrics,
            "tessera_connector_unmapped_provider_codes_total",
            connector="demo",
            operation="authorize",
        )
        == 1
    )
    assert runtime.breaker.fail_counter == 0  # declines never count


async def test_retryable_provider_code_is_retried_then_returned_as_decline(
    provider: LoopbackProvider, make_runtime: RuntimeFactory
) -> None:
    async def try_again(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"code": "try_again"}}, status=409)

    provider.handler = try_again
    runtime = make_runtime(provider.url, max_attempts=3)
    result = await runtime.invoke(
        "capture", capture_request(), deadline=Deadline.after(5), tenant=TENANT
    )
    assert len(provider.requests) == 3
    assert result.outcome is Outcome.DECLINED
    assert result.decline is not None and result.decline.provider_code == "try_again"


async def test_unparseable_reply_after_sending_is_unknown(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>oops</html>", status=200)

    provider.handler = garbage
    runtime = make_runtime(provider.url)
    with structlog.testing.capture_logs() as logs:
        result = await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
        )
    assert result.outcome is Outcome.UNKNOWN
    # The operator learns what failed and where in the connector, never the message (which
    # may quote the reply): the parser's line in the connector's own module.
    [failed] = [e for e in logs if e["event"] == "connector_failed_after_send"]
    assert failed["error"] == "ProviderError"
    assert failed["where"].startswith("demo_connector.py:")
    assert failed["where"].endswith(" in parse_payment")
    assert "oops" not in str(failed)


def test_classification_follows_what_was_written() -> None:
    request = httpx.Request("POST", "https://x.example")
    read_error = httpx.ReadError("reset", request=request)
    connect_error = httpx.ConnectError("refused", request=request)
    assert classify_transport_error(read_error, write_started=True) is Outcome.UNKNOWN
    assert classify_transport_error(read_error, write_started=None) is Outcome.UNKNOWN
    # trace events seen, none of them the start of the request: nothing was written
    assert classify_transport_error(read_error, write_started=False) is Outcome.NOT_SENT
    assert classify_transport_error(connect_error, write_started=None) is Outcome.NOT_SENT
    assert (
        classify_transport_error(
            httpx.WriteError("broken pipe", request=request), write_started=True
        )
        is Outcome.UNKNOWN
    )


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("999999") == 3600.0
