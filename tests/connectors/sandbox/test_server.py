"""The simulator on its own: authentication, request validation that never echoes card data,
admin endpoints, the documented magic values, the standalone command, and registration through
the entry points."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from connectors.sandbox import SandboxConnector
from connectors.sandbox.simulator import MAGIC_AMOUNTS, MAGIC_CARDS
from normalization import DeclineCode, Outcome, SyncRequest
from sdk import ConnectorRuntime, Credentials, Operation, RuntimeSettings, load_connectors
from sdk.testing import FakeTokenRevealer
from tests.connectors.sandbox.conftest import (
    API_KEY,
    CardFactory,
    Sandbox,
    authorize_request,
    invoke,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "sandbox.md"
VALID = {"number": "4242424242424242", "exp_month": "03", "exp_year": "2031", "cvc": "123"}


async def post(sandbox: Sandbox, path: str, body: object, key: str = API_KEY) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sandbox.url) as client:
        return await client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


async def test_wrong_api_key_is_refused(sandbox: Sandbox, card: CardFactory) -> None:
    answer = await post(sandbox, "/v1/authorizations", {}, key="sk_wrong_one")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
    async with ConnectorRuntime(
        SandboxConnector(),
        settings=RuntimeSettings(base_url=sandbox.url, test_mode=True),
        revealer=FakeTokenRevealer(),
        credentials=Credentials({"api_key": "sk_wrong_one"}),
    ) as runtime:
        sync = SyncRequest(payment_id="p", provider_reference="auth_x")
        result = await invoke(runtime, "sync", sync)
    # The gateway's credentials, not the payer's card: nothing done, no decline, and a failure
    # for the breaker (it was read as a decline: the merchant told the card was refused).
    assert result.outcome is Outcome.NOT_SENT and result.decline is None
    assert result.raw_status == "http_401"
    assert runtime.breaker.fail_counter == 1
    assert await sandbox.charges() == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"amount": 100, "currency": "EUR", "card": {**VALID, "number": "4242424242424241"}},
            402,
            "invalid_card_number",
        ),
        (
            {"amount": 100, "currency": "EUR", "card": {**VALID, "exp_year": "2020"}},
            402,
            "expired_card",
        ),
        ({"amount": 100, "currency": "EUR", "card": {**VALID, "cvc": "12"}}, 402, "incorrect_cvc"),
        ({"amount": 0, "currency": "EUR", "card": VALID}, 400, "invalid_amount"),
        ({"amount": 100, "currency": "NOK", "card": VALID}, 400, "currency_not_supported"),
        ({"amount": 10.5, "currency": "EUR", "card": VALID}, 400, "invalid_request"),
        (
            {"amount": 100, "currency": "EUR", "card": VALID, "pan": "4242424242424242"},
            400,
            "invalid_request",
        ),
    ],
)
async def test_validation_never_echoes_the_card(
    sandbox: Sandbox, body: dict[str, object], status: int, code: str
) -> None:
    answer = await post(sandbox, "/v1/authorizations", body)
    assert answer.status_code == status
    payload = answer.json()
    found = payload["decline"]["code"] if status == 402 else payload["error"]["code"]
    assert found == code
    assert "424242424242424" not in answer.text


async def test_malformed_json_is_refused(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(base_url=sandbox.url) as client:
        answer = await client.post(
            "/v1/authorizations",
            content=b"{not json",
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request"


async def test_admin_endpoints(
    sandbox: Sandbox, runtime: ConnectorRuntime, card: CardFactory
) -> None:
    assert await sandbox.admin("GET", "/__sandbox/health") == {"status": "ok"}
    magic = await sandbox.admin("GET", "/__sandbox/magic")
    assert len(magic["cards"]) == len(MAGIC_CARDS) and len(magic["amounts"]) == len(MAGIC_AMOUNTS)
    await invoke(runtime, "authorize", authorize_request(card(), key="adm-1"))
    charges = await sandbox.admin("GET", "/__sandbox/charges")
    assert charges["idempotency_keys"] == {"adm-1": 1}
    [logged] = (await sandbox.admin("GET", "/__sandbox/requests"))["requests"]
    assert logged["idempotency_key"] == "adm-1" and logged["status"] == 201
    assert await sandbox.admin("POST", "/__sandbox/reset") == {"status": "reset"}
    assert await sandbox.charges() == []


def test_docs_list_every_magic_value() -> None:
    text = DOCS.read_text()
    documented_cards = set(re.findall(r"^\| `(\d{16})` \|", text, re.MULTILINE))
    documented_amounts = set(re.findall(r"^\| `(\d{5})` \|", text, re.MULTILINE))
    assert documented_cards == {card.number for card in MAGIC_CARDS}
    assert documented_amounts == {str(magic.amount) for magic in MAGIC_AMOUNTS}
    for magic_card in MAGIC_CARDS:
        if magic_card.code:
            assert f"`{magic_card.code}`" in text
    module_doc = sys.modules["connectors.sandbox.server"].__doc__ or ""
    for magic_card in MAGIC_CARDS:
        assert magic_card.number in module_doc
    for magic_amount in MAGIC_AMOUNTS:
        assert str(magic_amount.amount) in module_doc


def test_registered_through_both_entry_points() -> None:
    assert load_connectors()["sandbox"] is SandboxConnector
    [simulator] = [e for e in entry_points(group="tessera.simulators") if e.name == "sandbox"]
    assert simulator.load().__name__ == "create_app"
    manifest = SandboxConnector.manifest
    assert Operation.AUTHORIZE in manifest.retry_safe
    assert manifest.idempotency is not None and manifest.idempotency.header == "Idempotency-Key"
    assert {"JPY", "KWD", "CLF"} <= manifest.currencies
    assert DeclineCode.INSUFFICIENT_FUNDS is SandboxConnector.error_map["insufficient_funds"].code


async def test_runs_standalone() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connectors.sandbox.server",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient() as client:
            # A cold interpreter importing aiohttp and pydantic can take seconds on a loaded
            # machine: wait up to 30 s, and stop at once if the process died.
            give_up = time.monotonic() + 30.0
            while True:
                try:
                    answer = await client.get(f"http://127.0.0.1:{port}/__sandbox/health")
                    break
                except httpx.TransportError:
                    if process.returncode is not None or time.monotonic() > give_up:
                        pytest.fail("the standalone sandbox did not start")
                    await asyncio.sleep(0.05)
        assert answer.json() == {"status": "ok"}
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            await process.wait()
