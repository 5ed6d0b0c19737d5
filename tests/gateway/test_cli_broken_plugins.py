"""A broken connector plugin installed next to good ones: ``tessera connector list`` lists the good
ones and reports the broken ones (exit 1); the gateway starts without it, logging one warning
each, unless its configuration names it (exit 2, saying why); a conformance run against it
names the reason.

The CLI tests install a real (fake) distribution: a ``*.dist-info`` directory with an
``entry_points.txt`` on ``PYTHONPATH``, found by ``importlib.metadata`` as pip's would be."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import sdk.registry
from gateway.config import ConfigError, ConnectorSettings
from gateway.connector_pool import ConnectorPool, VaultRevealer
from sdk import ENTRY_POINT_GROUP, ConnectorMetrics
from vault.devserver import free_port

from .conftest import MakeGateway, sandbox_connector
from .test_cli import _tessera

MISSING_DEPENDENCY = "tessera_acme_dependency_not_installed"
ACME_REASON = f"failed to load: ModuleNotFoundError: No module named '{MISSING_DEPENDENCY}'"
ACME = f"acme = tessera_fake_acme:AcmeConnector: {ACME_REASON}"
MISNAMED = (
    "misnamed = tests.sdk.demo_connector:DemoConnector: "
    "the entry-point name must be the manifest id 'demo'"
)


def _installed(root: Path, name: str, *plugins: str) -> Path:
    """``root`` holding an installed distribution ``name`` whose connector entry points are
    ``plugins`` (``id = module:attr``)."""
    dist = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{p}\n" for p in plugins)
    )
    return root


@pytest.fixture
def plugins_path(tmp_path: Path) -> Path:
    """A directory holding an installed distribution with two broken connector plugins."""
    root = _installed(
        tmp_path / "site",
        "tessera-fake-plugins",
        "acme = tessera_fake_acme:AcmeConnector",
        "misnamed = tests.sdk.demo_connector:DemoConnector",
    )
    (root / "tessera_fake_acme.py").write_text(f"import {MISSING_DEPENDENCY}\n")
    return root


def _env(plugins_path: Path) -> dict[str, str]:
    paths = [str(plugins_path), str(Path.cwd()), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _config(tmp_path: Path, connectors: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "tessera.db"}"\n\n'
        f'[vault]\naddr = "http://127.0.0.1:{free_port()}"\ntoken = "t"\n\n{connectors}'
    )
    return path


def test_connector_list_shows_the_good_and_reports_the_broken(plugins_path: Path) -> None:
    out = _tessera("connector", "list", env=_env(plugins_path))
    assert out.returncode == 1, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0].split()[:3] == ["ID", "NAME", "CATEGORY"]
    assert [row.split()[0] for row in rows[1:]] == ["sandbox"]
    assert out.stderr.splitlines() == [
        "tessera: broken connector plugins, not loaded (fix or uninstall them):",
        f"  {ACME}",
        f"  {MISNAMED}",
    ]


def test_serve_refuses_a_configured_connector_whose_plugin_is_broken(
    tmp_path: Path, plugins_path: Path
) -> None:
    config = _config(
        tmp_path, '[connectors.acme]\ntest_mode = true\n[routing]\ndefault = ["acme"]\n'
    )
    out = _tessera("serve", "--config", str(config), env=_env(plugins_path))
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        "tessera: [connectors.acme]: Connector 'acme' cannot be used: its plugin "
        f"'acme = tessera_fake_acme:AcmeConnector' is broken: {ACME_REASON}.\n"
    )
    # Configured with the sandbox only, the same install gets past the connectors to the
    # start-up checks (here: Vault is not there, exit 1).
    config = _config(tmp_path, "[connectors.sandbox]\ntest_mode = true\n")
    out = _tessera("serve", "--config", str(config), env=_env(plugins_path))
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("tessera: Vault at http://127.0.0.1:"), out.stderr


def test_conformance_run_against_a_broken_plugin_names_the_reason(plugins_path: Path) -> None:
    out = _tessera("conformance", "run", "--connector", "acme", env=_env(plugins_path))
    assert out.returncode == 2, out.stderr
    assert "conformance: error: Connector 'acme' cannot be used: its plugin" in out.stderr
    assert f"No module named '{MISSING_DEPENDENCY}'" in out.stderr


# -- the gateway in process -----------------------------------------------------------------------


@pytest.fixture
def broken_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    """The installed connector entry points plus two broken ones (an import error, two plugins
    claiming one id)."""
    extra = [
        EntryPoint("acme", "tests.no_such_module:AcmeConnector", ENTRY_POINT_GROUP),
        EntryPoint("demo", "tests.sdk.demo_connector:DemoConnector", ENTRY_POINT_GROUP),
        EntryPoint("demo", "tests.sdk.registry_plugins:TwinDemoConnector", ENTRY_POINT_GROUP),
    ]
    real = importlib.metadata.entry_points

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [*real(group=group), *extra]

    monkeypatch.setattr(sdk.registry, "entry_points", entry_points)
    yield extra


async def test_the_gateway_starts_without_unrelated_broken_plugins_and_warns_once_each(
    broken_installed: list[EntryPoint], make_gateway: MakeGateway, sandbox: Any
) -> None:
    with capture_logs() as logs:
        gateway = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    assert gateway.resources.pool.ids() == ["sandbox"]
    warnings = [log for log in logs if log["event"] == "connector_plugin_broken"]
    assert [(w["log_level"], w["connector"], w["plugin"]) for w in warnings] == [
        ("warning", "acme", "acme = tests.no_such_module:AcmeConnector"),
        ("warning", "demo", "demo = tests.sdk.demo_connector:DemoConnector"),
        ("warning", "demo", "demo = tests.sdk.registry_plugins:TwinDemoConnector"),
    ]
    assert warnings[0]["reason"].startswith("failed to load: ModuleNotFoundError")
    assert (
        "also claimed by 'demo = tests.sdk.registry_plugins:TwinDemoConnector'"
        in (warnings[1]["reason"])
    )
    response = await gateway.client.get("/healthz")
    assert response.status == 200


@pytest.mark.parametrize(
    ("connector", "message"),
    [
        ("acme", "its plugin 'acme = tests.no_such_module:AcmeConnector' is broken: failed"),
        ("demo", "Connector 'demo' cannot be used: 2 plugins claim it and none is used"),
        ("nope", "No connector 'nope' is installed (installed: sandbox)"),
    ],
)
def test_the_connector_pool_refuses_a_configured_connector_it_cannot_use(
    broken_installed: list[EntryPoint], connector: str, message: str
) -> None:
    """A configuration error (exit 2 from every command that builds the pool), not "could not
    open its resources"; the revealer is never reached."""
    configs = {"sandbox": ConnectorSettings(), connector: ConnectorSettings(test_mode=True)}
    with capture_logs() as logs, pytest.raises(ConfigError) as caught:
        ConnectorPool.build(
            configs,
            revealer=cast(VaultRevealer, None),
            metrics=ConnectorMetrics(CollectorRegistry()),
        )
    assert str(caught.value).startswith(f"[connectors.{connector}]: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert logs == []  # refused before anything is logged


def test_dev_with_a_second_sandbox_plugin_says_why_before_starting_anything(tmp_path: Path) -> None:
    """A plugin that claims ``sandbox`` too leaves ``tessera dev`` without its connector: exit 2
    naming both plugins, before OpenBao or the gateway start (was a start-up crash, exit 1)."""
    root = _installed(
        tmp_path / "site",
        "tessera-fake-sandbox",
        "sandbox = tests.sdk.demo_connector:DemoConnector",
    )
    data_dir = tmp_path / "dev"
    out = _tessera("dev", "--data-dir", str(data_dir), "--port", str(free_port()), env=_env(root))
    assert out.returncode == 2, out.stderr
    assert "tessera dev: error:" in out.stderr and "'sandbox'" in out.stderr, out.stderr
    assert "tests.sdk.demo_connector:DemoConnector" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "Starting OpenBao" not in out.stderr
    assert not data_dir.exists()
