"""``tessera serve`` start-up checks: what an operator gets wrong ends in one line and exit 1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.config import DatabaseSettings, ServerSettings, Settings, VaultSettings
from gateway.server import StartupError, check_listen_address, preflight, serve
from vault.devserver import free_port


@pytest.fixture
def reuseport_listener() -> Iterator[int]:
    """A listening socket with SO_REUSEPORT, like a running gateway worker's."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "server": ServerSettings(port=free_port()),
        "database": DatabaseSettings(url=f"sqlite:///{tmp_path / 'tessera.db'}"),
        "vault": VaultSettings(addr=f"http://127.0.0.1:{free_port()}", token="t"),  # type: ignore[arg-type]
    }
    values.update(overrides)
    return Settings(**values)


def test_a_port_held_by_a_running_gateway_is_refused(reuseport_listener: int) -> None:
    # Its workers bind with SO_REUSEPORT, which would happily join the running gateway's socket.
    with pytest.raises(StartupError, match="already in use"):
        check_listen_address("127.0.0.1", reuseport_listener)
    check_listen_address("127.0.0.1", free_port())  # a free one passes


def test_serve_reports_a_busy_port_in_one_line(
    tmp_path: Path, reuseport_listener: int, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path, server=ServerSettings(port=reuseport_listener, workers=2))
    assert serve(settings) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera: cannot listen on 127.0.0.1:") and "Traceback" not in err


def test_several_workers_need_a_fixed_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve(_settings(tmp_path, server=ServerSettings(port=0, workers=2))) == 1
    assert "with workers > 1 set a port" in capsys.readouterr().err


async def test_preflight_names_an_unopenable_database(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = _settings(tmp_path, database=DatabaseSettings(url=f"sqlite:///{tmp_path}/file/x.db"))
    with pytest.raises(
        StartupError, match=r"cannot open the database at sqlite:///.*\[database\] url"
    ):
        await preflight(settings)
    dsn = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x"
    with pytest.raises(StartupError) as caught:
        await preflight(_settings(tmp_path, database=DatabaseSettings(url=dsn)))
    assert "ConnectionRefusedError" in str(caught.value) and "hunter2" not in str(caught.value)


async def test_preflight_names_an_unreachable_vault(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"does not answer.*\[vault\] addr"):
        await preflight(_settings(tmp_path))


@pytest.mark.openbao
async def test_preflight_refuses_bad_credentials_and_a_sealed_vault(
    tmp_path: Path, private_openbao: Any
) -> None:
    from vault.provisioning import provision

    result = provision(private_openbao.addr, private_openbao.root_token)
    good = VaultSettings(
        addr=private_openbao.addr,
        role_id=result.gateway_role_id,
        secret_id=result.gateway_secret_id,  # type: ignore[arg-type]
    )
    await preflight(_settings(tmp_path, vault=good))
    wrong = good.model_copy(update={"secret_id": SecretStr("not-the-secret")})
    with pytest.raises(StartupError, match=r"credentials\. .*role id or secret id is wrong"):
        await preflight(_settings(tmp_path, vault=wrong))
    bad_token = VaultSettings(addr=private_openbao.addr, token="nope")  # type: ignore[arg-type]
    with pytest.raises(StartupError, match="refused the gateway's credentials"):
        await preflight(_settings(tmp_path, vault=bad_token))
    private_openbao.seal()
    with pytest.raises(StartupError, match="is sealed; unseal it"):
        await preflight(_settings(tmp_path, vault=good))


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_gateway(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Checks skipped, so each worker meets the closed database itself: the parent must not wait
    # forever on the survivors, and must exit non-zero.
    dsn = f"postgresql://u@127.0.0.1:{free_port()}/x"
    settings = _settings(
        tmp_path,
        server=ServerSettings(port=free_port(), workers=2),
        database=DatabaseSettings(url=dsn),
    )
    assert serve(settings, checks=False) == 1
    err = capfd.readouterr().err
    assert "could not open its resources" in err and "exited (code 1)" in err
    assert "Traceback" not in err


async def test_a_gateway_on_an_ipv6_address_reports_a_usable_url(tmp_path: Path) -> None:
    """``host = "::1"`` printed ``http://::1:8080``, which no client parses."""
    from aiohttp import ClientSession, web

    from gateway.server import base_url, start_site

    assert base_url("127.0.0.1", 80) == "http://127.0.0.1:80"

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    settings = _settings(tmp_path, server=ServerSettings(host="::1", port=0))
    runner, url = await start_site(app, settings)
    try:
        assert url.startswith("http://[::1]:")
        async with ClientSession() as http, http.get(url + "/healthz") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()
