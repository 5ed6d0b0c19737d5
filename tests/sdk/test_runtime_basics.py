"""The happy path end to end, and the PAN placeholder reaching the provider as the PAN only."""

from __future__ import annotations

import dataclasses
import json

import structlog

from normalization import Outcome, PaymentStatus
from sdk import CallContext, ConnectorRuntime, Credentials, Deadline, RevealedCard, RuntimeSettings
from sdk.http import network_transport
from sdk.testing import FakeTokenRevealer, Fault, FaultInjector, canary_cvc, canary_pan
from tests.sdk.conftest import API_KEY, TENANT, RuntimeFactory, authorize_request, metric
from tests.sdk.demo_connector import DemoConnector
from tests.sdk.loopback import LoopbackProvider


async def test_authorize_reaches_provider_with_real_card_and_idempotency_key(
    provider: LoopbackProvider,
    make_runtime: RuntimeFactory,
    canary: tuple[str, str, str],
    transcript,
    metrics,
) -> None:
    token, pan, cvc = canary
    runtime = make_runtime(provider.url)
    with structlog.testing.capture_logs() as logs:
        result = await runtime.invoke(
            "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
        )
    assert result.outcome is Outcome.SUCCEEDED
    assert result.status is PaymentStatus.AUTHORIZED
    assert result.provider_reference == "pay_123"

    [sent] = provider.requests
    body = json.loads(sent.body)
    assert body["card"] == {"number": pan, "cvc": cvc, "exp_month": "03", "exp_year": "2031"}
    assert sent.headers["Idempotency-Key"] == "idem-1"
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"

    recorded = transcript.text()
    recorded_body = json.loads(json.loads(recorded)[0]["request_body"])
    assert pan not in recorded and recorded_body["card"]["cvc"] == "***"
    # Nowhere else either (a substring check on the whole body would also match the CVC's
    # digits inside the masked number, the amount or the expiry year).
    assert cvc not in json.dumps({**recorded_body, "card": {}, "amount": 0})
    assert API_KEY not in recorded
    assert f"{pan[:6]}******{pan[-4:]}" in recorded
    assert pan not in repr(logs) and API_KEY not in repr(logs)
    assert (
        metric(
            metrics,
            "tessera_connector_calls_total",
            connector="demo",
            operation="authorize",
            outcome="succeeded",
        )
        == 1
    )


class ConsumingRevealer(FakeTokenRevealer):
    """Like the vault: the CVC is handed out by the first reveal only."""

    async def reveal(self, tenant: str, token: str, *, purpose: str) -> RevealedCard:
        card = await super().reveal(tenant, token, purpose=purpose)
        if len(self.reveals) > 1:
            return dataclasses.replace(card, cvc=None)
        return card


async def test_retry_after_not_sent_reuses_the_call_s_reveal(
    provider: LoopbackProvider, metrics
) -> None:
    revealer = ConsumingRevealer()
    pan, cvc = canary_pan(), canary_cvc()
    token = revealer.add(TENANT, pan, cvc=cvc)
    injector = FaultInjector(network_transport(test_mode=True), [Fault.refused()])
    runtime = ConnectorRuntime(
        DemoConnector(),
        settings=RuntimeSettings(base_url=provider.url, test_mode=True),
        revealer=revealer,
        credentials=Credentials({"api_key": API_KEY}),
        metrics=metrics,
        transport=injector,
    )
    async with runtime:
        result = await runtime.invoke(
            "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
        )
    assert result.outcome is Outcome.SUCCEEDED
    assert json.loads(provider.requests[0].body)["card"]["cvc"] == cvc
    assert len(revealer.reveals) == 1  # one reveal (and one audit entry) per call


class OwnKeyConnector(DemoConnector):
    """Sends an idempotency key of its own making instead of the request's."""

    def _headers(self, ctx: CallContext) -> dict[str, str]:
        return {**super()._headers(ctx), "idempotency-key": "fresh-uuid-per-call"}


async def test_a_connector_replacing_the_idempotency_key_is_warned_about(
    provider: LoopbackProvider, make_runtime: RuntimeFactory, canary: tuple[str, str, str]
) -> None:
    runtime = make_runtime(provider.url)
    with structlog.testing.capture_logs() as logs:
        await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
        )
    assert not [e for e in logs if e["event"] == "connector_idempotency_key_replaced"]

    runtime = make_runtime(provider.url, connector=OwnKeyConnector())
    with structlog.testing.capture_logs() as logs:
        await runtime.invoke(
            "authorize", authorize_request(canary[0]), deadline=Deadline.after(5), tenant=TENANT
        )
    # Kept (a provider may want the key reshaped), and said.
    sent = {k.lower(): v for k, v in provider.requests[-1].headers.items()}
    assert sent["idempotency-key"] == "fresh-uuid-per-call"
    [warned] = [e for e in logs if e["event"] == "connector_idempotency_key_replaced"]
    assert warned["header"] == "Idempotency-Key" and warned["log_level"] == "warning"
