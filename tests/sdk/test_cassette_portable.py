"""SDK cassettes replay whatever origin they were recorded against: requests match on method and
path, not on the simulator's scheme, host or (random loopback) port, so a cassette recorded
against one simulator replays with the connector pointed at another port, host or
``http://replay.invalid``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sdk import ConnectorMetrics, ConnectorRuntime, Credentials, Deadline, RuntimeSettings
from sdk.testing import Cassette, CassetteMismatchError, FakeTokenRevealer, Interaction
from tests.sdk.conftest import API_KEY, TENANT, RuntimeFactory, authorize_request
from tests.sdk.demo_connector import DemoConnector
from tests.sdk.loopback import LoopbackProvider, unused_port


def _cassette(*interactions: tuple[str, str, str]) -> Cassette:
    return Cassette(
        [
            Interaction(method, url, {}, "", 200, {"Content-Type": "application/json"}, body)
            for method, url, body in interactions
        ]
    )


async def _send(cassette: Cassette, method: str, url: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=cassette.transport()) as client:
        return await client.request(method, url)


@pytest.mark.parametrize(
    "replayed_at",
    [
        "http://127.0.0.1:{other}",  # another simulator on another random port
        "http://localhost:{other}",  # another host name
        "http://replay.invalid",  # the conformance kit's replay origin
        "https://sandbox.provider.example",  # the real sandbox's origin
    ],
)
async def test_a_cassette_replays_against_another_origin(replayed_at: str) -> None:
    cassette = _cassette(("POST", "http://127.0.0.1:41234/v1/payments", '{"id": "p_1"}'))
    url = replayed_at.format(other=unused_port()) + "/v1/payments"
    response = await _send(cassette, "POST", url)
    assert response.status_code == 200 and response.json() == {"id": "p_1"}


async def test_matching_is_on_method_and_path_in_recorded_order() -> None:
    cassette = _cassette(
        ("POST", "http://127.0.0.1:41234/v1/payments", '{"n": 1}'),
        ("GET", "http://127.0.0.1:41234/v1/payments/p_1", '{"n": 2}'),
        ("POST", "http://127.0.0.1:41234/v1/payments", '{"n": 3}'),
    )
    transport = cassette.transport()
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:50001") as client:
        assert (await client.post("/v1/payments")).json() == {"n": 1}
        # the query is not compared (as before), the origin no longer is
        assert (await client.get("/v1/payments/p_1", params={"expand": "x"})).json() == {"n": 2}
        assert (await client.post("/v1/payments")).json() == {"n": 3}
        with pytest.raises(CassetteMismatchError, match="no more answers for POST /v1/payments"):
            await client.post("/v1/payments")
        # another path or another method is still a mismatch, wherever it is sent
        with pytest.raises(
            CassetteMismatchError, match=r"No recorded answer for POST /v1/refunds\."
        ):
            await client.post("/v1/refunds")
        with pytest.raises(CassetteMismatchError, match="No recorded answer for DELETE"):
            await client.delete("/v1/payments/p_1")


async def test_recorded_against_one_provider_replays_against_another_port(
    provider: LoopbackProvider,
    make_runtime: RuntimeFactory,
    canary: tuple[str, str, str],
    transcript,
    revealer: FakeTokenRevealer,
    metrics: ConnectorMetrics,
    tmp_path: Path,
) -> None:
    """The QA walkthrough: record through a runtime against a provider on its loopback port,
    then replay with the connector configured for another port (the provider is gone)."""
    token, pan, _ = canary
    recorded = await make_runtime(provider.url).invoke(
        "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
    )
    path = tmp_path / "authorize.json"
    Cassette.from_transcript(transcript).save(path)
    text = path.read_text()
    assert pan not in text and API_KEY not in text and provider.url in text
    await provider.close()

    elsewhere = f"http://127.0.0.1:{unused_port()}"
    assert elsewhere != provider.url
    replay = ConnectorRuntime(
        DemoConnector(),
        settings=RuntimeSettings(base_url=elsewhere, test_mode=True),
        revealer=revealer,
        credentials=Credentials({"api_key": API_KEY}),
        metrics=metrics,
        transport=Cassette.load(path).transport(),
    )
    async with replay:
        replayed = await replay.invoke(
            "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
        )
    assert replayed == recorded
