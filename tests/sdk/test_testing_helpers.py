"""The helpers connector authors test with: cassettes (recorded scrubbed, replayed through
respx) and fault injection producing every outcome class."""

from __future__ import annotations

from pathlib import Path

import pytest

from normalization import Outcome
from sdk import (
    ConnectorMetrics,
    ConnectorRuntime,
    Credentials,
    Deadline,
    RetrySettings,
    RuntimeSettings,
)
from sdk.http import network_transport
from sdk.testing import Cassette, CassetteMismatchError, Fault, FaultInjector
from tests.sdk.conftest import API_KEY, TENANT, RuntimeFactory, authorize_request
from tests.sdk.demo_connector import DemoConnector
from tests.sdk.loopback import LoopbackProvider


async def test_record_then_replay_without_the_provider(
    provider: LoopbackProvider,
    make_runtime: RuntimeFactory,
    canary,
    transcript,
    revealer,
    metrics,
    tmp_path: Path,
) -> None:
    token, pan, _ = canary
    live = make_runtime(provider.url)
    recorded = await live.invoke(
        "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
    )
    path = tmp_path / "cassettes" / "authorize_approved.json"
    Cassette.from_transcript(transcript).save(path)
    text = path.read_text()
    assert pan not in text and API_KEY not in text and '"cvc": \\"***\\"' not in text
    assert "[REDACTED]" in text

    cassette = Cassette.load(path)
    replay = ConnectorRuntime(
        DemoConnector(),
        settings=RuntimeSettings(base_url=provider.url, test_mode=True),
        revealer=revealer,
        credentials=Credentials({"api_key": API_KEY}),
        metrics=metrics,
        transport=cassette.transport(),
    )
    async with replay:
        replayed = await replay.invoke(
            "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
        )
        assert replayed == recorded
        assert len(provider.requests) == 1  # the provider was not called again
        # a second authorize has no recorded answer: the test fails loudly, it is not "unknown"
        with pytest.raises(CassetteMismatchError, match="no more answers"):
            await replay.invoke(
                "authorize",
                authorize_request(token, key="idem-2"),
                deadline=Deadline.after(5),
                tenant=TENANT,
            )


def test_a_cassette_with_card_data_is_not_saved(tmp_path: Path, canary) -> None:
    from sdk.testing import Interaction

    leaky = Cassette([Interaction("POST", "https://x.example/p", {}, canary[1], 200, {}, "{}")])
    with pytest.raises(ValueError, match="not saved"):
        leaky.save(tmp_path / "leaky.json")
    assert not (tmp_path / "leaky.json").exists()


@pytest.mark.parametrize(
    ("fault", "reaches_provider"),
    [
        (Fault.refused(), False),
        (Fault.connect_timeout(), False),
        (Fault.reset_before_write(), False),
        (Fault.reset_after_write(), True),
        (Fault.read_timeout(), True),
        (Fault.malformed_reply(), True),
        (Fault.server_error(502), False),
        (Fault.throttled("0"), False),
    ],
)
async def test_each_fault_produces_its_outcome(
    provider: LoopbackProvider, revealer, metrics, canary, fault: Fault, reaches_provider: bool
) -> None:
    injector = FaultInjector(network_transport(test_mode=True), [fault])
    runtime = ConnectorRuntime(
        DemoConnector(),
        settings=RuntimeSettings(
            base_url=provider.url, test_mode=True, retry=RetrySettings(max_attempts=1)
        ),
        revealer=revealer,
        credentials=Credentials({"api_key": API_KEY}),
        metrics=metrics,
        transport=injector,
    )
    async with runtime:
        result = await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
        )
    assert result.outcome is injector.history[0].expected_outcome
    assert len(provider.requests) == (1 if reaches_provider else 0)


async def test_delay_past_the_deadline_is_unknown(
    provider: LoopbackProvider, revealer, metrics, canary
) -> None:
    injector = FaultInjector(network_transport(test_mode=True), [Fault.delay(1.0)])
    runtime = ConnectorRuntime(
        DemoConnector(),
        settings=RuntimeSettings(base_url=provider.url, test_mode=True),
        revealer=revealer,
        credentials=Credentials({"api_key": API_KEY}),
        metrics=ConnectorMetrics(metrics.registry.__class__()),
        transport=injector,
    )
    async with runtime:
        result = await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(0.2), tenant=TENANT
        )
    # Without trace events a mock transport cannot prove nothing was written: unknown.
    assert result.outcome is Outcome.UNKNOWN
