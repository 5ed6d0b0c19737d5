"""The committed ``connectors/sandbox/cassettes/card_lifecycle.json`` (recorded against a simulator
on a random loopback port) still replays, now with the connector pointed at any origin."""

from __future__ import annotations

import pytest

from connectors.sandbox import SandboxConnector
from sdk import ConnectorRuntime, Credentials, RuntimeSettings
from sdk.testing import Cassette, FakeTokenRevealer, canary_pan
from tests.connectors.sandbox.conftest import API_KEY, TENANT
from tests.connectors.sandbox.test_replay import CASSETTE, DECLINE_CARD, check, lifecycle
from tests.sdk.loopback import unused_port


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:{port}", "http://localhost:{port}", "http://replay.invalid"]
)
async def test_the_committed_cassette_replays_against_another_origin(base_url: str) -> None:
    cassette = Cassette.load(CASSETTE)
    base_url = base_url.format(port=unused_port())
    assert not cassette.interactions[0].url.startswith(base_url)
    revealer = FakeTokenRevealer()
    async with ConnectorRuntime(
        SandboxConnector(),
        settings=RuntimeSettings(base_url=base_url, test_mode=True),
        revealer=revealer,
        credentials=Credentials({"api_key": API_KEY}),
        transport=cassette.transport(),
    ) as runtime:
        results = await lifecycle(
            runtime, revealer.add(TENANT, canary_pan()), revealer.add(TENANT, DECLINE_CARD)
        )
    check(results)
