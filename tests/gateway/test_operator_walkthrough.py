"""An operator's mistakes, from a walkthrough of docs/operating.md: each one gets one clear
``tessera:`` line and exit 2 (a usage or configuration error), before anything is started or
written, and a password in a database URL is never printed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from gateway.devmode import _data_dir_lock
from gateway.server import _redacted_url


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "utf16.toml"
    path.write_bytes("[server]\nport = 8080\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path)


def test_a_vault_addr_without_a_scheme_is_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[vault]\naddr = "127.0.0.1:8200"\n')
    with pytest.raises(ConfigError, match=r"\[vault\] addr: must be an http:// or https:// URL"):
        load_settings(path, env={})
    path.write_text('[vault]\naddr = "https://bao.internal:8200"\n')
    assert load_settings(path, env={}).vault.addr == "https://bao.internal:8200"


def test_a_database_password_in_the_query_is_hidden() -> None:
    assert _redacted_url("postgresql://u@h:5432/db?password=hunter2") == (
        "postgresql://u@h:5432/db?password=***"
    )
    assert "h2" not in _redacted_url("postgresql://u:pw@h/db?sslmode=require&PASSWORD=h2")
    assert _redacted_url("sqlite:////var/lib/tessera/t.db") == "sqlite:////var/lib/tessera/t.db"


def _tessera(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process: ``main`` configures logging for the whole process, which an
    in-process call would leave pointing at this test's captured stderr."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )


@pytest.mark.parametrize(
    "argv",
    [["audit", "verify"], ["merchants", "list"], ["keys", "rotate"]],
)
def test_admin_commands_refuse_to_run_without_a_database(argv: list[str], tmp_path: Path) -> None:
    """Without --config they ran against a new empty SQLite file here and exited 0."""
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_DATABASE_URL"}
    env["TESSERA_VAULT_ADMIN_TOKEN"] = "x"
    done = _tessera(*argv, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert "--config" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


def test_serve_settings_it_can_never_run_with_are_configuration_errors(tmp_path: Path) -> None:
    """No Vault credentials, a random port shared by several workers, and a missing metrics
    directory exited 1 (a failed start-up, or a traceback per worker); they are the
    configuration's fault: exit 2, each said, before any check or worker."""
    config = tmp_path / "gw.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/gw.db"\n[server]\nport = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    # A metrics directory that is not there: each worker died on it with a traceback.
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    done = _tessera("serve", "--config", str(config), "--workers", "2", env=env)
    assert done.returncode == 2, done.stderr
    assert "[server] port = 0 picks a random port" in done.stderr
    assert "[vault] the gateway needs Vault credentials" in done.stderr
    assert f"PROMETHEUS_MULTIPROC_DIR={tmp_path / 'metrics'} is not a directory" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "gw.db").exists()


def test_attempts_list_refuses_a_limit_below_one(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text("")
    done = _tessera("attempts", "list", "--config", str(config), "--limit", "-5")
    assert done.returncode == 2 and "must be at least 1" in done.stderr


def _dev(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _tessera("dev", "--data-dir", str(tmp_path / "data"), *args)


def test_dev_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _dev(tmp_path, "--port", str(port))
    assert done.returncode == 2
    err = done.stderr
    assert "already in use" in err and "--port" in err and "Traceback" not in err
    assert "Starting OpenBao" not in err


@pytest.mark.parametrize("port", ["0", "99999"])
def test_dev_refuses_a_port_out_of_range(tmp_path: Path, port: str) -> None:
    done = _dev(tmp_path, "--port", port)
    assert done.returncode == 2
    assert "--port must be between 1 and 65535" in done.stderr


def test_dev_refuses_a_data_dir_it_cannot_make(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _tessera("dev", "--port", str(port), "--data-dir", str(tmp_path / "afile" / "sub"))
    assert done.returncode == 2 and "cannot use" in done.stderr


def test_a_second_dev_on_the_same_data_dir_touches_nothing(tmp_path: Path) -> None:
    """It used to delete the running one's dev.json and move its database away."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dev.json").write_text("{}")
    (data / "dev.db").write_text("live")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _data_dir_lock(data) as held:
        assert held
        done = _dev(tmp_path, "--port", str(port))
    assert done.returncode == 2
    assert "another tessera dev is running" in done.stderr
    assert (data / "dev.json").exists() and (data / "dev.db").read_text() == "live"
