"""Cassettes: a card lifecycle recorded against the simulator (scrubbed by the SDK's transcript)
replays without a network, through the same egress transport and parsers.

``connectors/sandbox/cassettes/card_lifecycle.json`` is committed for replay mode (the
conformance kit's, and CI's); regenerate it with ``TESSERA_RECORD_CASSETTES=1 pytest
tests/connectors/sandbox/test_replay.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from connectors.sandbox import SandboxConnector
from normalization import (
    CaptureRequest,
    DeclineCode,
    Money,
    PaymentResult,
    PaymentStatus,
    RefundRequest,
)
from sdk import ConnectorRuntime, Credentials, RuntimeSettings, TranscriptRecorder
from sdk.testing import Cassette, FakeTokenRevealer, canary_pan
from tests.connectors.sandbox.conftest import (
    API_KEY,
    TENANT,
    RuntimeFactory,
    authorize_request,
    invoke,
)

CASSETTE = Path(__file__).resolve().parents[3] / "connectors/sandbox/cassettes/card_lifecycle.json"
DECLINE_CARD = "4000000000009995"


async def lifecycle(runtime: ConnectorRuntime, token: str, declined: str) -> list[PaymentResult]:
    auth = await invoke(runtime, "authorize", authorize_request(token, key="rec-auth"))
    ref = auth.provider_reference

    def capture(amount: int, key: str) -> CaptureRequest:
        return CaptureRequest(
            payment_id="pay_1",
            provider_reference=ref,
            amount=Money(amount, "EUR"),
            final=False,
            idempotency_key=key,
        )

    first = await invoke(runtime, "capture", capture(400, "rec-cap-1"))
    rest = await invoke(runtime, "capture", capture(650, "rec-cap-2"))
    refunded = await invoke(
        runtime,
        "refund",
        RefundRequest(
            payment_id="pay_1",
            provider_reference=ref,
            amount=Money(50, "EUR"),
            idempotency_key="rec-ref-1",
        ),
    )
    decline = await invoke(runtime, "authorize", authorize_request(declined, key="rec-decl"))
    return [auth, first, rest, refunded, decline]


def check(results: list[PaymentResult]) -> None:
    assert [r.status for r in results] == [
        PaymentStatus.AUTHORIZED,
        PaymentStatus.PARTIALLY_CAPTURED,
        PaymentStatus.CAPTURED,
        PaymentStatus.PARTIALLY_REFUNDED,
        PaymentStatus.DECLINED,
    ]
    assert results[3].amount_refunded == Money(50, "EUR")
    decline = results[4].decline
    assert decline is not None and decline.code is DeclineCode.INSUFFICIENT_FUNDS


async def replay(cassette: Cassette) -> list[PaymentResult]:
    recorded = httpx.URL(cassette.interactions[0].url)
    revealer = FakeTokenRevealer()  # any card: nothing is compared but method and URL
    async with ConnectorRuntime(
        SandboxConnector(),
        settings=RuntimeSettings(
            base_url=f"{recorded.scheme}://{recorded.host}:{recorded.port}", test_mode=True
        ),
        revealer=revealer,
        credentials=Credentials({"api_key": API_KEY}),
        transport=cassette.transport(),
    ) as runtime:
        return await lifecycle(
            runtime, revealer.add(TENANT, canary_pan()), revealer.add(TENANT, DECLINE_CARD)
        )


async def test_record_then_replay(
    make_runtime: RuntimeFactory,
    revealer: FakeTokenRevealer,
    transcript: TranscriptRecorder,
    tmp_path: Path,
) -> None:
    pan = canary_pan()
    results = await lifecycle(
        make_runtime(), revealer.add(TENANT, pan, cvc="321"), revealer.add(TENANT, DECLINE_CARD)
    )
    check(results)
    path = CASSETTE if os.environ.get("TESSERA_RECORD_CASSETTES") == "1" else tmp_path / "c.json"
    Cassette.from_transcript(transcript).save(path)
    text = path.read_text()
    assert pan not in text and API_KEY not in text and '"cvc":"321"' not in text
    check(await replay(Cassette.load(path)))


async def test_committed_cassette_replays() -> None:
    check(await replay(Cassette.load(CASSETTE)))
