"""The SDK-owned HTTP client a connector runtime sends provider calls with.

One ``ProviderClient`` (an ``httpx.AsyncClient``) per connector runtime, built by
``build_http_client`` and reused by every call (a sized connection pool, not a client per
request):

- TLS verification always on, TLS 1.2 minimum, certificates checked against the host name;
  ``HttpSettings.ca_bundle`` adds a trust anchor (a private PKI, or a test CA) to the Mozilla
  bundle, it never switches verification off; a ``client_tls`` connector's requests present its
  client certificate (``sdk.client_tls``, ``client_tls_context``);
- redirects off (a 3xx is an ``UnexpectedRedirectError``; card data is never re-posted);
- no proxies or certificates taken from the environment (``trust_env=False``), no cookie jar;
- the ``EgressTransport`` on top (host policy, detokenization, outcome mapping, size limit,
  transcript) and the network transport underneath (address checks, DNS pinning).

Two network transports, one set of guarantees; ``HttpSettings.network`` picks:

- ``"aiohttp"`` (the default): ``sdk.aiohttp_transport``, an aiohttp connection pool with the
  ``GuardedResolver``. A provider call costs about 0.9 ms of CPU through it against 1.6 ms
  through httpcore one at a time, and 0.7-0.9 ms against 3.1 ms with 16 in flight
  (``bench/egress.py``, same SDK code above both). ``max_keepalive_connections`` has no
  equivalent there (aiohttp keeps every idle connection until ``keepalive_expiry``);
- ``"httpcore"``: httpx's pool (httpcore, anyio) with the ``GuardedNetworkBackend``. Used
  whatever ``network`` says when ``http2`` is on (aiohttp speaks HTTP/1.1 only).

Both are covered by the same tests (``tests/sdk/test_network.py`` runs each guarantee on each).

Per-request timeouts are derived from the call's deadline by ``CallContext.send``.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import certifi
import httpcore
import httpx

from sdk.aiohttp_transport import AiohttpNetworkTransport, httpcore_patched
from sdk.client_tls import CLIENT_CREDENTIALS_EXTENSION, ClientIdentity, identity_for
from sdk.egress import DEFAULT_MAX_RESPONSE_BYTES, EgressTransport
from sdk.hostpolicy import GuardedNetworkBackend, HostPolicy

__all__ = [
    "NETWORKS",
    "HttpSettings",
    "ProviderClient",
    "build_http_client",
    "client_tls_context",
    "network_transport",
    "provider_tls_context",
]

#: The network transports ``HttpSettings.network`` can name.
NETWORKS = ("aiohttp", "httpcore")


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
    network: str = "aiohttp"

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(
                f"HttpSettings.network must be one of {NETWORKS}, not {self.network!r}."
            )


def provider_tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """A client TLS context: Mozilla trust (+ ``ca_bundle``), verification on, TLS >= 1.2."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@functools.lru_cache(maxsize=16)
def client_tls_context(identity: ClientIdentity, ca_bundle: Path | None = None) -> ssl.SSLContext:
    """``provider_tls_context(ca_bundle)`` presenting ``identity`` (mutual TLS, ``sdk.client_tls``).
    One context per identity: the connection pools key their connections by it."""
    context = provider_tls_context(ca_bundle)
    identity.load_into(context)
    return context


#: Client identities a ``_GuardedPoolTransport`` keeps a pool for (more: the oldest retires),
#: and retired pools it keeps open for calls still using them (more: the oldest is closed).
_MAX_IDENTITY_POOLS = 8
_MAX_RETIRED_POOLS = 32


