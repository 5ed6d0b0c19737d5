"""Transcript scrubbing (RELIABILITY 30, Active Merchant's rule: every connector has one): the
sandbox receives the real card, while the recorded exchange, the logs and everything the
simulator keeps hold only masks, and no API key."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote_plus

import structlog

from normalization import (
    CaptureRequest,
    Money,
    PaymentStatus,
    RefundRequest,
    SyncRequest,
    VoidRequest,
    mask_pan,
)
from sdk import ConnectorRuntime, TranscriptRecorder
from sdk.testing import FakeTokenRevealer, canary_cvc, canary_pan
from tests.connectors.sandbox.conftest import (
    API_KEY,
    TENANT,
    Sandbox,
    authorize_request,
    invoke,
)


def encodings(secret: str) -> list[str]:
    spaced = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return [
        secret,
        spaced,
        spaced.replace(" ", "-"),
        base64.b64encode(secret.encode()).decode(),
        secret.encode().hex(),
        quote_plus(spaced),
    ]


async def test_full_exchange_transcript_holds_no_card_data_or_key(
    runtime: ConnectorRuntime,
    revealer: FakeTokenRevealer,
    transcript: TranscriptRecorder,
    sandbox: Sandbox,
) -> None:
    pan, cvc = canary_pan(), canary_cvc()
    token = revealer.add(TENANT, pan, cvc=cvc, exp_month=3, exp_year=2031, holder_name="Ada L")
    with structlog.testing.capture_logs() as logs:
        auth = await invoke(runtime, "authorize", authorize_request(token, key="scrub-1"))
        ref = auth.provider_reference
        await invoke(
            runtime,
            "capture",
            CaptureRequest(payment_id="p", provider_reference=ref, amount=Money(1050, "EUR")),
        )
        await invoke(
            runtime,
            "refund",
            RefundRequest(payment_id="p", provider_reference=ref, amount=Money(50, "EUR")),
        )
        await invoke(runtime, "sync", SyncRequest(payment_id="p", provider_reference=ref))
        other = await invoke(runtime, "authorize", authorize_request(token, key="scrub-2"))
        await invoke(
            runtime,
            "void",
            VoidRequest(payment_id="p", provider_reference=other.provider_reference),
        )
    assert auth.status is PaymentStatus.AUTHORIZED

    # The sandbox saw the real card: egress detokenization substituted it into the bytes.
    first = json.loads(sandbox.bodies[0][2])
    assert first["card"]["number"] == pan and first["card"]["cvc"] == cvc

    # The transcript saw masks only.
    recorded = transcript.text()
    assert len(transcript.exchanges) == 6
    for form in [*encodings(pan), API_KEY]:
        assert form not in recorded
    sent = json.loads(transcript.exchanges[0].request_body)
    assert sent["card"]["number"] == mask_pan(pan)
    assert sent["card"]["cvc"] == "***"
    assert all(
        dict(e.request_headers)["Authorization"] == "[REDACTED]" for e in transcript.exchanges
    )

    # Neither the SDK's logs nor the simulator's (same process) hold the card or the key.
    logged = repr(logs)
    for form in [*encodings(pan), API_KEY, f'"cvc": "{cvc}"']:
        assert form not in logged
    assert mask_pan(pan) in logged  # the simulator logs the masked card it received

    # Nor does anything the simulator keeps or serves.
    kept = json.dumps(
        [
            await sandbox.admin("GET", "/__sandbox/charges"),
            await sandbox.admin("GET", "/__sandbox/requests"),
            await sandbox.admin("GET", "/__sandbox/events"),
        ]
    )
    for form in encodings(pan):
        assert form not in kept
    assert mask_pan(pan) in kept
