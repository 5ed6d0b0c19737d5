"""``[tokenization] encryption``: what each mode stores, and that a payment reveals the card
whichever mode wrote it (one database, gateways configured either way), through the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import Gateway, MakeGateway, sandbox_connector

CARD = {"exp_month": 12, "exp_year": 2031, "cvc": "123"}
PREFIX = {"envelope": "env:vault:v1:", "transit": "vault:v1:"}


async def _token(gw: Gateway, number: str) -> str:
    resp = await gw.client.post(
        "/v1/tokens", json={"card": {**CARD, "number": number}}, headers=gw.auth
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def _pay(gw: Gateway, token: str) -> dict[str, Any]:
    body = {
        "amount": {"value": 1050, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token},
    }
    resp = await gw.client.post("/v1/payments", json=body, headers=gw.auth)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


def test_the_default_is_envelope() -> None:
    from gateway.config import TokenizationSettings

    assert TokenizationSettings().encryption == "envelope"


@pytest.mark.parametrize(("writer", "reader"), [("envelope", "transit"), ("transit", "envelope")])
async def test_cards_written_in_one_mode_are_paid_in_the_other(
    make_gateway: MakeGateway, sandbox: Any, tmp_path: Path, writer: str, reader: str
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    connectors = {"sandbox": sandbox_connector(sandbox)}
    first = await make_gateway(
        database_url=url, connectors=connectors, tokenization={"encryption": writer}
    )
    approve = await _token(first, "4242424242424242")
    decline = await _token(first, "4000000000009995")  # the sandbox declines this exact PAN
    stored = await first.resources.token_store.get(first.merchant.id, approve)
    assert stored is not None and stored.ciphertext.startswith(PREFIX[writer])
    assert "4242424242424242" not in stored.ciphertext

    # Another gateway on the same database, configured the other way, with the first one's
    # merchant: it reveals the cards to the provider as they were tokenized.
    second = await make_gateway(
        database_url=url, connectors=connectors, tokenization={"encryption": reader}
    )
    second.api_key, second.merchant = first.api_key, first.merchant
    assert (await _pay(second, approve))["status"] == "authorized"
    declined = await _pay(second, decline)
    assert declined["status"] == "declined"
    assert declined["decline"]["code"] == "insufficient_funds"
    fresh = await _token(second, "4242424242424242")
    stored = await second.resources.token_store.get(first.merchant.id, fresh)
    assert stored is not None and stored.ciphertext.startswith(PREFIX[reader])
