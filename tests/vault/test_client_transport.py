"""The VaultClient's own HTTP/1.1 transport against scripted servers on loopback: framing
(Content-Length, chunked, end of connection, interim 1xx), keep-alive and its limits, a server
that closes idle connections, malformed replies, the connection limit, and the request bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import orjson
import pytest

from normalization.errors import VaultPermissionDeniedError, VaultUnavailableError
from vault.client import VaultClient, _Connection, _MalformedResponse, _parse_response

OK_BODY = orjson.dumps({"data": {"batch_results": [{"ciphertext": "vault:v1:abc"}]}})


def _reply(body: bytes = OK_BODY, *, status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def _chunked(body: bytes, *, size: int = 7, trailer: str = "") -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for start in range(0, len(body), size):
        chunk = body[start : start + size]
        out += b"%x;ext=1\r\n" % len(chunk) + chunk + b"\r\n"
    return out + b"0\r\n" + trailer.encode() + b"\r\n"


Handler = Callable[[bytes, int], bytes | None]


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A loopback server: ``handler(request, number on this connection)`` gives the bytes to
    send back (None: close the connection without answering). Yields its URL, the requests it
    got and how many connections were opened."""
    requests: list[bytes] = []
    connections: list[int] = [0]

    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.append(writer)
        connections[0] += 1
        count = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                requests.append(request)
                count += 1
                answer = handler(request, count)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", requests, connections
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def test_parse_content_length_chunked_and_interim() -> None:
    buffer = bytearray(_reply(b'{"a": 1}') + b"HTTP/1.1 204 No Content\r\n\r\n")
    status, headers, body, consumed, keep_alive = _parse_response(buffer, False) or ()
    assert (status, body, keep_alive) == (200, b'{"a": 1}', True)
    assert headers["content-type"] == "application/json"
    del buffer[:consumed]
    assert _parse_response(buffer, False) == (204, {}, b"", len(buffer), True)

    whole = _chunked(b'{"chunked": "yes, in several pieces"}', trailer="X-T: 1\r\n")
    for cut in range(len(whole)):
        assert _parse_response(bytearray(whole[:cut]), False) is None
    parsed = _parse_response(bytearray(whole), False)
    assert parsed is not None and parsed[2] == b'{"chunked": "yes, in several pieces"}'
    assert parsed[3] == len(whole)

    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + _reply(b"{}")
    parsed = _parse_response(bytearray(interim), False)
    assert parsed is not None and parsed[:3] == (200, parsed[1], b"{}")

    until_close = b"HTTP/1.0 200 OK\r\n\r\n{}"
    assert _parse_response(bytearray(until_close), False) is None
    parsed = _parse_response(bytearray(until_close), True)
    assert parsed is not None and parsed[2] == b"{}" and parsed[4] is False

    closing = _reply(b"{}", extra="Connection: close\r\n")
    parsed = _parse_response(bytearray(closing), False)
    assert parsed is not None and parsed[4] is False


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2xx OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        # Digits to str.isdigit() but not to int() (the head is decoded as latin-1).
        "HTTP/1.1 200 OK\r\nContent-Length: 1\u00b2\r\n\r\n".encode("latin-1"),
        "HTTP/1.1 2\u00b20 OK\r\n\r\n".encode("latin-1"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
    ],
)
def test_parse_refuses_malformed_responses(raw: bytes) -> None:
    with pytest.raises(_MalformedResponse):
        _parse_response(bytearray(raw), False)


def test_parse_refuses_truncation_at_eof_and_huge_heads() -> None:
    with pytest.raises(_MalformedResponse):
        _parse_response(bytearray(_reply(b"{}")[:-1]), True)
    with pytest.raises(_MalformedResponse):
        _parse_response(bytearray(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000), False)


async def test_requests_are_well_formed_and_connections_kept_alive() -> None:
    async with (
        scripted(lambda request, n: _reply()) as (url, requests, connections),
        VaultClient(url, token="s.token") as client,
    ):
        for _ in range(3):
            assert await client.transit_encrypt("tessera-pan-x", [b"4242"]) == ["vault:v1:abc"]
        await client.health()
    assert connections == [1]
    head, _, body = requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/transit/encrypt/tessera-pan-x HTTP/1.1"
    assert {
        "X-Vault-Token: s.token",
        "X-Vault-Request: true",
        f"Content-Length: {len(body)}",
    } <= set(lines)
    assert orjson.loads(body) == {"batch_input": [{"plaintext": "NDI0Mg=="}]}
    assert requests[3].startswith(b"GET /v1/sys/health?standbycode=200&")
    assert b"Content-Length" not in requests[3]


