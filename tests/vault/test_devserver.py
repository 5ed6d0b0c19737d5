"""DevServer: the real ``bao server -dev`` on a free loopback port, with raised request limits."""

from __future__ import annotations

import os
import socket

import pytest

from normalization.errors import VaultError
from tests.conftest import ProvisionedVault, free_port
from vault.client import VaultClient
from vault.devserver import DevServer, DevServerError, find_bao_binary


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_start_and_stop(private_openbao: DevServer) -> None:
    assert private_openbao.running
    assert private_openbao.addr.startswith("http://127.0.0.1:")
    port = private_openbao.port
    pid = private_openbao.pid
    assert _port_open(port)
    assert private_openbao.root_token not in repr(private_openbao)
    assert private_openbao.health()["sealed"] is False

    private_openbao.stop()
    assert not private_openbao.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not _port_open(port)
    private_openbao.stop()  # idempotent


def test_two_servers_get_different_free_ports(
    openbao: DevServer, private_openbao: DevServer
) -> None:
    assert openbao.port != private_openbao.port
    assert openbao.root_token != private_openbao.root_token


async def test_raised_limits_take_a_500_item_batch(provisioned_vault: ProvisionedVault) -> None:
    async with VaultClient(provisioned_vault.addr, token=provisioned_vault.root_token) as client:
        await client.transit_create_key("tessera-pan-devserver_limits")
        results = await client.transit_encrypt(
            "tessera-pan-devserver_limits", [b"%d" % i for i in range(500)]
        )
    assert len(results) == 500
    assert all(isinstance(r, str) for r in results)


async def test_default_limits_refuse_the_same_batch() -> None:
    """Why the limits are raised: with OpenBao's default of 1,000 JSON strings, 500 items fail."""
    with DevServer(max_request_json_strings=1000) as server:
        async with VaultClient(server.addr, token=server.root_token) as client:
            await _enable_transit(client)
            await client.transit_create_key("tessera-pan-small")
            with pytest.raises(VaultError) as caught:
                await client.transit_encrypt("tessera-pan-small", [b"x"] * 500)
            assert "HTTP 400" in str(caught.value)
            assert len(await client.transit_encrypt("tessera-pan-small", [b"x"] * 250)) == 250


def test_a_taken_port_fails_with_the_server_output(openbao: DevServer) -> None:
    server = DevServer(port=openbao.port, startup_timeout=5)
    with pytest.raises(DevServerError, match="address already in use"):
        server.start()
    assert not server.running


def test_a_missing_binary_is_a_clear_error() -> None:
    with pytest.raises(DevServerError):
        DevServer(bao_binary="/nonexistent/bao").start()


def test_find_bao_binary_and_free_port() -> None:
    assert find_bao_binary() is not None
    port = free_port()
    assert 0 < port < 65536 and not _port_open(port)


async def _enable_transit(client: VaultClient) -> None:
    await client._call("POST", "/v1/sys/mounts/transit", {"type": "transit"}, "mount transit")
