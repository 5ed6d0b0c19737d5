"""The merchant client's ``complete`` (3-D Secure, open-banking consent): what it sends."""

from __future__ import annotations

import json

import httpx
import respx

from gateway.client import AsyncTesseraClient, TesseraClient

API_KEY = "tsk_" + "t" * 40
BASE = "https://tessera.test"
PAYMENT = {"id": "pay_1", "status": "pending", "amount": {"value": 1999, "currency": "GBP"}}


@respx.mock(base_url=BASE, assert_all_called=False)
def test_complete_posts_the_callback_parameters_under_one_key(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post("/v1/payments/pay_1/complete").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=PAYMENT)]
    )
    with TesseraClient(BASE, API_KEY, sleep=lambda _: None) as client:
        payment = client.complete("pay_1", {"code": "abc", "consent_id": "cns_1"})
    assert payment.status == "pending" and route.call_count == 2
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert bodies == [{"parameters": {"code": "abc", "consent_id": "cns_1"}}] * 2
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert len(keys) == 1


@respx.mock(base_url=BASE, assert_all_called=False)
async def test_async_complete_without_parameters(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post("/v1/payments/pay_1/complete").mock(
        return_value=httpx.Response(200, json=PAYMENT)
    )
    async with AsyncTesseraClient(BASE, API_KEY) as client:
        payment = await client.complete("pay_1", idempotency_key="back-1")
    assert payment.id == "pay_1"
    assert json.loads(route.calls[0].request.content) == {"parameters": {}}
    assert route.calls[0].request.headers["Idempotency-Key"] == "back-1"
