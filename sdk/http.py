"""The SDK-owned HTTP client a connector runtime sends provider calls with.

One ``httpx.AsyncClient`` per connector runtime, built by ``build_http_client`` and reused by
every call (a sized connection pool, not a client per request):

- TLS verification always on, TLS 1.2 minimum, certificates checked against the host name;
  ``HttpSettings.ca_bundle`` adds a trust anchor (a private PKI, or a test CA) to the Mozilla
  bundle, it never switches verification off;
- redirects off (a 3xx is an ``UnexpectedRedirectError``; card data is never re-posted);
- no proxies or certificates taken from the environment (``trust_env=False``);
- the ``EgressTransport`` on top (host policy, detokenization, outcome mapping, size limit,
  transcript) and the ``GuardedNetworkBackend`` underneath (address checks, DNS pinning).

Per-request timeouts are derived from the call's deadline by ``CallContext.send``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import certifi
import httpcore
import httpx

from sdk.egress import DEFAULT_MAX_RESPONSE_BYTES, EgressTransport
from sdk.hostpolicy import GuardedNetworkBackend, HostPolicy

__all__ = ["HttpSettings", "build_http_client", "network_transport", "provider_tls_context"]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Pool sizing, limits and trust for one connector runtime's client."""

    max_connections: int = 100
    max_keepalive_connections: int = 50
    keepalive_expiry: float = 30.0
    connect_timeout: float = 5.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ca_bundle: Path | None = None
    http2: bool = False
    user_agent: str = "tessera-sdk/0.1"


def provider_tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """A client TLS context: Mozilla trust (+ ``ca_bundle``), verification on, TLS >= 1.2."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class _GuardedPoolTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose network backend is guarded."""

    def __init__(self, settings: HttpSettings, *, test_mode: bool) -> None:
        context = provider_tls_context(settings.ca_bundle)
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry,
        )
        super().__init__(verify=context, limits=limits, http2=settings.http2, trust_env=False)
        # httpx exposes no way to pass a network backend; the pool is replaced (tests assert the
        # guard is in place, so an httpx change cannot remove it silently).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=settings.http2,
            network_backend=GuardedNetworkBackend(test_mode=test_mode),
        )


def network_transport(
    settings: HttpSettings | None = None, *, test_mode: bool = False
) -> httpx.AsyncBaseTransport:
    """The pooled network transport with the guarded backend (what ``build_http_client`` puts
    under the egress transport; fault injectors wrap it)."""
    return _GuardedPoolTransport(settings or HttpSettings(), test_mode=test_mode)


def build_http_client(
    policy: HostPolicy,
    settings: HttpSettings | None = None,
    *,
    inner_transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The pooled client for one connector runtime. See the module docstring.

    ``inner_transport`` replaces the network transport (an ``httpx.MockTransport`` in unit
    tests); the egress transport, and so the policy and detokenization, stay in place.
    """
    settings = settings or HttpSettings()
    inner = inner_transport or network_transport(settings, test_mode=policy.test_mode)
    return httpx.AsyncClient(
        transport=EgressTransport(inner, policy, max_response_bytes=settings.max_response_bytes),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(30.0, connect=settings.connect_timeout),
        headers={"user-agent": settings.user_agent, "accept-encoding": "gzip, deflate"},
    )
