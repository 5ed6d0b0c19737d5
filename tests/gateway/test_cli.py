"""The ``tessera`` operator commands, run as a user would, against the real OpenBao and SQLite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _tessera(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path, provisioned_vault: Any) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "tessera.db"}"

[vault]
addr = "{provisioned_vault.addr}"
"""
    )
    return path


def test_operator_commands_end_to_end(config: Path, provisioned_vault: Any) -> None:
    admin = {"TESSERA_VAULT_ADMIN_TOKEN": provisioned_vault.root_token}

    out = _tessera("vault", "provision", "--config", str(config), env=admin)
    assert out.returncode == 0, out.stderr
    assert "gateway role_id:" in out.stdout

    out = _tessera("merchants", "create", "Acme Ltd", "--config", str(config), env=admin)
    assert out.returncode == 0, out.stderr
    merchant = re.search(r"merchant: (mer_[a-z0-9]+)", out.stdout)
    key = re.search(r"api key:\s+(tsk_[A-Za-z0-9]{40})", out.stdout)
    assert merchant and key

    out = _tessera(
        "keys", "rotate", "--tenant", merchant.group(1), "--settle-seconds", "0.5",
        "--config", str(config), env=admin,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "each waits 0.5 s" in out.stdout
    assert f"{merchant.group(1)}: tessera-pan-{merchant.group(1)} v1 -> v2" in out.stdout
    out = _tessera("keys", "rotate", "--settle-seconds", "-1", "--config", str(config), env=admin)
    assert out.returncode == 2 and "from 0 to 3600 seconds" in out.stderr

    out = _tessera("audit", "verify", "--config", str(config))
    assert out.returncode == 0, out.stderr + out.stdout

    out = _tessera("reconcile", "--config", str(config))
    assert out.returncode == 2 and "needs Vault credentials" in out.stderr
    gateway_env = {**admin, "TESSERA_VAULT_TOKEN": provisioned_vault.root_token}
    out = _tessera("reconcile", "--config", str(config), env=gateway_env)
    assert out.returncode == 0, out.stderr
    assert "claimed=0" in out.stdout


def test_admin_commands_without_a_token_explain_what_is_missing(config: Path) -> None:
    env = {k: "" for k in ("TESSERA_VAULT_ADMIN_TOKEN", "TESSERA_VAULT_TOKEN")}
    out = _tessera("merchants", "create", "Nope", "--config", str(config), env=env)
    assert out.returncode != 0
    assert "admin token" in out.stderr


def test_connector_list_shows_the_sandbox() -> None:
    out = _tessera("connector", "list")
    assert out.returncode == 0, out.stderr
    assert "sandbox" in out.stdout


def test_connector_list_verbose_names_the_credentials() -> None:
    out = _tessera("connector", "list", "--verbose")
    assert out.returncode == 0, out.stderr
    assert "sandbox: Tessera Sandbox (card-acquirer)" in out.stdout
    assert "credentials:      api_key,webhook_secret" in out.stdout


def test_connector_new_says_what_to_run_next(tmp_path: Path) -> None:
    result = _tessera(
        "connector", "new", "Acme Pay", "--category", "bank-rail", "--path", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    project = tmp_path / "tessera-connector-acme-pay"
    assert (project / "tessera_acme_pay" / "sandboxes" / "simulator.json").is_file()
    assert f"pip install -e '{project}[dev]'" in result.stdout
    assert "tessera conformance run --connector acme_pay" in result.stdout


def test_version_and_help() -> None:
    assert _tessera("--version").stdout.startswith("tessera ")
    out = _tessera("--help")
    for command in (
        "dev",
        "serve",
        "vault",
        "merchants",
        "keys",
        "audit",
        "reconcile",
        "attempts",
        "connector",
    ):
        assert command in out.stdout


def test_conformance_run_writes_all_three_reports(tmp_path: Path) -> None:
    reports = {name: tmp_path / name for name in ("r.xml", "r.json", "r.html")}
    out = _tessera(
        "conformance", "run", "--connector", "sandbox", "--mode", "simulator",
        "--junit", str(reports["r.xml"]), "--json", str(reports["r.json"]),
        "--html", str(reports["r.html"]),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASSED" in out.stdout
    for path in reports.values():
        assert path.stat().st_size > 0
    assert "<testsuite" in reports["r.xml"].read_text()
