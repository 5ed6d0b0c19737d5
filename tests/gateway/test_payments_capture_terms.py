"""Capture's ``final`` flag, and what the connector's manifest says it takes (``capture`` and
``refund``: partial amounts, more than one per payment), through the real gateway, OpenBao and
the sandbox simulator.

- ``final: true`` releases the rest of the authorization: the provider is told, the payment is
  ``captured`` with what it captured, and a further capture is refused.
- A connector that takes one capture per payment (Stripe's model) releases the rest with the
  first: Tessera sends ``final`` and counts the payment ``captured``, instead of waiting,
  ``partially_captured``, for a second capture the provider would refuse.
- A partial capture, a partial refund or a second refund the connector does not take is refused
  (422, a stable code) before anything is written or sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import AsyncTesseraClient
from sdk import MultiSupport

from .conftest import Gateway, MakeGateway, Observed, sandbox_connector

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


@pytest.fixture
def limited() -> Iterator[None]:
    """Copies of the sandbox connector whose manifests take less: ``single`` (one capture and
    one refund per payment), ``whole`` (no partial capture or refund)."""
    from sdk import register_connector, unregister_connector
    from sdk.registry import load_connectors

    base = load_connectors()["sandbox"]
    terms = {
        "single": MultiSupport(partial=True, multiple=False),
        "whole": MultiSupport(partial=False, multiple=False),
    }
    for connector_id, support in terms.items():
        manifest = base.manifest.model_copy(
            update={"id": connector_id, "capture": support, "refund": support}
        )
        register_connector(type(f"Sandbox_{connector_id}", (base,), {"manifest": manifest}))
    try:
        yield
    finally:
        for connector_id in terms:
            unregister_connector(connector_id)


async def _gateway(make_gateway: MakeGateway, observed_sandbox: Any) -> Gateway:
    connectors = {
        connector_id: sandbox_connector(observed_sandbox)
        for connector_id in ("sandbox", "single", "whole")
    }
    return await make_gateway(connectors=connectors)


async def _authorized(gw: Gateway, connector: str, value: int = 1000) -> str:
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["id"]
    body = {
        "amount": {"value": value, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token},
        "connector": connector,
    }
    resp = await gw.client.post("/v1/payments", json=body, headers=gw.auth)
    data = await resp.json()
    assert resp.status == 201 and data["status"] == "authorized", data
    return str(data["id"])


async def _post(gw: Gateway, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    resp = await gw.client.post(path, json=body or {}, headers=gw.auth)
    return resp.status, await resp.json()


def _eur(value: int) -> dict[str, Any]:
    return {"value": value, "currency": "EUR"}


async def _attempts(gw: Gateway, payment_id: str, operation: str) -> int:
    attempts = await gw.resources.payment_store.attempts(payment_id)
    return sum(1 for a in attempts if a.operation == operation)


@pytest.mark.usefixtures("limited")
async def test_a_final_capture_releases_the_rest(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    gw = await _gateway(make_gateway, observed_sandbox)
    payment_id = await _authorized(gw, "sandbox")

    status, data = await _post(
        gw, f"/v1/payments/{payment_id}/capture", {"amount": _eur(400), "final": True}
    )
    assert status == 200, data
    assert data["status"] == "captured" and data["captured"] == _eur(400)
    assert observed.captures() == [{"amount": 400, "currency": "EUR", "final": True}]

    # The rest was released: nothing more to capture, 400 to refund.
    status, data = await _post(gw, f"/v1/payments/{payment_id}/capture", {"amount": _eur(100)})
    assert status == 409 and data["code"] == "invalid_state_transition", data
    status, data = await _post(gw, f"/v1/payments/{payment_id}/refunds")
    assert status == 201 and data["refunded"] == _eur(400), data


@pytest.mark.usefixtures("limited")
async def test_a_capture_is_not_final_unless_asked(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    gw = await _gateway(make_gateway, observed_sandbox)
    payment_id = await _authorized(gw, "sandbox")
    status, data = await _post(gw, f"/v1/payments/{payment_id}/capture", {"amount": _eur(400)})
    assert status == 200 and data["status"] == "partially_captured", data
    status, data = await _post(gw, f"/v1/payments/{payment_id}/capture", {"final": False})
    assert status == 200 and data["status"] == "captured", data
    assert data["captured"] == _eur(1000)
    assert [c["final"] for c in observed.captures()] == [False, False]


@pytest.mark.usefixtures("limited")
async def test_final_must_be_a_boolean(make_gateway: MakeGateway, observed_sandbox: Any) -> None:
    gw = await _gateway(make_gateway, observed_sandbox)
    payment_id = await _authorized(gw, "sandbox")
    status, data = await _post(
        gw, f"/v1/payments/{payment_id}/capture", {"amount": _eur(400), "final": "yes"}
    )
    assert status == 422 and data["code"] == "invalid_request", data
    assert "final" in json.dumps(data["errors"])
    assert await _attempts(gw, payment_id, "capture") == 0


@pytest.mark.usefixtures("limited")
async def test_a_single_capture_connector_releases_the_rest_with_the_first(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    gw = await _gateway(make_gateway, observed_sandbox)
    payment_id = await _authorized(gw, "single")
    status, data = await _post(gw, f"/v1/payments/{payment_id}/capture", {"amount": _eur(400)})
    assert status == 200, data
    assert data["status"] == "captured" and data["captured"] == _eur(400)
    assert observed.captures() == [{"amount": 400, "currency": "EUR", "final": True}]


@pytest.mark.usefixtures("limited")
async def test_a_second_refund_is_refused_where_the_connector_takes_one(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    gw = await _gateway(make_gateway, observed_sandbox)
    payment_id = await _authorized(gw, "single")
    await _post(gw, f"/v1/payments/{payment_id}/capture")
    status, data = await _post(gw, f"/v1/payments/{payment_id}/refunds", {"amount": _eur(100)})
    assert status == 201 and data["refunded"] == _eur(100), data

    status, data = await _post(gw, f"/v1/payments/{payment_id}/refunds", {"amount": _eur(100)})
    assert status == 422 and data["code"] == "multiple_refunds_not_supported", data
    assert len(observed.refunds()) == 1
    assert len(await gw.resources.payment_store.refunds(payment_id)) == 1


@pytest.mark.usefixtures("limited")
async def test_partial_amounts_are_refused_where_the_connector_takes_whole_ones(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    gw = await _gateway(make_gateway, observed_sandbox)
    payment_id = await _authorized(gw, "whole")

    status, data = await _post(gw, f"/v1/payments/{payment_id}/capture", {"amount": _eur(400)})
    assert status == 422 and data["code"] == "partial_capture_not_supported", data
    assert "1000" in data["detail"]
    assert observed.captures() == [] and await _attempts(gw, payment_id, "capture") == 0

    # The whole amount, named or omitted, is a capture like any other.
    status, data = await _post(gw, f"/v1/payments/{payment_id}/capture", {"amount": _eur(1000)})
    assert status == 200 and data["status"] == "captured", data

    status, data = await _post(gw, f"/v1/payments/{payment_id}/refunds", {"amount": _eur(999)})
    assert status == 422 and data["code"] == "partial_refund_not_supported", data
    assert observed.refunds() == [] and await gw.resources.payment_store.refunds(payment_id) == []
    status, data = await _post(gw, f"/v1/payments/{payment_id}/refunds")
    assert status == 201 and data["status"] == "refunded", data


@pytest.mark.usefixtures("limited")
async def test_the_merchant_client_sends_final(
    make_gateway: MakeGateway, observed_sandbox: Any, observed: Observed
) -> None:
    gw = await _gateway(make_gateway, observed_sandbox)
    payment_id = await _authorized(gw, "sandbox")
    base = str(gw.client.make_url("")).rstrip("/")
    async with AsyncTesseraClient(base, gw.api_key) as client:
        payment = await client.capture(payment_id, 250, final=True)
    assert payment.status == "captured" and payment.captured == 250
    assert observed.captures()[-1]["final"] is True
