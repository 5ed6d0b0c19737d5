"""The aiohttp network transport: httpx requests sent through an aiohttp connection pool.

Connectors and the egress transport speak httpx; this is only what sits where the network is
(``network_transport``'s default). It costs a fraction of the CPU of httpx's own pool (httpcore,
anyio): see ``bench/egress.py``. It keeps every property of the httpcore transport:

- **addresses**: ``GuardedResolver`` resolves each name once, refuses the whole answer if any
  address is internal and hands aiohttp the checked addresses, which it connects to (DNS
  pinning: no second lookup between the check and the connect); the check is
  ``hostpolicy.resolve_checked``, shared with the httpcore backend. IP literals never reach a
  resolver, so the transport checks them itself. No proxies, no netrc,
  no environment (``trust_env=False``), no unix sockets;
- **TLS**: the connector's context is ``provider_tls_context`` (verification on, TLS >= 1.2,
  host name checked: aiohttp verifies against the URL's host, not the address); a request
  carrying a client identity (``sdk.client_tls``) is sent with that identity's context, which
  aiohttp's pool keys its connections by;
- **no redirects**, **no cookies** (a ``DummyCookieJar``), **no decompression** (the egress
  transport inflates under its size limit), no automatic headers (what httpx built is what is
  sent), no silent resend: aiohttp retries an idempotent request once on a broken keep-alive
  connection; that is switched off, and a second write of one request is refused outright;
- **what was written**: the request's ``trace`` extension (the egress transport's) hears
  ``aiohttp.request.started`` before anything happens and ``aiohttp.send_request_headers.started``
  immediately before the first byte of the request is written, the same line httpcore's
  ``http11.send_request_headers.started`` draws between ``not_sent`` and ``unknown``;
- **errors**: aiohttp's exceptions become the httpx ones httpcore would have raised
  (``ConnectError``/``ConnectTimeout`` before a connection exists, ``ReadError``,
  ``ReadTimeout``, ``RemoteProtocolError`` after), so ``sdk.outcomes`` classifies both alike.

Timeouts come from the request's ``timeout`` extension: ``pool`` bounds getting a connection
(waiting for a free one, resolving, connecting, TLS), ``connect`` each connection attempt,
``read`` each read; aiohttp has no write timeout (the caller's deadline bounds it).

The aiohttp session is created on first use, on the running loop.

**Mocks.** respx (its default ``httpcore`` mocker) and similar tools patch httpcore's connection
pool. While httpcore's pool is patched, requests go through ``fallback`` (the httpcore network
transport), so ``respx.mock`` keeps intercepting provider calls under the egress transport as
it always did; a respx pass-through then reaches the network through the guarded httpcore pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import select
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpcore
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sdk.client_tls import CLIENT_CREDENTIALS_EXTENSION, ClientIdentity, identity_for
from sdk.hostpolicy import DestinationRefusedError, literal_refusal, resolve_checked

__all__ = ["AiohttpNetworkTransport", "GuardedResolver", "httpcore_patched"]

TraceCallback = Callable[[str, Mapping[str, Any]], Awaitable[None]]

#: Request headers aiohttp would otherwise add (httpx already set what it wants sent).
_NO_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


@functools.lru_cache(maxsize=512)
def _yarl_url(text: str) -> URL:
    """httpx's URL (already percent-encoded) as aiohttp's, parsed once per distinct URL."""
    return URL(text, encoded=True)


def httpcore_patched() -> bool:
    """Whether something (respx, a test double) replaced httpcore's pool request method."""
    send = httpcore.AsyncConnectionPool.handle_async_request
    return getattr(send, "__module__", None) != "httpcore._async.connection_pool"


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that hands aiohttp only checked addresses (``resolve_checked``).

    A refused answer raises ``DestinationRefusedError`` (aiohttp passes it through unchanged,
    and its DNS cache keeps only answers that were returned); a name that does not resolve
    raises ``HostResolutionError``, an ``OSError`` aiohttp reports as
    ``ClientConnectorDNSError``; a lookup longer than ``timeout`` raises ``TimeoutError``
    (aiohttp: a connect timeout). aiohttp never asks a resolver about an IP literal: whoever
    sends the request checks those.
    """

    def __init__(self, *, test_mode: bool, timeout: float | None) -> None:
        self._test_mode = test_mode
        self._timeout = timeout

    @property
    def test_mode(self) -> bool:
        """Whether loopback and private addresses are admitted (development and tests)."""
        return self._test_mode

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        checked = await resolve_checked(
            host, port, test_mode=self._test_mode, family=family, timeout=self._timeout
        )
        return [
            ResolveResult(
                hostname=host,
                host=str(answer.address),
                port=answer.port,
                family=answer.family,
                proto=answer.proto,
                flags=_NUMERIC,
            )
            for answer in checked
        ]

    async def close(self) -> None:
        return None


def _readable(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the socket under ``transport`` has something to read (or is gone)."""
    sock = None if transport is None else transport.get_extra_info("socket")
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _PoolConnector(aiohttp.TCPConnector):
    """aiohttp's connector, checking a kept-alive connection before it is used again.

    A pooled connection whose socket is readable was closed by the server (or got bytes nobody
    asked for) after its last reply, and the event loop has not noticed yet: it is closed and
    another one taken, as httpcore does, instead of writing a request into it (which would fail
    as ``unknown``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._used: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect(
        self,
        req: Any,
        traces: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's interface
    ) -> Any:
        while True:
            connection = await super().connect(req, traces, timeout)
            protocol = connection.protocol
            if protocol is None:
                return connection
            if protocol not in self._used:
                self._used.add(protocol)
                return connection
            if not _readable(protocol.transport):
                return connection
            connection.close()


@dataclass(slots=True)
class _Sending:
    """One request's progress, seen by ``_TrackedRequest.send`` (through a context variable)."""

    trace: TraceCallback | None
    written: bool = False


