"""Where provider calls may go: https, to the manifest's hosts, never to internal addresses.

Two checks, both before a socket opens:

- ``HostPolicy.check_url`` (in the egress transport): the scheme is https, the host is one the
  manifest declares, the URL carries no userinfo, and the host is a DNS name, not an IP literal.
- ``resolve_checked``: the one implementation of "resolve, then refuse if any address is
  non-public". The name is resolved once (``getaddrinfo`` off the loop) and every address it
  resolves to is checked with ``address_refusal`` (loopback, private, link-local, cloud-metadata,
  multicast and other non-global addresses are refused): one bad address refuses the whole
  answer. It returns the checked addresses, and the caller connects to those (DNS pinning), so a
  DNS answer cannot change between the check and the connect (rebinding). An IP literal is
  checked without asking DNS. ``GuardedNetworkBackend`` (under httpcore's connection pool) and
  ``sdk.aiohttp_transport.GuardedResolver`` (under aiohttp's) are thin adapters around it; the
  gateway's merchant webhooks use it too. TLS still verifies the certificate against the host
  name.

Errors: ``DestinationRefusedError`` names the host and the reason (``reason``), never an
address; ``HostResolutionError`` (an ``OSError``) when the name does not resolve or resolves to
nothing; ``TimeoutError`` when resolving outlasts ``timeout``.

Test mode (simulators and tests on 127.0.0.1) allows http, IP literals and loopback/private
addresses; it must be switched on explicitly and still refuses link-local and metadata addresses.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from normalization import ConnectorError

__all__ = [
    "CheckedAddress",
    "DestinationRefusedError",
    "GuardedNetworkBackend",
    "HostPolicy",
    "HostResolutionError",
    "address_refusal",
    "ip_literal",
    "is_local_url",
    "literal_refusal",
    "resolve_checked",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
    }
)


class DestinationRefusedError(ConnectorError):
    """A provider call was aimed somewhere the policy forbids; nothing was sent.

    ``reason`` is set when an address was refused: ``address_refusal``'s answer ("a loopback
    address", ...), for callers that word their own message.
    """

    code = "egress_refused"
    default_detail = "The destination of a provider call is not allowed."

    def __init__(self, detail: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason


class HostResolutionError(OSError):
    """A host name did not resolve, or resolved to no address; nothing was sent.

    An ``OSError`` so that aiohttp reports it from a resolver as ``ClientConnectorDNSError``.
    """


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries to an IPv4 host: mapped (``::ffff:a.b.c.d``), 6to4
    (``2002:AABB:CCDD::``), NAT64 (``64:ff9b::a.b.c.d``) and the deprecated IPv4-compatible form
    (``::a.b.c.d``). On a host with NAT64 or 6to4 routing each of them reaches that address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress, *, test_mode: bool) -> str | None:
    """Why ``address`` may not be connected to, or None when it may.

    An IPv6 address that embeds an IPv4 one (mapped, 6to4, NAT64, IPv4-compatible) is judged by
    the IPv4 address it reaches; the local-use NAT64 prefix ``64:ff9b:1::/48`` is refused as
    private whatever it embeds.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL and not test_mode:
            return "a private or reserved address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast or address.is_unspecified:
        return "a multicast or unspecified address"
    if test_mode and (address.is_loopback or address.is_private):
        return None
    if address.is_loopback:
        return "a loopback address"
    if not address.is_global:
        return "a private or reserved address"
    return None


@functools.lru_cache(maxsize=1024)
def literal_refusal(host: str, *, test_mode: bool) -> str | None:
    """Why the IP-literal ``host`` may not be connected to; None when it may, or when ``host``
    is a name (names are checked when they resolve: ``resolve_checked``). Cached per host."""
    literal = ip_literal(host)
    return None if literal is None else address_refusal(literal, test_mode=test_mode)


