"""The fault proxy: an asyncio HTTP/1.1 proxy on loopback between a connector and its provider.

In simulator mode every provider call goes through it: the runtime's base URL is the proxy's, and
the proxy forwards each request to the simulator on a fresh upstream connection. It keeps a log
of what it saw (``requests``: method, path, whether it was forwarded, the fault applied, and
the provider's reply to a faulted request), which is how the kit knows how many calls *reached
the provider* and, after a retry or a sync, whether the object named is the one the provider
made (``faulted_reply``).

Scenarios inject faults for the next matching requests (``inject``), one kind each:

=====================  ===========================================================================
``latency``            forward, then wait before answering
``trickle``            forward, then answer a few bytes at a time
``reset_after``        read the whole request, forward it (the provider acts), then reset the
                       client connection (RST) instead of answering: the outcome is ``unknown``
``status``             answer 5xx (or any status) without forwarding, optionally ``Retry-After``;
                       ``after_forwarding=True``: forward first (the provider acts), then answer
                       the status instead of its reply (a load balancer's 503 after the backend
                       did the work)
``truncate``           forward, then send the headers and half the body, and close
``non_json``           forward, then replace the body with an HTML error page (status kept; the
                       reply's ``Content-Encoding`` dropped with its body)
=====================  ===========================================================================

``refusing()`` is the *reset before the request was written*: the proxy stops listening and
drops its idle connections, so a connection attempt is refused and nothing can have been sent
(``not_sent``). A connection accepted and then reset cannot be that fault: the client writes as
soon as it is connected, so the provider may have read the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Fault", "FaultKind", "FaultProxy", "ProxiedRequest"]

_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "te"}
)
_MAX_HEAD = 64 * 1024
_HTML_ERROR = b"<html><head><title>502 Bad Gateway</title></head><body>Bad gateway</body></html>"


class FaultKind(StrEnum):
    LATENCY = "latency"
    TRICKLE = "trickle"
    RESET_AFTER = "reset_after"
    STATUS = "status"
    TRUNCATE = "truncate"
    NON_JSON = "non_json"


@dataclass
class Fault:
    """A fault for the next ``times`` requests matching ``method``/``path`` (a regex searched in
    the path); ``times=None`` keeps it until ``FaultProxy.clear``. The constructors take those
    three as keywords (``Fault.server_error(503, method="POST", times=2)``)."""

    kind: FaultKind
    times: int | None = 1
    method: str | None = None
    path: str | None = None
    seconds: float = 0.0
    status: int = 500
    retry_after: str | None = None
    body: bytes = b'{"error": {"code": "internal_error", "message": "Injected fault."}}'
    chunk: int = 1
    interval: float = 0.05
    forward: bool = False

    @classmethod
    def latency(cls, seconds: float, **match: Any) -> Fault:
        return cls(FaultKind.LATENCY, seconds=seconds, **match)

    @classmethod
    def trickle(cls, *, chunk: int = 1, interval: float = 0.05, **match: Any) -> Fault:
        return cls(FaultKind.TRICKLE, chunk=chunk, interval=interval, **match)

    @classmethod
    def reset_after_request(cls, **match: Any) -> Fault:
        return cls(FaultKind.RESET_AFTER, forward=True, **match)

    @classmethod
    def server_error(
        cls, status: int = 500, *, after_forwarding: bool = False, **match: Any
    ) -> Fault:
        return cls(FaultKind.STATUS, status=status, forward=after_forwarding, **match)

    @classmethod
    def throttle(cls, retry_after: int, **match: Any) -> Fault:
        """429 with ``Retry-After`` in whole seconds (the only form RFC 9110 delta allows)."""
        return cls(
            FaultKind.STATUS,
            status=429,
            retry_after=str(int(retry_after)),
            body=b'{"error": {"code": "rate_limited", "message": "Slow down."}}',
            **match,
        )

    @classmethod
    def truncated(cls, **match: Any) -> Fault:
        return cls(FaultKind.TRUNCATE, forward=True, **match)

    @classmethod
    def non_json(cls, **match: Any) -> Fault:
        return cls(FaultKind.NON_JSON, forward=True, **match)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass(slots=True)
class ProxiedRequest:
    """One request the proxy received. For a faulted request that was forwarded, ``reply`` is
    the body the provider answered, decompressed, and ``reply_location`` its ``Location`` header,
    whatever the fault then did to them (``None`` otherwise, and until it answers): what the
    provider made, for a kit that asks whether a retry or a sync found that same object."""

    method: str
    path: str
    forwarded: bool
    fault: FaultKind | None
    idempotency_key: str | None
    reply: bytes | None = None
    reply_location: str | None = None


@dataclass
class _Upstream:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    idle: bool = True


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    if (_header(headers, "transfer-encoding") or "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = _header(headers, "content-length")
    return await reader.readexactly(int(length)) if length else b""


def _decoded(upstream: _Upstream) -> bytes:
    """The reply body without its ``Content-Encoding`` (gzip, deflate), for reading; what
    the client gets is untouched. An encoding the proxy cannot undo is kept as it came."""
    encoding = (_header(upstream.headers, "content-encoding") or "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        # 47: a zlib or gzip header, detected; deflate without a header is tried after.
        for wbits in (47, -15):
            with contextlib.suppress(zlib.error):
                return zlib.decompress(upstream.body, wbits)
    return upstream.body


def _decode_chunked(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


@dataclass
class FaultProxy:
    """See the module docstring. ``start()`` binds 127.0.0.1 on a free port."""

    upstream_host: str
    upstream_port: int
    port: int = 0
    requests: list[ProxiedRequest] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _connections: set[_Connection] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._closing.set()
        for connection in list(self._connections):
            connection.writer.transport.abort()
        # Handlers end on their own once their connections are gone (cancelling them makes
        # asyncio log the cancellation as an error); only a stuck one is cancelled.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()

    async def _pause(self, seconds: float) -> None:
        """Sleep for a fault, but wake at once when the proxy closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # -- faults ----------------------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def forwarded(self, since: int = 0) -> int:
        """How many requests reached the provider since log position ``since``."""
        return sum(1 for request in self.requests[since:] if request.forwarded)

    def faulted_reply(self, since: int = 0) -> ProxiedRequest | None:
        """The first request since ``since`` that a fault hit after it reached the provider
        (what the provider did with it is in its ``reply`` and ``reply_location``)."""
        return next((r for r in self.requests[since:] if r.reply is not None), None)

    @contextlib.asynccontextmanager
    async def refusing(self) -> AsyncIterator[None]:
        """Refuse connections while inside: nothing can be written (``not_sent``)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self._connections):
            if connection.idle:
                connection.writer.transport.abort()
        try:
            yield
        finally:
            await self.start()

    def _take(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.matches(method, path):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # -- serving ---------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = _Connection(writer)
        self._connections.add(connection)
        try:
            while await self._serve_one(reader, writer, connection):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away, or reset: nothing to answer
        finally:
            self._connections.discard(connection)
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> bool:
        connection.idle = True
        head = await reader.readuntil(b"\r\n\r\n")
        connection.idle = False
        if len(head) > _MAX_HEAD:
            _reset(writer)
            return False
        request_line, headers = _parse_head(head)
        method, target, _ = [*request_line.split(" ", 2), "", ""][:3]
        body = await _read_body(reader, headers)
        path = target.split("?", 1)[0]
        keep_alive = (_header(headers, "connection") or "").lower() != "close"
        fault = self._take(method, path)
        forward = (
            fault is None or fault.forward or fault.kind in (FaultKind.LATENCY, FaultKind.TRICKLE)
        )
        record = ProxiedRequest(
            method,
            path,
            forwarded=forward,
            fault=fault.kind if fault else None,
            idempotency_key=_header(headers, "idempotency-key"),
        )
        self.requests.append(record)
        upstream: _Upstream | None = None
        if forward:
            upstream = await self._forward(method, target, headers, body)
            if fault is not None:  # only a faulted request's reply is ever asked for
                record.reply = _decoded(upstream)
                record.reply_location = _header(upstream.headers, "location")
        if fault is not None and fault.kind is FaultKind.RESET_AFTER:
            _reset(writer)
            return False
        if fault is not None and fault.kind is FaultKind.STATUS:
            extra = [("Content-Type", "application/json")]
            if fault.retry_after is not None:
                extra.append(("Retry-After", fault.retry_after))
            upstream = _Upstream(fault.status, "Injected", extra, fault.body)
        assert upstream is not None
        if fault is not None and fault.kind is FaultKind.LATENCY:
            await self._pause(fault.seconds)
        if fault is not None and fault.kind is FaultKind.NON_JSON:
            # The page replaces the body as sent, so the reply's Content-Encoding goes with it:
            # kept, a compressed reply's header would make the client fail to decode the page.
            kept = [
                (k, v)
                for k, v in upstream.headers
                if k.lower() not in ("content-type", "content-encoding")
            ]
            upstream = _Upstream(
                upstream.status,
                upstream.reason,
                [*kept, ("Content-Type", "text/html")],
                _HTML_ERROR,
            )
        response_head = self._head(upstream, keep_alive)
        if fault is not None and fault.kind is FaultKind.TRUNCATE:
            writer.write(response_head + upstream.body[: len(upstream.body) // 2])
            await writer.drain()
            writer.close()
            return False
        if fault is not None and fault.kind is FaultKind.TRICKLE:
            writer.write(response_head)
            await writer.drain()
            for start in range(0, len(upstream.body), fault.chunk):
                await self._pause(fault.interval)
                if writer.is_closing() or self._closing.is_set():
                    return False  # the client gave up: stop feeding a dead connection
                writer.write(upstream.body[start : start + fault.chunk])
                await writer.drain()
        else:
            writer.write(response_head + upstream.body)
            await writer.drain()
        if not keep_alive:
            writer.close()
        return keep_alive

    @staticmethod
    def _head(upstream: _Upstream, keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {upstream.status} {upstream.reason or 'Status'}"]
        lines += [f"{k}: {v}" for k, v in upstream.headers if k.lower() not in _HOP_HEADERS]
        lines.append(f"Content-Length: {len(upstream.body)}")
        lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> _Upstream:
        try:
            reader, writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            return _Upstream(502, "Bad Gateway", [("Content-Type", "text/plain")], b"upstream down")
        try:
            lines = [f"{method} {target} HTTP/1.1"]
            lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_HEADERS]
            lines += [f"Content-Length: {len(body)}", "Connection: close"]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, response_headers = _parse_head(head)
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
        if (_header(response_headers, "transfer-encoding") or "").lower() == "chunked":
            rest = _decode_chunked(rest)
        else:
            length = _header(response_headers, "content-length")
            if length is not None and length.isdigit():
                rest = rest[: int(length)]
        return _Upstream(status, parts[2] if len(parts) > 2 else "", response_headers, rest)