_SENDING: contextvars.ContextVar[_Sending | None] = contextvars.ContextVar(
    "tessera_aiohttp_sending", default=None
)


class _ResendRefusedError(aiohttp.ClientConnectionError):
    """aiohttp tried to write a request a second time (a retry on a fresh connection)."""


class _TrackedRequest(aiohttp.ClientRequest):
    """aiohttp's request, which reports the moment it starts writing, and writes once."""

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        sending = _SENDING.get()
        if sending is not None:
            if sending.written:
                raise _ResendRefusedError("A provider request is never written twice.")
            sending.written = True
            if sending.trace is not None:
                await sending.trace("aiohttp.send_request_headers.started", {})
        return await super().send(conn)


def _mapped(exc: BaseException, request: httpx.Request, written: bool) -> httpx.TransportError:
    """The httpx error for an aiohttp/OS failure, as httpcore would have raised it.

    Its message is the aiohttp error's class name only: aiohttp's text can quote the URL or
    bytes of a malformed reply (which a provider could have filled with card data). The
    original stays reachable as ``__cause__`` for debugging, never in the message.
    """
    message = type(exc).__name__
    mapped: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        mapped = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS, certificates
        mapped = httpx.ConnectError
    elif isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        mapped = httpx.ReadTimeout if written else httpx.ConnectTimeout
    elif isinstance(
        exc,
        (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError),
    ):
        mapped = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.InvalidURL) or type(exc).__name__ == "NonHttpUrlClientError":
        mapped = httpx.UnsupportedProtocol
    else:  # any other aiohttp.ClientError or OSError: what callers catch
        mapped = httpx.ReadError if written else httpx.NetworkError
    return mapped(message, request=request)


class _ResponseStream(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream (raw bytes: nothing decompressed)."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        response = self._response
        content = response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            response.close()
            raise _mapped(exc, self._request, written=True) from exc
        except BaseException:
            # Cancelled (a deadline) or abandoned mid-body: close the connection now, whether
            # or not the reader ever closes the response.
            response.close()
            raise
        response.release()  # read to the end: the connection goes back to the pool

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()  # abandoned mid-body: the connection cannot be reused


class AiohttpNetworkTransport(httpx.AsyncBaseTransport):
    """See the module docstring."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        test_mode: bool = False,
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        connect_timeout: float | None = 5.0,
        fallback: Callable[[], httpx.AsyncBaseTransport] | None = None,
        client_context: Callable[[ClientIdentity], ssl.SSLContext] | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._client_context = client_context
        self._fallback_factory = fallback
        self._fallback: httpx.AsyncBaseTransport | None = None
        self._test_mode = test_mode
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and self._loop is loop:
            return session
        if self._closed:
            raise RuntimeError("The transport is closed.")
        connector = _PoolConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
            ssl=self._ssl_context,
            resolver=GuardedResolver(test_mode=self._test_mode, timeout=self._connect_timeout),
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            request_class=_TrackedRequest,
            skip_auto_headers=_NO_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=16384,
            max_field_size=16384,
        )
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False  # no resend on a broken keep-alive connection
        self._session, self._loop = session, loop
        return session

    def _check_literal(self, host: str) -> None:
        """Names go through ``GuardedResolver``; IP literals are checked here."""
        reason = literal_refusal(host, test_mode=self._test_mode)
        if reason is not None:
            raise DestinationRefusedError(f"Host {host!r} is {reason}.")

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        fallback, self._fallback = self._fallback, None
        if session is not None:
            await session.close()
        if fallback is not None:
            await fallback.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._fallback_factory is not None and httpcore_patched():
            if self._fallback is None:
                self._fallback = self._fallback_factory()
            return await self._fallback.handle_async_request(request)
        url = request.url
        self._check_literal(url.host)
        session = self._client()
        extensions = request.extensions
        trace: TraceCallback | None = extensions.get("trace")
        timeouts: Mapping[str, float | None] = extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        if "transfer-encoding" in request.headers:  # a streamed body, read above: send its length
            headers = [
                (k, v)
                for k, v in headers
                if k.lower() not in ("transfer-encoding", "content-length")
            ]
            headers.append(("Content-Length", str(len(body))))
        sending = _Sending(trace)
        if trace is not None:
            await trace("aiohttp.request.started", {"request": request})
        # A client certificate (mutual TLS): its own context, so its own pooled connections.
        tls: ssl.SSLContext | bool = True  # the connector's context
        if CLIENT_CREDENTIALS_EXTENSION in extensions:  # (no coroutine for every other request)
            identity = await identity_for(request)
            if identity is not None:
                if self._client_context is None:
                    raise RuntimeError("This transport was built without client certificates.")
                tls = self._client_context(identity)
        token = _SENDING.set(sending)
        try:
            response = await session.request(
                request.method,
                _yarl_url(str(url)),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                ssl=tls,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _mapped(exc, request, sending.written) from exc
        finally:
            _SENDING.reset(token)
        reason = response.reason
        version = response.version
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request),
            extensions={
                "http_version": b"HTTP/1.0" if version == (1, 0) else b"HTTP/1.1",
                "reason_phrase": reason.encode("latin-1", "replace") if reason else b"",
            },
        )
