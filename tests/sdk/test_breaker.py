"""The circuit breaker under asyncio (RELIABILITY item 16).

Opens after the configured failures and then fails fast with no network; after the reset timeout
20 concurrent callers produce exactly one trial; cancellation is never counted and never
swallowed; only transport faults and 5xx count.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from aiohttp import web

from normalization import ConnectorUnavailableError, Outcome
from sdk import Deadline, RevealedCard
from sdk.resilience import AsyncCircuitBreaker, BreakerSettings
from sdk.testing import FakeTokenRevealer
from tests.sdk.conftest import TENANT, RuntimeFactory, authorize_request, metric
from tests.sdk.loopback import LoopbackProvider


async def _server_error(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "down"}, status=500)


async def test_opens_after_n_failures_then_fails_fast_without_network(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary, metrics
) -> None:
    provider.handler = _server_error
    runtime = make_runtime(provider.url, fail_max=3, max_attempts=1)
    for i in range(3):
        result = await runtime.invoke(
            "authorize",
            authorize_request(canary[0], key=f"k{i}"),
            deadline=Deadline.after(5),
            tenant=TENANT,
        )
        assert result.outcome is Outcome.UNKNOWN
    assert runtime.breaker.state == "open"
    assert len(provider.requests) == 3

    timings = []
    for i in range(20):
        started = time.perf_counter()
        with pytest.raises(ConnectorUnavailableError) as caught:
            await runtime.invoke(
                "authorize",
                authorize_request(canary[0], key=f"x{i}"),
                deadline=Deadline.after(5),
                tenant=TENANT,
            )
        timings.append(time.perf_counter() - started)
    assert len(provider.requests) == 3  # no network while open
    # Refused without waiting: about 0.2 ms on a quiet machine (bench/forward.py measures it). A
    # refusal that waited for anything (a backoff is 10-50 ms, the network more) would be far
    # above 5 ms; the slack is for a loaded CI machine, where a whole call can take 1 ms.
    assert statistics.median(timings) < 0.005
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert metric(metrics, "tessera_connector_breaker_state", connector="demo") == 2
    assert (
        metric(
            metrics, "tessera_connector_rejections_total", connector="demo", reason="breaker_open"
        )
        == 20
    )


async def test_half_open_admits_exactly_one_trial_among_20_concurrent_callers(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    provider.handler = _server_error
    runtime = make_runtime(provider.url, fail_max=2, reset_timeout=0.2, max_attempts=1)
    for i in range(2):
        await runtime.invoke(
            "authorize",
            authorize_request(canary[0], key=f"k{i}"),
            deadline=Deadline.after(5),
            tenant=TENANT,
        )
    assert runtime.breaker.state == "open"
    await asyncio.sleep(0.25)

    async def slow_ok(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        return web.json_response({"id": "pay_1", "status": "authorized"})

    provider.handler = slow_ok
    before = len(provider.requests)
    results = await asyncio.gather(
        *(
            runtime.invoke(
                "authorize",
                authorize_request(canary[0], key=f"t{i}"),
                deadline=Deadline.after(5),
                tenant=TENANT,
            )
            for i in range(20)
        ),
        return_exceptions=True,
    )
    assert len(provider.requests) - before == 1
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ConnectorUnavailableError)]
    assert len(succeeded) == 1 and succeeded[0].outcome is Outcome.SUCCEEDED
    assert len(refused) == 19
    assert runtime.breaker.state == "closed"


async def test_failed_trial_reopens(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    provider.handler = _server_error
    # 0.5 s: the refused call below must come before the breaker half-opens again.
    runtime = make_runtime(provider.url, fail_max=1, reset_timeout=0.5, max_attempts=1)
    request = authorize_request(canary[0])
    await runtime.invoke("authorize", request, deadline=Deadline.after(5), tenant=TENANT)
    assert runtime.breaker.state == "open"
    await asyncio.sleep(0.55)
    await runtime.invoke("authorize", request, deadline=Deadline.after(5), tenant=TENANT)
    assert runtime.breaker.state == "open"
    with pytest.raises(ConnectorUnavailableError):
        await runtime.invoke("authorize", request, deadline=Deadline.after(5), tenant=TENANT)


async def test_cancelled_calls_never_trip_the_breaker_and_propagate(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.json_response({})

    provider.handler = hang
    runtime = make_runtime(provider.url, fail_max=2, max_attempts=1)
    for i in range(5):
        arrived.clear()
        task = asyncio.create_task(
            runtime.invoke(
                "authorize",
                authorize_request(canary[0], key=f"c{i}"),
                deadline=Deadline.after(10),
                tenant=TENANT,
            )
        )
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    release.set()
    assert runtime.breaker.state == "closed"
    assert runtime.breaker.fail_counter == 0
    assert runtime.bulkhead.in_flight == 0
    # Counted as what they were (they used to read as refusals, "rejected").
    labels = {"connector": runtime.connector_id, "operation": "authorize"}
    calls = "tessera_connector_calls_total"
    assert metric(runtime.metrics, calls, **labels, outcome="cancelled") == 5
    assert metric(runtime.metrics, calls, **labels, outcome="rejected") == 0


async def test_cancelled_trial_frees_the_half_open_slot() -> None:
    breaker = AsyncCircuitBreaker("unit", BreakerSettings(fail_max=1, reset_timeout=0.01))
    ticket = breaker.admit()
    breaker.record_failure(ticket)
    assert breaker.state == "open"
    await asyncio.sleep(0.02)
    trial = breaker.admit()
    assert trial.trial and breaker.state == "half-open"
    with pytest.raises(ConnectorUnavailableError):
        breaker.admit()
    breaker.release(trial)  # cancelled: no verdict
    second = breaker.admit()
    assert second.trial
    breaker.record_success(second)
    assert breaker.state == "closed"


def test_stale_ticket_from_before_a_state_change_is_ignored() -> None:
    breaker = AsyncCircuitBreaker("unit", BreakerSettings(fail_max=2, reset_timeout=60))
    slow = breaker.admit()
    breaker.record_failure(breaker.admit())
    breaker.record_failure(breaker.admit())
    assert breaker.state == "open"
    breaker.record_success(slow)  # started while closed; must not close the open breaker
    assert breaker.state == "open"


def test_declines_and_successes_reset_the_consecutive_failure_count() -> None:
    breaker = AsyncCircuitBreaker("unit", BreakerSettings(fail_max=3, reset_timeout=60))
    breaker.record_failure(breaker.admit())
    breaker.record_failure(breaker.admit())
    breaker.record_success(breaker.admit())
    breaker.record_failure(breaker.admit())
    assert breaker.state == "closed" and breaker.fail_counter == 1


async def test_deadline_spent_before_the_network_is_not_a_provider_failure(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary
) -> None:
    class SlowVault(FakeTokenRevealer):
        async def reveal(self, tenant: str, token: str, *, purpose: str) -> RevealedCard:
            await asyncio.sleep(1)
            return await super().reveal(tenant, token, purpose=purpose)

    runtime = make_runtime(provider.url, fail_max=1, max_attempts=1)
    runtime.revealer = SlowVault()
    result = await runtime.invoke(
        "authorize", authorize_request(canary[0]), deadline=Deadline.after(0.1), tenant=TENANT
    )
    assert result.outcome is Outcome.NOT_SENT
    assert provider.requests == []
    assert runtime.breaker.state == "closed"  # a slow vault does not open the provider's breaker
