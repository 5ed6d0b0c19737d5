"""OpenTelemetry spans: one per request, one per connector call, no card data in attributes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gateway.tracing

from .conftest import MakeGateway, sandbox_connector


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(gateway.tracing, "_TRACER", provider.get_tracer("test"))
    return exporter


async def test_requests_and_connector_calls_are_traced(
    exporter: InMemorySpanExporter, make_gateway: MakeGateway, sandbox: Any
) -> None:
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}
    resp = await gw.client.post("/v1/tokens", json={"card": card}, headers=gw.auth)
    token = (await resp.json())["id"]
    body = {
        "amount": {"value": 100, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token},
    }
    resp = await gw.client.post("/v1/payments", json=body, headers=gw.auth)
    assert resp.status == 201
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert "POST /v1/payments" in spans and "POST /v1/tokens" in spans
    call = spans["connector authorize"]
    assert call.attributes is not None and call.attributes["outcome"] == "succeeded"
    assert (
        call.parent is not None
        and call.parent.span_id == spans["POST /v1/payments"].context.span_id
    )
    assert spans["POST /v1/payments"].attributes["http.response.status_code"] == 201  # type: ignore[index]
    dumped = json.dumps([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert card["number"] not in dumped
    assert trace.get_tracer_provider() is not None


def _exported(exporter: InMemorySpanExporter) -> str:
    """Everything the spans would export: names, attributes, status and events."""
    return json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "status": [s.status.status_code.name, s.status.description],
                "events": [[e.name, dict(e.attributes or {})] for e in s.events],
            }
            for s in exporter.get_finished_spans()
        ]
    )


def test_a_failing_span_records_the_error_without_card_data(
    exporter: InMemorySpanExporter,
) -> None:
    pan = "4000056655665556"
    with pytest.raises(ValueError), gateway.tracing.span("connector authorize"):
        raise ValueError(f"invalid literal for int() with base 10: '{pan}x'")
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code is trace.StatusCode.ERROR
    assert finished.status.description == "ValueError"
    (event,) = finished.events
    assert event.name == "exception"
    assert event.attributes is not None and event.attributes["exception.type"] == "ValueError"
    assert "400005" in str(event.attributes["exception.message"])  # the mask: BIN and last 4
    exported = _exported(exporter)
    assert pan not in exported and "Traceback" not in exported


async def test_a_client_chosen_method_never_names_a_span(
    exporter: InMemorySpanExporter, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway()
    resp = await gw.client.request("PURGE", "/v1/tokens", headers=gw.auth)
    assert resp.status == 405
    (finished,) = exporter.get_finished_spans()
    assert finished.name.startswith("other ")
    assert "PURGE" not in _exported(exporter)
