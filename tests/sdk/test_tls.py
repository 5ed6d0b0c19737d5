"""TLS to providers (RELIABILITY item 31): self-signed, expired and wrong-host certificates and
TLS < 1.2 are refused (as ``not_sent``: nothing reached a provider), a valid chain is accepted.
Certificates come from ``tests.sdk.pki``."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import warnings
from collections.abc import AsyncIterator

import pytest

from normalization import Outcome
from sdk import Deadline, HttpSettings
from sdk.http import provider_tls_context
from tests.sdk.conftest import TENANT, RuntimeFactory, authorize_request
from tests.sdk.loopback import LoopbackProvider
from tests.sdk.pki import NOW, Pki, server_context


@pytest.fixture
async def tls_server() -> AsyncIterator[list[LoopbackProvider]]:
    servers: list[LoopbackProvider] = []
    yield servers
    for server in servers:
        await server.close()


async def _authorize(make_runtime: RuntimeFactory, pki: Pki, server: LoopbackProvider, token: str):
    runtime = make_runtime(
        f"https://localhost:{server.port}",
        http=HttpSettings(ca_bundle=pki.ca_file),
        max_attempts=1,
    )
    return await runtime.invoke(
        "authorize", authorize_request(token), deadline=Deadline.after(5), tenant=TENANT
    )


async def test_valid_chain_is_accepted(make_runtime, pki: Pki, tls_server, canary) -> None:
    cert, key = pki.leaf("good", ["localhost"])
    server = await LoopbackProvider().start(server_context(cert, key))
    tls_server.append(server)
    result = await _authorize(make_runtime, pki, server, canary[0])
    assert result.outcome is Outcome.SUCCEEDED
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", ["self_signed", "expired", "wrong_host"])
async def test_bad_certificates_are_refused(
    make_runtime, pki: Pki, tls_server, canary, kind: str
) -> None:
    if kind == "self_signed":
        cert, key = pki.leaf(kind, ["localhost"], self_signed=True)
    elif kind == "expired":
        cert, key = pki.leaf(
            kind,
            ["localhost"],
            not_before=NOW - dt.timedelta(days=60),
            not_after=NOW - dt.timedelta(days=1),
        )
    else:
        cert, key = pki.leaf(kind, ["provider.other.example"])
    server = await LoopbackProvider().start(server_context(cert, key))
    tls_server.append(server)
    result = await _authorize(make_runtime, pki, server, canary[0])
    assert result.outcome is Outcome.NOT_SENT
    assert server.requests == []


async def test_tls_below_1_2_is_refused(make_runtime, pki: Pki, tls_server, canary) -> None:
    cert, key = pki.leaf("old", ["localhost"])
    try:
        context = server_context(cert, key, max_version=ssl.TLSVersion.TLSv1_1)
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL cannot serve TLS 1.1 at all: {exc}")
    server = await LoopbackProvider().start(context)
    tls_server.append(server)

    # Prove the server really speaks TLS 1.1, so the refusal below is the client's doing.
    permissive = ssl.create_default_context(cafile=str(pki.ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        _, writer = await asyncio.open_connection(
            "localhost", server.port, ssl=permissive, server_hostname="localhost"
        )
    except (ssl.SSLError, OSError) as exc:
        pytest.skip(f"this OpenSSL will not negotiate TLS 1.1 even permissively: {exc}")
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    assert version == "TLSv1.1"

    result = await _authorize(make_runtime, pki, server, canary[0])
    assert result.outcome is Outcome.NOT_SENT
    assert server.requests == []


def test_client_context_is_strict() -> None:
    context = provider_tls_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
