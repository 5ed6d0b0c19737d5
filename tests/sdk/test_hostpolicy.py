"""``sdk.hostpolicy.resolve_checked``, the one "resolve, then refuse if any address is
non-public", and the two adapters built on it (``GuardedNetworkBackend`` for httpcore,
``GuardedResolver`` for aiohttp), against a simulated DNS (``tests.fake_dns``) and real loopback
sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import pytest

from sdk.aiohttp_transport import GuardedResolver
from sdk.hostpolicy import (
    CheckedAddress,
    DestinationRefusedError,
    GuardedNetworkBackend,
    HostResolutionError,
    resolve_checked,
)
from tests.fake_dns import FakeDns
from tests.sdk.loopback import RawServer, raw_server

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700:4700::1111"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns.install(monkeypatch)


async def _accept(server: RawServer, reader: asyncio.StreamReader, writer: Any) -> None:
    """Accept and hang up: ``raw_server`` counts the connection."""


@pytest.fixture
async def listener() -> AsyncIterator[RawServer]:
    server = await raw_server(_accept)
    yield server
    await server.close()


async def test_every_address_is_returned_once_in_order_with_its_socket_details(
    dns: FakeDns,
) -> None:
    dns.answers["api.provider.example"] = [PUBLIC_V4, PUBLIC_V6, PUBLIC_V4]
    checked = await resolve_checked("api.provider.example", 8443, test_mode=False)
    assert checked == [
        CheckedAddress(ipaddress.ip_address(PUBLIC_V4), socket.AF_INET, socket.IPPROTO_TCP, 8443),
        CheckedAddress(ipaddress.ip_address(PUBLIC_V6), socket.AF_INET6, socket.IPPROTO_TCP, 8443),
    ]
    assert dns.asked == [("api.provider.example", 8443)]  # one lookup


async def test_the_family_is_passed_to_the_resolver(dns: FakeDns) -> None:
    dns.answers["api.provider.example"] = [PUBLIC_V6, PUBLIC_V4]
    checked = await resolve_checked(
        "api.provider.example", 443, test_mode=False, family=socket.AF_INET
    )
    assert [str(c.address) for c in checked] == [PUBLIC_V4]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (["127.0.0.1"], "a loopback address"),
        ([PUBLIC_V4, "10.0.0.7"], "a private or reserved address"),  # one bad address is enough
        ([PUBLIC_V6, "::ffff:169.254.169.254"], "a cloud metadata address"),
        (["fe80::1"], "a link-local address"),
    ],
)
async def test_one_non_public_address_refuses_the_whole_answer(
    dns: FakeDns, answer: list[str], reason: str
) -> None:
    dns.answers["api.provider.example"] = answer
    with pytest.raises(DestinationRefusedError) as refused:
        await resolve_checked("api.provider.example", 443, test_mode=False)
    assert refused.value.reason == reason
    assert str(refused.value) == f"Host 'api.provider.example' resolves to {reason}."
    assert all(address not in str(refused.value) for address in answer)


async def test_test_mode_admits_loopback_and_private_but_never_metadata(dns: FakeDns) -> None:
    dns.answers["sim.test"] = ["127.0.0.1", "10.1.2.3"]
    dns.answers["meta.test"] = ["169.254.169.254"]
    checked = await resolve_checked("sim.test", 80, test_mode=True)
    assert [str(c.address) for c in checked] == ["127.0.0.1", "10.1.2.3"]
    with pytest.raises(DestinationRefusedError, match="metadata"):
        await resolve_checked("meta.test", 80, test_mode=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "169.254.169.254", "::ffff:10.0.0.1"])
async def test_an_ip_literal_is_checked_without_a_lookup(dns: FakeDns, host: str) -> None:
    with pytest.raises(DestinationRefusedError) as refused:
        await resolve_checked(host, 443, test_mode=False)
    assert refused.value.reason is not None
    assert host.strip("[]") not in str(refused.value)  # the message names no address
    assert dns.asked == []
    [public] = await resolve_checked(f"[{PUBLIC_V6}]", 443, test_mode=False)
    assert public == CheckedAddress(
        ipaddress.ip_address(PUBLIC_V6), socket.AF_INET6, socket.IPPROTO_TCP, 443
    )
    assert dns.asked == []


@pytest.mark.parametrize(
    "answer", [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), []]
)
async def test_no_address_is_a_resolution_error(
    dns: FakeDns, answer: list[str] | BaseException
) -> None:
    dns.answers["gone.provider.example"] = answer
    with pytest.raises(HostResolutionError) as failed:
        await resolve_checked("gone.provider.example", 443, test_mode=False)
    assert isinstance(failed.value, OSError)  # what aiohttp reports as a DNS error
    assert failed.value.errno == socket.EAI_NONAME
    assert "gone.provider.example" in str(failed.value)


async def test_a_name_idna_cannot_encode_is_a_resolution_error() -> None:
    # The real resolver: a 64-character label fails to encode before any query is sent.
    with pytest.raises(HostResolutionError):
        await resolve_checked("a" * 64 + ".example", 443, test_mode=False)


async def test_a_slow_lookup_times_out(dns: FakeDns) -> None:
    dns.hanging.add("slow.provider.example")
    with pytest.raises(TimeoutError, match=r"slow\.provider\.example"):
        await resolve_checked("slow.provider.example", 443, test_mode=False, timeout=0.05)


# -- the adapters ---------------------------------------------------------------------------------


async def test_the_httpcore_backend_connects_to_the_checked_address(
    dns: FakeDns, listener: RawServer
) -> None:
    dns.answers["sim.test"] = ["127.0.0.1"]
    stream = await GuardedNetworkBackend(test_mode=True).connect_tcp("sim.test", listener.port)
    await stream.aclose()
    assert listener.connections == 1 and dns.asked == [("sim.test", listener.port)]
    with pytest.raises(DestinationRefusedError, match="loopback"):
        await GuardedNetworkBackend(test_mode=False).connect_tcp("sim.test", listener.port)
    assert listener.connections == 1  # refused before a socket opened


async def test_the_httpcore_backend_keeps_its_error_types(dns: FakeDns) -> None:
    dns.answers["gone.test"] = []
    dns.hanging.add("slow.test")
    backend = GuardedNetworkBackend(test_mode=True)
    with pytest.raises(httpcore.ConnectError, match="has no addresses"):
        await backend.connect_tcp("gone.test", 443)
    with pytest.raises(httpcore.ConnectError, match=r"Resolving 'unknown\.test' failed"):
        await backend.connect_tcp("unknown.test", 443)
    with pytest.raises(httpcore.ConnectTimeout, match="timed out"):
        await backend.connect_tcp("slow.test", 443, timeout=0.05)


async def test_the_aiohttp_resolver_hands_over_checked_numeric_addresses(dns: FakeDns) -> None:
    dns.answers["sim.test"] = ["127.0.0.1", "::1"]
    resolver = GuardedResolver(test_mode=True, timeout=1.0)
    results = await resolver.resolve("sim.test", 8080, family=socket.AF_UNSPEC)
    assert [(r["hostname"], r["host"], r["port"], r["family"]) for r in results] == [
        ("sim.test", "127.0.0.1", 8080, socket.AF_INET),
        ("sim.test", "::1", 8080, socket.AF_INET6),
    ]
    # Numeric flags: aiohttp connects to these without a second lookup.
    assert all(r["flags"] & socket.AI_NUMERICHOST for r in results)
    with pytest.raises(DestinationRefusedError, match="loopback"):
        await GuardedResolver(test_mode=False, timeout=1.0).resolve("sim.test", 8080)
    with pytest.raises(OSError, match=r"unknown\.test"):
        await resolver.resolve("unknown.test", 8080)
