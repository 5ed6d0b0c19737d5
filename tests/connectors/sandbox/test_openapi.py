"""The sandbox's OpenAPI description (served for the conformance kit's contract validation) is a
valid OpenAPI 3.1 document, every exchange of a full run conforms to it, and it refuses a request
the simulator would refuse."""

from __future__ import annotations

import json

import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from connectors.sandbox.connector import SANDBOX_BASE_URL
from connectors.sandbox.openapi import openapi_document
from normalization import (
    CaptureRequest,
    CardMethod,
    Money,
    RefundRequest,
    SyncRequest,
    VerifyRequest,
    VoidRequest,
)
from sdk import ConnectorRuntime, TranscriptRecorder
from tests.connectors.sandbox.conftest import CardFactory, Sandbox, authorize_request, invoke

SPEC = OpenAPI.from_dict(openapi_document())


def mock_request(method: str, url: str, body: str) -> MockRequest:
    path, _, query = url.split("://", 1)[1].partition("/")[2].partition("?")
    args = dict(part.split("=", 1) for part in query.split("&")) if query else None
    return MockRequest(
        SANDBOX_BASE_URL,
        method.lower(),
        "/" + path,
        args=args,
        headers={"Authorization": "Bearer sk_x", "Content-Type": "application/json"},
        data=body.encode() if body else None,
    )


async def test_every_exchange_of_a_full_run_conforms(
    runtime: ConnectorRuntime, card: CardFactory, transcript: TranscriptRecorder, sandbox: Sandbox
) -> None:
    auth = await invoke(runtime, "authorize", authorize_request(card(), key="o-1"))
    ref = auth.provider_reference
    await invoke(runtime, "authorize", authorize_request(card("4000000000009995"), key="o-2"))
    await invoke(
        runtime,
        "capture",
        CaptureRequest(payment_id="p", provider_reference=ref, amount=Money(500, "EUR")),
    )
    for amount in (100, 10_000):  # the second is refused (over captured)
        await invoke(
            runtime,
            "refund",
            RefundRequest(payment_id="p", provider_reference=ref, amount=Money(amount, "EUR")),
        )
    await invoke(runtime, "sync", SyncRequest(payment_id="p", reference="order-42"))
    other = await invoke(runtime, "authorize", authorize_request(card(), key="o-3"))
    await invoke(
        runtime, "void", VoidRequest(payment_id="p", provider_reference=other.provider_reference)
    )
    await invoke(
        runtime, "verify", VerifyRequest(payment_method=CardMethod(token=card()), currency="JPY")
    )
    assert len(transcript.exchanges) == 9
    for exchange in transcript.exchanges:
        request = mock_request(exchange.method, exchange.url, exchange.request_body)
        SPEC.validate_request(request)
        assert exchange.status_code is not None
        SPEC.validate_response(
            request, MockResponse(exchange.response_body.encode(), exchange.status_code)
        )
    assert await sandbox.admin("GET", "/__sandbox/openapi.json") == json.loads(
        json.dumps(openapi_document())
    )


def test_the_spec_refuses_what_the_simulator_refuses() -> None:
    body = {"amount": 100, "currency": "EUR", "final": True, "surprise": 1}
    request = mock_request("POST", "http://h/v1/authorizations/a/captures", json.dumps(body))
    with pytest.raises(Exception, match="body validation error"):
        SPEC.validate_request(request)
    as_float = {"amount": 10.5, "currency": "EUR", "final": True}
    request = mock_request("POST", "http://h/v1/authorizations/a/captures", json.dumps(as_float))
    with pytest.raises(Exception, match="body validation error"):
        SPEC.validate_request(request)