class _GuardedPool(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose network backend is guarded, with the TLS
    ``context`` given (default: ``provider_tls_context``)."""

    def __init__(
        self, settings: HttpSettings, *, test_mode: bool, context: ssl.SSLContext | None = None
    ) -> None:
        context = context or provider_tls_context(settings.ca_bundle)
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except ssl.SSLError as exc:  # a TLS alert on a read: httpx lets it through unmapped
            raise httpx.ReadError(type(exc).__name__, request=request) from exc


class _GuardedPoolTransport(_GuardedPool):
    """The guarded pool, and one more per client identity (``sdk.client_tls``): a request
    carrying client credentials over https goes through the pool presenting that certificate
    (httpcore's pools have one TLS context each)."""

    def __init__(self, settings: HttpSettings, *, test_mode: bool) -> None:
        super().__init__(settings, test_mode=test_mode)
        self._settings, self._test_mode = settings, test_mode
        self._identity_pools: OrderedDict[ClientIdentity, _GuardedPool] = OrderedDict()
        self._retired: list[_GuardedPool] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # A mocked pool (respx) does no TLS: nothing to present.
        if CLIENT_CREDENTIALS_EXTENSION not in request.extensions or httpcore_patched():
            return await super().handle_async_request(request)
        identity = await identity_for(request)
        if identity is None:
            return await super().handle_async_request(request)
        pools = self._identity_pools
        pool = pools.get(identity)
        if pool is None:
            context = client_tls_context(identity, self._settings.ca_bundle)
            pool = pools[identity] = _GuardedPool(
                self._settings, test_mode=self._test_mode, context=context
            )
            if len(pools) > _MAX_IDENTITY_POOLS:
                # Not closed now: a call may still be reading from it. Closed with this
                # transport, or once many identities later.
                self._retired.append(pools.popitem(last=False)[1])
                if len(self._retired) > _MAX_RETIRED_POOLS:
                    await self._retired.pop(0).aclose()
        else:
            pools.move_to_end(identity)
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        pools = [*self._identity_pools.values(), *self._retired]
        self._identity_pools.clear()
        self._retired.clear()
        for pool in pools:
            await pool.aclose()
        await super().aclose()


def network_transport(
    settings: HttpSettings | None = None, *, test_mode: bool = False
) -> httpx.AsyncBaseTransport:
    """The pooled, guarded network transport ``settings.network`` names (what
    ``build_http_client`` puts under the egress transport; fault injectors wrap it)."""
    settings = settings or HttpSettings()
    if settings.network == "httpcore" or settings.http2:
        return _GuardedPoolTransport(settings, test_mode=test_mode)
    ca_bundle = settings.ca_bundle
    return AiohttpNetworkTransport(
        provider_tls_context(ca_bundle),
        client_context=lambda identity: client_tls_context(identity, ca_bundle),
        test_mode=test_mode,
        max_connections=settings.max_connections,
        keepalive_expiry=settings.keepalive_expiry,
        connect_timeout=settings.connect_timeout,
        fallback=lambda: _GuardedPoolTransport(settings, test_mode=test_mode),
    )


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: a cookie one provider reply sets is never sent again."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class ProviderClient(httpx.AsyncClient):
    """The SDK's ``httpx.AsyncClient``: no cookie jar, and a short path for plain sends.

    - **No cookies.** The client is shared by every call of a connector runtime, so every tenant:
      a cookie kept from one reply would ride along on another tenant's call. Connectors that
      need one send it as a header.
    - **A short send.** ``send`` without ``stream``, ``auth``, redirects or event hooks goes
      straight to the transport (the egress transport returns replies already read, checked and
      decoded): no auth flow, redirect loop, cookie extraction, stream wrapper or log line per
      call. Anything else takes httpx's own path. ``_transport_for_url`` is still asked for the
      transport, so respx's ``httpx`` mocker works, and ``elapsed`` is set as httpx sets it
      (from handing the request to the transport to the reply read), whatever the transport.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("The SDK's provider client keeps no cookies.")

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        hooks = self.event_hooks
        if (
            stream
            or auth is not httpx.USE_CLIENT_DEFAULT
            or follow_redirects is True
            or self.follow_redirects
            or self.auth is not None
            or hooks["request"]
            or hooks["response"]
        ):
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        if "timeout" not in request.extensions:
            request.extensions = {**request.extensions, "timeout": self.timeout.as_dict()}
        started = time.perf_counter()
        response = await self._transport_for_url(request.url).handle_async_request(request)
        response.request = request
        if not response.is_stream_consumed:  # not the egress transport's: read it here
            try:
                await response.aread()
            finally:
                await response.aclose()
        response.elapsed = timedelta(seconds=time.perf_counter() - started)
        return response


def build_http_client(
    policy: HostPolicy,
    settings: HttpSettings | None = None,
    *,
    inner_transport: httpx.AsyncBaseTransport | None = None,
) -> ProviderClient:
    """The pooled client for one connector runtime. See the module docstring.

    ``inner_transport`` replaces the network transport (an ``httpx.MockTransport`` in unit
    tests); the egress transport, and so the policy and detokenization, stay in place.
    """
    settings = settings or HttpSettings()
    inner = inner_transport or network_transport(settings, test_mode=policy.test_mode)
    return ProviderClient(
        transport=EgressTransport(inner, policy, max_response_bytes=settings.max_response_bytes),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(30.0, connect=settings.connect_timeout),
        headers={"user-agent": settings.user_agent, "accept-encoding": "gzip, deflate"},
    )
