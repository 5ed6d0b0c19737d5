"""``tessera dev --connector ID``: a connector author's own connector behind the dev gateway.

The end-to-end test generates a card-acquirer project, installs it (``pip --target``, found on
``PYTHONPATH`` as an installed distribution) and runs ``tessera dev --connector acme``: payments go
to acme's own simulator through the real path, the sandbox stays reachable by name. The others
check the refusals (exit 2 before anything starts) and the banner for each kind of connector."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.devmode import DevConnector, _banner
from normalization.methods import PaymentMethodType
from sdk.credentials import credentials_from_environment, environment_variable
from sdk.generator import generate_connector
from tests.sdk.demo_connector import DemoConnector
from vault.devserver import free_port

from .procs import Api, Processes, _tessera_cli, payment_body, wait_http
from .test_cli import _tessera
from .test_cli_broken_plugins import _installed


def _pythonpath(*paths: Path) -> str:
    parts = [*(str(p) for p in paths), str(Path.cwd()), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


@pytest.fixture
def demo_site(tmp_path: Path) -> Path:
    """An installed distribution whose connector ``demo`` has no simulator."""
    return _installed(
        tmp_path / "site", "tessera-demo", "demo = tests.sdk.demo_connector:DemoConnector"
    )


def test_an_unknown_connector_is_refused_naming_the_installed_ones(tmp_path: Path) -> None:
    done = _tessera("dev", "--connector", "nope", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2, done.stderr
    assert "No connector 'nope' is installed (installed:" in done.stderr
    assert "sandbox" in done.stderr and "Starting OpenBao" not in done.stderr
    assert not (tmp_path / "d").exists()


def test_a_connector_without_a_simulator_needs_a_url(tmp_path: Path, demo_site: Path) -> None:
    env = {"PYTHONPATH": _pythonpath(demo_site)}
    done = _tessera("dev", "--connector", "demo", "--data-dir", str(tmp_path / "d"), env=env)
    assert done.returncode == 2, done.stderr
    assert "has no simulator" in done.stderr and "--connector-url" in done.stderr
    assert "TESSERA_DEMO_<FIELD>" in done.stderr


def test_a_sandbox_url_needs_the_credentials_in_the_environment(
    tmp_path: Path, demo_site: Path
) -> None:
    env = {"PYTHONPATH": _pythonpath(demo_site), "TESSERA_DEMO_API_KEY": ""}
    argv = ["dev", "--connector", "demo", "--data-dir", str(tmp_path / "d")]
    done = _tessera(*argv, "--connector-url", "https://sandbox.demo.example", env=env)
    assert done.returncode == 2, done.stderr
    assert "set TESSERA_DEMO_API_KEY" in done.stderr
    bad = _tessera(*argv, "--connector-url", "ftp://sandbox.demo.example", env=env)
    assert bad.returncode == 2 and "must be an http(s) URL" in bad.stderr
    alone = _tessera("dev", "--connector-url", "https://sandbox.demo.example", env=env)
    assert alone.returncode == 2 and "--connector-url needs --connector ID" in alone.stderr


def test_credentials_are_read_from_one_variable_per_field() -> None:
    manifest = DemoConnector.manifest
    assert environment_variable("demo", "api_key") == "TESSERA_DEMO_API_KEY"
    assert credentials_from_environment(manifest, {"TESSERA_DEMO_API_KEY": "sk_1"}) == {
        "api_key": "sk_1"
    }
    assert credentials_from_environment(manifest, {"TESSERA_DEMO_API_KEY": ""}) == {}
    planned = DevConnector(manifest, {"api_key": "sk_live_do_not_print"}, url="https://x.test")
    assert "sk_live_do_not_print" not in repr(planned)


def _manifest(method: PaymentMethodType, currencies: set[str]) -> Any:
    return DemoConnector.manifest.model_copy(
        update={"payment_methods": frozenset({method}), "currencies": frozenset(currencies)}
    )


@pytest.mark.parametrize(
    ("method", "currencies", "expected", "tokenizes"),
    [
        (
            PaymentMethodType.CARD,
            {"JPY"},
            '"currency": "JPY"}, "payment_method": {"type": "card"',
            1,
        ),
        (PaymentMethodType.BANK_ACCOUNT, {"USD"}, '"routing_number": "011000015"', 0),
        (PaymentMethodType.BANK_ACCOUNT, {"EUR", "USD"}, '"iban": "DE89370400440532013000"', 0),
        (
            PaymentMethodType.OPEN_BANKING,
            {"EUR", "GBP"},
            '"GBP"}, "payment_method": {"type": "open_banking", "scheme": "uk_open_banking"',
            0,
        ),
    ],
)
def test_the_banner_shows_a_payment_the_connector_can_carry(
    method: PaymentMethodType, currencies: set[str], expected: str, tokenizes: int
) -> None:
    plan = DevConnector(_manifest(method, currencies), {}, url="https://sandbox.demo.example")
    text = _banner("http://gw", "tsk_x", "http://bao", Path("d/dev.json"), plan, plan.url or "")
    assert "payments: to connector 'demo' (https://sandbox.demo.example)" in text
    assert expected in text
    assert text.count("/v1/tokens") == tokenizes
    assert text.count("/capture") == tokenizes


@pytest.mark.slow
async def test_dev_routes_payments_to_an_installed_connector_and_its_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = generate_connector("acme", "card-acquirer", tmp_path).parent
    site = tmp_path / "site"
    installed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), project],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    assert "would be ignored" not in installed.stderr, installed.stderr  # the generated packaging
    monkeypatch.setenv("PYTHONPATH", _pythonpath(site))
    port, data_dir = free_port(), tmp_path / "dev"
    argv = [*_tessera_cli(), "dev", "--connector", "acme", "--port", str(port)]
    async with Processes(tmp_path) as procs, aiohttp.ClientSession() as http:
        dev = procs.spawn("dev", [*argv, "--data-dir", str(data_dir)])
        dev.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not (data_dir / "dev.json").exists():
            assert dev.alive and time.monotonic() < deadline, dev.output()
            await asyncio.sleep(0.1)
        await wait_http(dev, "/readyz")
        info = json.loads((data_dir / "dev.json").read_text())
        assert info["connector"] == "acme"
        assert info["connector_url"].startswith("http://127.0.0.1:")
        assert info["connector_url"] != info["sandbox_url"]
        assert f"payments: to connector 'acme' (its simulator at {info['connector_url']})" in (
            dev.output()
        )
        api = Api(http, dev, info["api_key"])
        token = await api.tokenize()
        paid = await api.post("/v1/payments", payment_body(token, 1050, "order-1"), key="k1")
        assert paid.status == 201, paid.body
        assert (paid.body["connector"], paid.body["status"]) == ("acme", "authorized")
        assert paid.body["provider_reference"]
        captured = await api.post(f"/v1/payments/{paid.body['id']}/capture", key="k2")
        assert captured.status == 200, captured.body
        assert captured.body["status"] == "captured"
        # A card the acme simulator declines by amount (its sandbox profile's magic value).
        declined = await api.post(
            "/v1/payments", payment_body(await api.tokenize(), 5100, "order-2"), key="k3"
        )
        assert declined.body["status"] == "declined", declined.body
        assert declined.body["decline"]["code"] == "insufficient_funds"
        # The sandbox is still there for a payment that names it.
        by_name = {**payment_body(await api.tokenize(), 700, "order-3"), "connector": "sandbox"}
        sandboxed = await api.post("/v1/payments", by_name, key="k4")
        assert (sandboxed.body["connector"], sandboxed.body["status"]) == ("sandbox", "authorized")
        dev.signal(signal.SIGTERM)
        assert await dev.wait(30) == 0, dev.output()
        assert not (data_dir / "dev.json").exists()


def test_a_sandbox_url_with_an_unusable_client_certificate_is_refused_before_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``tessera dev`` does not run ``serve``'s preflight: a mutual-TLS connector's certificate
    that cannot be used showed only at the first payment. It is refused with the others."""
    from gateway.devmode import DevConnectorError, plan_connector
    from sdk import register_connector, unregister_connector
    from tests.sdk.test_client_tls import MutualTlsDemo

    monkeypatch.setenv("TESSERA_DEMO_MTLS_API_KEY", "sk_test_1")
    monkeypatch.setenv("TESSERA_DEMO_MTLS_TLS_CLIENT_CERTIFICATE", "MIIB-not-a-certificate")
    monkeypatch.setenv("TESSERA_DEMO_MTLS_TLS_CLIENT_KEY", "MIIE-not-a-key")
    register_connector(MutualTlsDemo)
    try:
        with pytest.raises(DevConnectorError) as refused:
            plan_connector("demo_mtls", "https://sandbox.demo-acquirer.example")
    finally:
        unregister_connector("demo_mtls")
    assert "tls_client_certificate is not a PEM certificate" in str(refused.value)
    assert "MIIB" not in str(refused.value)