@functools.lru_cache(maxsize=1024)
def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (brackets allowed around IPv6), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_local_url(url: str) -> bool:
    """Whether ``url`` needs a connector's test mode: plain http, or a loopback host (a simulator
    or a tunnel on this machine)."""
    parts = urlsplit(url)
    if parts.scheme == "http" or parts.hostname == "localhost":
        return True
    address = ip_literal(parts.hostname or "")
    return address is not None and address.is_loopback


@dataclass(frozen=True, slots=True)
class CheckedAddress:
    """One address ``resolve_checked`` let through, with what a socket needs to reach it."""

    address: IPAddress
    family: socket.AddressFamily
    proto: int
    port: int


async def resolve_checked(
    host: str,
    port: int,
    *,
    test_mode: bool,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    timeout: float | None = None,  # noqa: ASYNC109 - a bound on the lookup alone
) -> list[CheckedAddress]:
    """Resolve ``host`` once and return its addresses, every one of them checked.

    Connect only to the returned addresses: they are the ones that were checked. Raises
    ``DestinationRefusedError`` if any address is refused (the whole answer is refused: a name
    with one public and one private address is as dangerous as a private one),
    ``HostResolutionError`` if the name does not resolve or has no address, ``TimeoutError``
    after ``timeout`` seconds. An IP literal (brackets allowed) is checked without a lookup.
    No message names an address.
    """
    literal = ip_literal(host)
    if literal is not None:
        reason = literal_refusal(host, test_mode=test_mode)
        if reason is not None:
            raise DestinationRefusedError(f"The IP-literal host is {reason}.", reason=reason)
        literal_family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return [CheckedAddress(literal, literal_family, socket.IPPROTO_TCP, port)]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except TimeoutError:  # before OSError: TimeoutError is one
        raise TimeoutError(f"Resolving {host!r} timed out.") from None
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
        strerror = exc.strerror if isinstance(exc, OSError) else None
        raise HostResolutionError(
            socket.EAI_NONAME, f"Resolving {host!r} failed: {strerror or type(exc).__name__}"
        ) from None
    checked: list[CheckedAddress] = []
    seen: set[IPAddress] = set()
    for info_family, _, proto, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]))
        reason = address_refusal(address, test_mode=test_mode)
        if reason is not None:
            raise DestinationRefusedError(f"Host {host!r} resolves to {reason}.", reason=reason)
        if address not in seen:
            seen.add(address)
            checked.append(CheckedAddress(address, info_family, proto, int(sockaddr[1])))
    if not checked:
        raise HostResolutionError(socket.EAI_NONAME, f"Host {host!r} has no addresses.")
    return checked


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The URL-level rules for one connector runtime. See the module docstring."""

    allowed_hosts: frozenset[str]
    test_mode: bool = False

    def check_url(self, url: httpx.URL) -> None:
        host = url.host.lower()
        if url.scheme != "https" and not (self.test_mode and url.scheme == "http"):
            raise DestinationRefusedError(f"Provider calls use https, not {url.scheme!r}.")
        if url.userinfo:
            raise DestinationRefusedError("Provider URLs must not carry credentials.")
        if host not in self.allowed_hosts:
            raise DestinationRefusedError(
                f"Host {host!r} is not among the connector's declared hosts."
            )
        if ip_literal(host) is not None:
            if not self.test_mode:
                raise DestinationRefusedError("IP-literal provider URLs are refused.")
            reason = literal_refusal(host, test_mode=True)
            if reason is not None:
                raise DestinationRefusedError(f"Host {host!r} is {reason}.")


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks and pins addresses before connecting."""

    def __init__(
        self, *, test_mode: bool = False, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._test_mode = test_mode
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            checked = await resolve_checked(host, port, test_mode=self._test_mode, timeout=timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        except HostResolutionError as exc:
            raise httpcore.ConnectError(str(exc.strerror)) from None
        last_error: Exception | None = None
        for answer in checked:
            try:
                return await self._inner.connect_tcp(
                    str(answer.address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefusedError("Unix sockets are not provider destinations.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