async def test_chunked_and_closing_replies() -> None:
    def handler(request: bytes, n: int) -> bytes:
        return _chunked(OK_BODY) if n == 1 else _reply(extra="Connection: close\r\n")

    async with (
        scripted(handler) as (url, _, connections),
        VaultClient(url, token="t") as client,
    ):
        for _ in range(4):
            assert await client.transit_encrypt("k", [b"x"]) == ["vault:v1:abc"]
    assert connections == [2]  # kept after the chunked reply, closed after the "close" one


async def test_a_connection_closed_by_the_server_while_idle_is_replaced() -> None:
    def handler(request: bytes, n: int) -> bytes | None:
        return _reply() if n == 1 else None  # answers once per connection, then hangs up

    async with (
        scripted(handler) as (url, requests, connections),
        VaultClient(url, token="t") as client,
    ):
        for _ in range(3):
            assert await client.transit_encrypt("k", [b"x"]) == ["vault:v1:abc"]
            await asyncio.sleep(0.05)
    assert connections == [3]
    assert len(requests) == 5  # two requests met a closed connection and were sent again


async def test_no_answer_on_a_fresh_connection_and_garbage_are_unavailable() -> None:
    async with (
        scripted(lambda request, n: None) as (url, requests, _),
        VaultClient(url, token="t") as client,
    ):
        with pytest.raises(VaultUnavailableError) as caught:
            await client.transit_encrypt("k", [b"4111111111111111"])
    assert len(requests) == 1  # a fresh connection is not retried
    assert "4111111111111111" not in str(caught.value) and caught.value.__cause__ is None

    async with (
        scripted(lambda request, n: b"NOT HTTP\r\n\r\n") as (url, _, _),
        VaultClient(url, token="t") as client,
    ):
        with pytest.raises(VaultUnavailableError, match="_MalformedResponse"):
            await client.transit_encrypt("k", [b"x"])


async def test_a_silent_server_times_out() -> None:
    handlers: list[asyncio.Task[None]] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await reader.read(65536)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with VaultClient(f"http://127.0.0.1:{port}", token="t", timeout=0.3) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(VaultUnavailableError, match="TimeoutError"):
                await client.transit_encrypt("k", [b"x"])
            assert asyncio.get_running_loop().time() - started < 2
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_connections_are_capped_and_callers_queue() -> None:
    async with (
        scripted(lambda request, n: _reply()) as (url, requests, connections),
        VaultClient(url, token="t", max_connections=2) as client,
    ):
        results = await asyncio.gather(
            *(client.transit_encrypt("k", [b"%d" % i]) for i in range(20))
        )
    assert results == [["vault:v1:abc"]] * 20 and len(requests) == 20
    assert connections[0] <= 2


async def test_a_closed_client_refuses_calls() -> None:
    async with scripted(lambda request, n: _reply()) as (url, _, _):
        client = VaultClient(url, token="t")
        await client.transit_encrypt("k", [b"x"])
        await client.close()
        with pytest.raises(VaultUnavailableError, match="closed"):
            await client.transit_encrypt("k", [b"x"])


async def test_transports_of_other_event_loops_are_accepted() -> None:
    """uvloop's transports are not asyncio.Transport subclasses; only write/close are used."""

    class DuckTransport:
        def __init__(self) -> None:
            self.written: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def close(self) -> None:
            self.closed = True

    transport = DuckTransport()
    connection = _Connection()
    connection.connection_made(transport)  # type: ignore[arg-type]
    exchange = asyncio.ensure_future(connection.exchange(b"GET / HTTP/1.1\r\n\r\n"))
    await asyncio.sleep(0)
    connection.data_received(_reply(b"{}"))
    assert (await exchange)[0] == 200 and transport.written
    connection.close()
    assert transport.closed


def test_addresses_must_be_http_urls() -> None:
    with pytest.raises(ValueError):
        VaultClient("127.0.0.1:8200", token="t")
    client = VaultClient("https://vault.example:8443/prefix/", token="t")
    assert client._origin.tls and client._origin.port == 8443
    assert (
        client._origin.base_path == "/prefix" and client._origin.host_header == "vault.example:8443"
    )


@pytest.mark.parametrize("token", ["s.abc\r\nX-Injected: 1", "s.ab\u4e00c"])
async def test_a_malformed_token_is_refused_before_anything_is_sent(token: str) -> None:
    # Nothing listens on port 9: the refusal must come before any connection attempt, and its
    # text must not carry the token (a non-latin-1 one used to escape as UnicodeEncodeError,
    # whose ``object`` is the whole request head).
    async with VaultClient("http://127.0.0.1:9", token=token, timeout=0.3) as client:
        with pytest.raises(VaultPermissionDeniedError) as refused:
            await client.transit_encrypt("k", [b"x"])
    assert "s.ab" not in str(refused.value) and refused.value.__context__ is None
