"""Connector credentials from Vault KV (``credentials_from = "vault"``), against the real OpenBao.

The gateway reads ``tessera/connectors/<id>`` with its own Vault identity at start-up and again
every ``credentials_refresh_seconds``; ``tessera connector credentials set|show`` write and show
that secret with the admin token; ``tessera serve``'s preflight refuses to start a connector
without its credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hvac
import pytest
import structlog.testing
from aiohttp import web

from gateway.app import create_app
from gateway.config import ConfigError, ConnectorSettings, Settings, VaultSettings, load_settings
from gateway.connector_pool import credentials_path, read_credentials
from gateway.observability import GatewayMetrics
from gateway.server import StartupError, preflight
from normalization import ConnectorConfigurationError
from sdk import load_connectors
from vault.audit import AuditLog
from vault.client import VaultClient
from vault.database import open_database

from .conftest import SANDBOX_API_KEY, SANDBOX_WEBHOOK_SECRET, MakeGateway, sandbox_connector

PATH = credentials_path("sandbox")
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


def _kv(provisioned_vault: Any) -> Any:
    return hvac.Client(url=provisioned_vault.addr, token=provisioned_vault.root_token).secrets.kv.v2


def _put(provisioned_vault: Any, **values: str) -> None:
    _kv(provisioned_vault).create_or_update_secret(path=PATH, secret=values, mount_point="secret")


@pytest.fixture
def no_sandbox_secret(provisioned_vault: Any) -> Any:
    kv = _kv(provisioned_vault)
    kv.delete_metadata_and_all_versions(path=PATH, mount_point="secret")
    yield
    kv.delete_metadata_and_all_versions(path=PATH, mount_point="secret")


def _vault_sandbox(sandbox: Any, **extra: Any) -> dict[str, Any]:
    section = sandbox_connector(sandbox, credentials_from="vault", **extra)
    del section["credentials"]
    return section


async def _pay(gw: Any) -> dict[str, Any]:
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["id"]
    resp = await gw.client.post(
        "/v1/payments",
        json={
            "amount": {"value": 1050, "currency": "EUR"},
            "payment_method": {"type": "card", "token": token},
        },
        headers=gw.auth,
    )
    return dict(await resp.json())


# -- configuration ----------------------------------------------------------------------------


def _load(tmp_path: Path, body: str) -> Settings:
    path = tmp_path / "c.toml"
    path.write_text(body)
    return load_settings(path, env={})


def test_a_section_level_webhook_secret_is_used_for_verification(tmp_path: Path) -> None:
    # It used to be accepted and ignored: every webhook then failed verification.
    settings = _load(
        tmp_path,
        '[connectors.sandbox]\ncredentials = { api_key = "k" }\nwebhook_secret = "whsec_x"\n',
    )
    credentials = settings.connectors["sandbox"].credentials
    assert credentials["webhook_secret"].get_secret_value() == "whsec_x"
    assert credentials["api_key"].get_secret_value() == "k"


@pytest.mark.parametrize(
    "section",
    [
        'credentials = { webhook_secret = "a" }\nwebhook_secret = "b"',
        'credentials_from = "vault"\nwebhook_secret = "b"',
        'credentials_from = "vault"\ncredentials = { api_key = "k" }',
    ],
)
def test_credentials_have_one_source(tmp_path: Path, section: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"[connectors.sandbox]\n{section}\n")
    text = str(caught.value)
    assert "[connectors" in text and ("set it once" in text or "remove the credentials" in text)
    assert '"a"' not in text and '"b"' not in text and '"k"' not in text


# -- the gateway ------------------------------------------------------------------------------


async def test_the_gateway_pays_with_credentials_read_from_vault_and_picks_up_a_rotation(
    make_gateway: MakeGateway, sandbox: Any, provisioned_vault: Any, no_sandbox_secret: None
) -> None:
    _put(provisioned_vault, api_key="sk_stale", webhook_secret=SANDBOX_WEBHOOK_SECRET)
    gw = await make_gateway(
        connectors={"sandbox": _vault_sandbox(sandbox, credentials_refresh_seconds=1)},
        routing={"default": ["sandbox"]},
    )
    runtime = gw.resources.pool.runtime("sandbox")
    assert runtime.credentials.reveal("api_key") == "sk_stale"
    refused = await _pay(gw)
    assert refused.get("status") != "authorized", refused  # the sandbox refused the stale key

    _put(provisioned_vault, api_key=SANDBOX_API_KEY, webhook_secret=SANDBOX_WEBHOOK_SECRET)
    for _ in range(50):  # the refresh runs every second
        if runtime.credentials.reveal("api_key") == SANDBOX_API_KEY:
            break
        await asyncio.sleep(0.1)
    paid = await _pay(gw)
    assert paid["status"] == "authorized", paid


async def test_a_failed_refresh_keeps_the_credentials_in_use(
    make_gateway: MakeGateway, sandbox: Any, provisioned_vault: Any, no_sandbox_secret: None
) -> None:
    _put(provisioned_vault, api_key=SANDBOX_API_KEY)
    gw = await make_gateway(
        connectors={"sandbox": _vault_sandbox(sandbox)}, routing={"default": ["sandbox"]}
    )
    pool = gw.resources.pool
    _put(provisioned_vault, webhook_secret="whsec_only")  # a rotation written without api_key
    with pytest.raises(ConnectorConfigurationError, match="missing credentials: api_key"):
        await pool.load_credentials(gw.resources.vault, "sandbox")
    assert pool.runtime("sandbox").credentials.reveal("api_key") == SANDBOX_API_KEY
    assert (await _pay(gw))["status"] == "authorized"


async def test_the_gateway_does_not_start_without_its_connector_credentials(
    sandbox: Any, provisioned_vault: Any, tmp_path: Path, no_sandbox_secret: None
) -> None:
    settings = Settings(
        database={"url": f"sqlite:///{tmp_path / 'gw.db'}"},  # type: ignore[arg-type]
        vault=VaultSettings(addr=provisioned_vault.addr, token=provisioned_vault.root_token),  # type: ignore[arg-type]
        connectors={"sandbox": _vault_sandbox(sandbox)},  # type: ignore[dict-item]
    )
    runner = web.AppRunner(create_app(settings, metrics=GatewayMetrics()))
    try:
        with pytest.raises(ConnectorConfigurationError) as caught:
            await runner.setup()
    finally:
        await runner.cleanup()
    assert PATH in str(caught.value) and "credentials set sandbox" in str(caught.value)


async def test_the_gateway_role_reads_connector_credentials_and_cannot_write_them(
    provisioned_vault: Any, no_sandbox_secret: None
) -> None:
    _put(provisioned_vault, api_key="sk_role")
    manifest = load_connectors()["sandbox"].manifest
    async with VaultClient(
        provisioned_vault.addr, approle=provisioned_vault.result.gateway_credentials()
    ) as client:
        credentials = await read_credentials(client, "sandbox", manifest)
        assert credentials.reveal("api_key") == "sk_role"
        with pytest.raises(Exception, match=r"(?i)denied|permission"):
            await client.kv_write(PATH, {"api_key": "sk_mine"})


async def test_preflight_names_the_connector_whose_credentials_are_missing(
    provisioned_vault: Any, tmp_path: Path, no_sandbox_secret: None
) -> None:
    def settings(section: ConnectorSettings) -> Settings:
        return Settings(
            database={"url": f"sqlite:///{tmp_path / 'pre.db'}"},  # type: ignore[arg-type]
            vault=VaultSettings(addr=provisioned_vault.addr, token=provisioned_vault.root_token),  # type: ignore[arg-type]
            connectors={"sandbox": section},
        )

    with pytest.raises(StartupError, match=r"\[connectors.sandbox\].*missing credentials: api_key"):
        await preflight(settings(ConnectorSettings(credentials={"webhook_secret": "w"})))  # type: ignore[dict-item]
    with pytest.raises(StartupError, match=r"\[connectors.sandbox\].*none at KV"):
        await preflight(settings(ConnectorSettings(credentials_from="vault")))
    _put(provisioned_vault, api_key="sk_ok")
    await preflight(settings(ConnectorSettings(credentials_from="vault")))


# -- tessera connector credentials ------------------------------------------------------------


def _tessera(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_credentials_set_and_show(
    tmp_path: Path, provisioned_vault: Any, no_sandbox_secret: None
) -> None:
    config = tmp_path / "gateway.toml"
    db = tmp_path / "tessera.db"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\n[vault]\naddr = "{provisioned_vault.addr}"\n'
    )
    admin = {"TESSERA_VAULT_ADMIN_TOKEN": provisioned_vault.root_token}
    base = ("connector", "credentials")

    out = _tessera(*base, "show", "sandbox", "--config", str(config), env=admin)
    assert out.returncode == 1 and "no credentials" in out.stdout

    # A typo is refused with a suggestion, and nothing is written.
    typo = json.dumps({"api_kye": "sk_live_secret_value"})
    out = _tessera(
        *base, "set", "sandbox", "--from-file", "-", "--config", str(config), stdin=typo, env=admin
    )
    assert out.returncode == 2 and "did you mean 'api_key'" in out.stderr
    assert "sk_live_secret_value" not in out.stderr + out.stdout

    out = _tessera(
        *base, "set", "sandbox", "--from-file", "-", "--config", str(config),
        stdin=json.dumps({"webhook_secret": "whsec_value"}), env=admin,
    )  # fmt: skip
    assert out.returncode == 2 and "missing credentials: api_key" in out.stderr

    source = tmp_path / "sandbox.toml"
    source.write_text('api_key = "sk_value_one"\nwebhook_secret = "whsec_value_one"\n')
    out = _tessera(
        *base, "set", "sandbox", "--from-file", str(source), "--config", str(config), env=admin
    )
    assert out.returncode == 0, out.stderr
    assert "version 1" in out.stdout

    # --merge keeps what the file does not set.
    out = _tessera(
        *base, "set", "sandbox", "--from-file", "-", "--merge", "--config", str(config),
        stdin=json.dumps({"api_key": "sk_value_two"}), env=admin,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    stored = _kv(provisioned_vault).read_secret_version(
        path=PATH, mount_point="secret", raise_on_deleted_version=True
    )["data"]
    assert stored["data"] == {"api_key": "sk_value_two", "webhook_secret": "whsec_value_one"}
    assert stored["metadata"]["version"] == 2

    out = _tessera(*base, "show", "sandbox", "--config", str(config), env=admin)
    assert out.returncode == 0, out.stderr
    assert "api_key" in out.stdout and "webhook_secret_previous" in out.stdout
    assert "missing" in out.stdout  # webhook_secret_previous is optional and not set
    assert "sk_value" not in out.stdout + out.stderr and "whsec_value" not in out.stdout

    async def entries() -> list[Any]:
        database = await open_database(f"sqlite:///{db}")
        try:
            return await AuditLog(database).entries()
        finally:
            await database.close()

    writes = [e for e in asyncio.run(entries()) if e.action == "connector.credentials.write"]
    assert [e.detail for e in writes] == [
        "names=api_key,webhook_secret version=1",
        "names=api_key,webhook_secret version=2 merge",
    ]
    assert all(e.target == "sandbox" for e in writes)


def test_credentials_set_refuses_an_unknown_connector(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[vault]\naddr = "{provisioned_vault.addr}"\n')
    out = _tessera(
        "connector", "credentials", "set", "acme", "--from-file", "-", "--config", str(config),
        stdin='{"api_key": "x"}', env={"TESSERA_VAULT_ADMIN_TOKEN": provisioned_vault.root_token},
    )  # fmt: skip
    assert out.returncode == 2 and "no connector 'acme' is installed" in out.stderr


async def test_the_refresh_loop_survives_failures_and_logs_them(
    make_gateway: MakeGateway, sandbox: Any, provisioned_vault: Any, no_sandbox_secret: None
) -> None:
    """The loop itself, on a one-second interval: a failed read (a version without api_key) is
    logged and keeps the credentials; an unexpected error is logged and the loop goes on; a
    good version is then taken."""
    _put(provisioned_vault, api_key="sk_one")
    gw = await make_gateway(
        connectors={"sandbox": _vault_sandbox(sandbox, credentials_refresh_seconds=1)},
        routing={"default": ["sandbox"]},
    )
    pool = gw.resources.pool
    runtime = pool.runtime("sandbox")
    real_read = gw.resources.vault.kv_read
    calls = 0

    async def flaky(path: str) -> dict[str, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await real_read(path)

    with structlog.testing.capture_logs() as logs:
        _put(provisioned_vault, webhook_secret="whsec_only")
        gw.resources.vault.kv_read = flaky  # the next refresh crashes, later ones read Vault
        for _ in range(60):
            if any(e["event"] == "connector_credentials_refresh_failed" for e in logs):
                break
            await asyncio.sleep(0.1)
        assert runtime.credentials.reveal("api_key") == "sk_one"
        _put(provisioned_vault, api_key="sk_two")
        for _ in range(60):
            if runtime.credentials.reveal("api_key") == "sk_two":
                break
            await asyncio.sleep(0.1)
    events = [e["event"] for e in logs if e["event"].startswith("connector_credentials")]
    assert events[:2] == [
        "connector_credentials_refresh_crashed",
        "connector_credentials_refresh_failed",
    ], events
    assert runtime.credentials.reveal("api_key") == "sk_two"
    assert not any("sk_one" in str(e) or "whsec_only" in str(e) for e in logs)
