"""The two network transports (``HttpSettings.network``): the same guarantees, checked on both.

The aiohttp transport is the default; the httpcore one stays selectable. Every property the
egress path relies on is exercised against real loopback sockets on each: the ``not_sent`` /
``unknown`` line (refused, reset after the request was written, a wait for a pooled connection
vs a read that timed out), TLS refusals, internal addresses refused at connect time, redirects,
the size limit and inflation, no silent resend of a request, no cookies, the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import warnings
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from aiohttp import web

from normalization import CardMethod
from sdk import (
    CallContext,
    Credentials,
    Deadline,
    DestinationRefusedError,
    HostPolicy,
    HttpSettings,
    ResponseTooLargeError,
    UnexpectedRedirectError,
    build_http_client,
)
from sdk.aiohttp_transport import AiohttpNetworkTransport, httpcore_patched
from sdk.egress import SendTracker
from sdk.http import ProviderClient, network_transport
from sdk.outcomes import OutcomeUnknownError, RequestNotSentError
from sdk.testing import FakeTokenRevealer
from tests.sdk.conftest import API_KEY, TENANT
from tests.sdk.demo_connector import MANIFEST
from tests.sdk.loopback import (
    LoopbackProvider,
    RawServer,
    raw_server,
    read_request,
    reset,
    unused_port,
)
from tests.sdk.pki import Pki, server_context

NETWORKS = ["aiohttp", "httpcore"]
LOOPBACK = HostPolicy(frozenset({"127.0.0.1"}), test_mode=True)


@pytest.fixture(params=NETWORKS)
def network(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def clients() -> AsyncIterator[list[ProviderClient]]:
    made: list[ProviderClient] = []
    yield made
    for client in made:
        await client.aclose()


def client(
    clients: list[ProviderClient], network: str, policy: HostPolicy = LOOPBACK, **settings: Any
) -> ProviderClient:
    made = build_http_client(policy, HttpSettings(network=network, **settings))
    clients.append(made)
    return made


def context(
    http: httpx.AsyncClient,
    base_url: str,
    *,
    seconds: float = 5,
    revealer: FakeTokenRevealer | None = None,
) -> CallContext:
    return CallContext(
        manifest=MANIFEST,
        operation="authorize",
        tenant=TENANT,
        deadline=Deadline.after(seconds),
        http=http,
        base_url=base_url,
        credentials=Credentials({"api_key": API_KEY}),
        revealer=revealer,
    )


async def answer_ok(state: RawServer, reader, writer) -> None:
    state.bodies.append(await read_request(reader))
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    )
    await writer.drain()


# -- settings -------------------------------------------------------------------------------------


def test_network_setting() -> None:
    assert isinstance(network_transport(HttpSettings()), AiohttpNetworkTransport)
    assert not isinstance(
        network_transport(HttpSettings(network="httpcore")), AiohttpNetworkTransport
    )
    # aiohttp speaks HTTP/1.1 only: HTTP/2 takes the httpcore transport
    assert not isinstance(network_transport(HttpSettings(http2=True)), AiohttpNetworkTransport)
    with pytest.raises(ValueError, match="network"):
        HttpSettings(network="curl")


# -- the bytes on the wire ------------------------------------------------------------------------


async def test_the_wire_request_is_the_same_on_both_networks(clients) -> None:
    server = await raw_server(answer_ok)
    heads: dict[str, list[bytes]] = {}
    try:
        for name in NETWORKS:
            ctx = context(client(clients, name), server.url)
            await ctx.send("POST", "/raw?x=1", content=b"abc", headers={"X-Custom": "v"})
            await ctx.send("POST", "/json", json={"a": "é"})
            await ctx.send("GET", "/get", params={"q": "a b"})
            heads[name] = list(server.bodies)
            server.bodies.clear()
    finally:
        await server.close()

    def normalized(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
        head, _, body = raw.partition(b"\r\n\r\n")
        line, *fields = head.split(b"\r\n")
        return line, sorted(f.lower() for f in fields), body

    aiohttp_side = [normalized(r) for r in heads["aiohttp"]]
    assert aiohttp_side == [normalized(r) for r in heads["httpcore"]]
    line, fields, body = aiohttp_side[0]
    assert line == b"POST /raw?x=1 HTTP/1.1" and body == b"abc"
    assert not any(f.startswith(b"content-type") for f in fields)  # nothing added by aiohttp
    assert b"user-agent: tessera-sdk/0.1" in fields
    assert json.loads(aiohttp_side[1][2]) == {"a": "é"}


async def test_card_data_is_detokenized_on_the_wire(clients, network, canary, revealer) -> None:
    token, pan, cvc = canary
    server = await raw_server(answer_ok)
    try:
        ctx = context(client(clients, network), server.url, revealer=revealer)
        card = ctx.card(CardMethod(token=token))
        response = await ctx.send("POST", "/p", json={"n": card.number, "c": card.cvc})
    finally:
        await server.close()
    head, _, body = server.bodies[0].partition(b"\r\n\r\n")
    assert json.loads(body) == {"n": pan, "c": cvc}
    assert f"content-length: {len(body)}".encode() in head.lower()
    # what the connector can reach holds placeholders only
    assert pan.encode() not in response.request.content
    assert response.elapsed.total_seconds() > 0


async def test_a_streamed_body_is_detokenized_with_one_framing(
    clients, network, canary, revealer
) -> None:
    """A streamed body (``Transfer-Encoding: chunked`` as httpx builds it) with card data is
    re-framed as a whole one: ``Content-Length`` only, never beside ``Transfer-Encoding``."""
    token, pan, _ = canary
    server = await raw_server(answer_ok)
    try:
        ctx = context(client(clients, network), server.url, revealer=revealer)
        card = ctx.card(CardMethod(token=token))

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"n": "'
            yield card.number.encode()
            yield b'"}'

        await ctx.send("POST", "/p", content=chunks(), headers={"Content-Type": "application/json"})
    finally:
        await server.close()
    head, _, body = server.bodies[0].partition(b"\r\n\r\n")
    assert json.loads(body) == {"n": pan}
    fields = head.lower().split(b"\r\n")[1:]
    assert f"content-length: {len(body)}".encode() in fields
    assert not any(f.startswith(b"transfer-encoding") for f in fields)


# -- not_sent vs unknown --------------------------------------------------------------------------


async def test_connection_refused_is_not_sent(clients, network) -> None:
    ctx = context(client(clients, network), f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(RequestNotSentError):
        await ctx.send("POST", "/p", json={})
    assert ctx.network_attempted and not ctx.may_have_reached_provider


async def test_reset_after_the_request_was_written_is_unknown(clients, network) -> None:
    async def read_then_reset(state: RawServer, reader, writer) -> None:
        state.bodies.append(await read_request(reader))
        reset(writer)

    server = await raw_server(read_then_reset)
    try:
        ctx = context(client(clients, network), server.url)
        with pytest.raises(OutcomeUnknownError):
            await ctx.send("POST", "/p", json={"amount": 1})
    finally:
        await server.close()
    assert ctx.may_have_reached_provider
    assert len(server.bodies) == 1


async def test_waiting_for_a_pooled_connection_times_out_as_not_sent(clients, network) -> None:
    released = asyncio.Event()

    async def hang(state: RawServer, reader, writer) -> None:
        state.bodies.append(await read_request(reader))
        await released.wait()

    server = await raw_server(hang)
    http = client(clients, network, max_connections=1)
    first = asyncio.create_task(context(http, server.url).send("POST", "/first", json={}))
    try:
        while not server.bodies:  # noqa: ASYNC110 - the raw server has no event to wait on
            await asyncio.sleep(0.01)
        second = context(http, server.url, seconds=0.3)
        with pytest.raises(RequestNotSentError):
            await second.send("POST", "/second", json={})
        # httpcore emits no trace event while waiting for the pool, so the call cannot tell it
        # never got near the provider (conservative); the aiohttp transport says so from the start
        assert second.may_have_reached_provider is (network == "httpcore")
    finally:
        first.cancel()
        released.set()
        await asyncio.gather(first, return_exceptions=True)
        await server.close()
    assert server.connections == 1 and len(server.bodies) == 1


async def test_a_read_timeout_after_sending_is_unknown(clients, network) -> None:
    released = asyncio.Event()

    async def hang(state: RawServer, reader, writer) -> None:
        state.bodies.append(await read_request(reader))
        await released.wait()

    server = await raw_server(hang)
    try:
        ctx = context(client(clients, network), server.url, seconds=0.3)
        with pytest.raises(OutcomeUnknownError):
            await ctx.send("POST", "/p", json={})
    finally:
        released.set()
        await server.close()
    assert ctx.may_have_reached_provider


async def test_a_request_is_never_resent_on_a_fresh_connection(clients, network) -> None:
    """The server reads a request on a kept-alive connection, then closes it without answering:
    the provider may have acted, so the (idempotent-looking) PUT must not go out again."""

    async def answer_once_then_drop(state: RawServer, reader, writer) -> None:
        state.bodies.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        state.bodies.append(await read_request(reader))
        writer.close()

    server = await raw_server(answer_once_then_drop)
    try:
        http = client(clients, network)
        await context(http, server.url).send("PUT", "/refunds/r1", json={})
        ctx = context(http, server.url)
        with pytest.raises(OutcomeUnknownError):
            await ctx.send("PUT", "/refunds/r1", json={})
    finally:
        await server.close()
    assert len(server.bodies) == 2 and server.connections == 1


async def test_trace_events_mark_the_start_of_writing(clients, network) -> None:
    server = await raw_server(answer_ok)
    try:
        http = client(clients, network)
        sent = context(http, server.url)
        await sent.send("GET", "/p")
        refused = context(http, f"http://127.0.0.1:{unused_port()}")
        with pytest.raises(RequestNotSentError):
            await refused.send("GET", "/p")
    finally:
        await server.close()
    [ok] = sent._scope.trackers
    [failed] = refused._scope.trackers
    assert ok.write_state is True
    assert failed.events_seen and failed.write_state is False


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_is_verified_on_both_networks(clients, network, pki: Pki) -> None:
    policy = HostPolicy(frozenset({"localhost"}), test_mode=True)
    good_cert, good_key = pki.leaf(f"good-{network}", ["localhost"])
    bad_cert, bad_key = pki.leaf(f"self-{network}", ["localhost"], self_signed=True)
    wrong_cert, wrong_key = pki.leaf(f"wrong-{network}", ["provider.other.example"])
    servers = [
        await LoopbackProvider().start(server_context(cert, key))
        for cert, key in ((good_cert, good_key), (bad_cert, bad_key), (wrong_cert, wrong_key))
    ]
    try:
        http = client(clients, network, policy, ca_bundle=pki.ca_file)
        good, self_signed, wrong_host = (f"https://localhost:{s.port}" for s in servers)
        response = await context(http, good).send("GET", "/p")
        assert response.status_code == 200
        for url in (self_signed, wrong_host):
            ctx = context(http, url)
            with pytest.raises(RequestNotSentError):
                await ctx.send("POST", "/p", json={})
            assert not ctx.may_have_reached_provider
    finally:
        for server in servers:
            await server.close()
    assert len(servers[0].requests) == 1
    assert servers[1].requests == [] and servers[2].requests == []


# -- destinations ---------------------------------------------------------------------------------


async def test_internal_addresses_are_refused_at_connect_time(clients, network, provider) -> None:
    # "localhost" is allowlisted, but resolves to loopback: refused when resolving.
    http = client(clients, network, HostPolicy(frozenset({"localhost"}), test_mode=False))
    with pytest.raises(DestinationRefusedError, match="loopback"):
        await http.get(f"https://localhost:{provider.port}/p")
    # The network transport alone (no egress transport above it) checks IP literals too.
    settings = HttpSettings(network=network)
    strict = network_transport(settings, test_mode=False)
    lenient = network_transport(settings, test_mode=True)
    try:
        with pytest.raises(DestinationRefusedError):
            await strict.handle_async_request(httpx.Request("GET", f"{provider.url}/p"))
        with pytest.raises(DestinationRefusedError):
            await lenient.handle_async_request(httpx.Request("GET", "http://169.254.169.254/"))
    finally:
        await strict.aclose()
        await lenient.aclose()
    assert provider.requests == []


async def test_redirects_are_not_followed(clients, network, provider) -> None:
    elsewhere = await LoopbackProvider().start()
    try:

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(f"{elsewhere.url}/payments")

        provider.handler = redirect
        with pytest.raises(UnexpectedRedirectError):
            await context(client(clients, network), provider.url).send("POST", "/p", json={})
    finally:
        await elsewhere.close()
    assert elsewhere.requests == [] and len(provider.requests) == 1


# -- replies --------------------------------------------------------------------------------------


async def test_size_limit_and_inflation(clients, network, provider) -> None:
    replies = iter(
        [
            web.Response(body=b"x" * 5000),
            web.Response(
                body=gzip.compress(b"0" * 1_000_000), headers={"Content-Encoding": "gzip"}
            ),
            web.Response(body=gzip.compress(b'{"ok": 1}'), headers={"Content-Encoding": "gzip"}),
            web.Response(body=zlib.compress(b'{"ok": 2}'), headers={"Content-Encoding": "deflate"}),
        ]
    )

    async def reply(request: web.Request) -> web.StreamResponse:
        return next(replies)

    provider.handler = reply
    ctx = context(client(clients, network, max_response_bytes=1000), provider.url)
    with pytest.raises(ResponseTooLargeError):
        await ctx.send("GET", "/big")
    with pytest.raises(ResponseTooLargeError):
        await ctx.send("GET", "/bomb")
    assert (await ctx.send("GET", "/gzip")).json() == {"ok": 1}
    deflated = await ctx.send("GET", "/deflate")
    assert deflated.json() == {"ok": 2} and "content-encoding" not in deflated.headers


async def test_chunked_reply_is_read_whole(clients, network) -> None:
    async def chunked(state: RawServer, reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b'{"a"', b": 1}"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await raw_server(chunked)
    try:
        response = await context(client(clients, network), server.url).send("GET", "/p")
    finally:
        await server.close()
    assert response.json() == {"a": 1}


async def test_a_truncated_reply_is_unknown(clients, network) -> None:
    async def truncate(state: RawServer, reader, writer) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"a"')
        await writer.drain()
        writer.close()

    server = await raw_server(truncate)
    try:
        ctx = context(client(clients, network), server.url)
        with pytest.raises(OutcomeUnknownError):
            await ctx.send("GET", "/p")
    finally:
        await server.close()


async def test_a_malformed_reply_echoing_a_card_leaves_it_out_of_the_error() -> None:
    # aiohttp's parser errors quote the offending bytes; the mapped error names the class only.
    async def echo(state: RawServer, reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Card: 4242424242424242\x00\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await raw_server(echo)
    transport = network_transport(HttpSettings(), test_mode=True)
    try:
        request = httpx.Request("GET", f"{server.url}/p")
        with pytest.raises(httpx.TransportError) as failed:
            await transport.handle_async_request(request)
        assert "4242" not in str(failed.value)
    finally:
        await transport.aclose()
        await server.close()


async def test_provider_cookies_are_not_kept(clients, network) -> None:
    async def set_cookie(state: RawServer, reader, writer) -> None:
        for _ in range(2):
            state.bodies.append(await read_request(reader))
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=tenant-a\r\nContent-Length: 0\r\n\r\n"
            )
            await writer.drain()

    server = await raw_server(set_cookie)
    try:
        http = client(clients, network)
        await context(http, server.url).send("GET", "/a")
        await context(http, server.url).send("GET", "/b")
    finally:
        await server.close()
    assert b"cookie" not in server.bodies[1].lower()


async def test_many_calls_in_flight_share_a_small_pool(clients, network, provider) -> None:
    http = client(clients, network, max_connections=4)
    replies = await asyncio.gather(
        *(context(http, provider.url).send("POST", f"/p/{i}", json={"i": i}) for i in range(32))
    )
    assert [r.json()["status"] for r in replies] == ["authorized"] * 32
    assert len(provider.requests) == 32


async def test_a_reader_cancelled_mid_body_leaks_no_connection() -> None:
    """A wrapper transport (like the kit's traffic tap) that stops reading when its task is
    cancelled and never closes the response must not leave an unclosed aiohttp connection."""

    async def trickle(state: RawServer, reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await raw_server(trickle)
    transport = network_transport(test_mode=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            async def careless_read() -> None:
                response = await transport.handle_async_request(
                    httpx.Request("GET", f"{server.url}/p")
                )
                async for _ in response.aiter_raw():
                    pass

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await careless_read()
            gc.collect()
            await asyncio.sleep(0)
    finally:
        await transport.aclose()
        await server.close()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# -- test doubles ---------------------------------------------------------------------------------


async def test_respx_still_intercepts_under_the_egress_transport(clients, canary, revealer) -> None:
    token, pan, _ = canary
    http = client(clients, "aiohttp")
    assert not httpcore_patched()
    with respx.mock(assert_all_called=True) as router:
        assert httpcore_patched()
        route = router.post("http://127.0.0.1:9/payments").respond(json={"id": "pay_1"})
        ctx = context(http, "http://127.0.0.1:9", revealer=revealer)
        card = ctx.card(CardMethod(token=token))
        response = await ctx.send("POST", "/payments", json={"number": card.number})
    assert response.json() == {"id": "pay_1"}
    assert json.loads(route.calls.last.request.content) == {"number": pan}  # egress ran
    assert not httpcore_patched()


async def test_elapsed_is_set_whatever_the_transport() -> None:
    """``ProviderClient``'s short send sets ``elapsed`` as httpx's own send would, for any
    transport, not only the egress transport."""
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    async with ProviderClient(transport=transport, trust_env=False) as http:
        response = await http.get("http://127.0.0.1:9/x")
    assert response.elapsed.total_seconds() > 0


async def test_mock_inner_transport(canary, revealer) -> None:
    token, pan, _ = canary
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True})

    http = build_http_client(LOOPBACK, inner_transport=httpx.MockTransport(handler))
    try:
        ctx = context(http, "http://127.0.0.1:9", revealer=revealer)
        card = ctx.card(CardMethod(token=token))
        response = await ctx.send("POST", "/p", json={"n": card.number})
    finally:
        await http.aclose()
    assert response.status_code == 201 and response.json() == {"ok": True}
    assert json.loads(seen[0].content) == {"n": pan}
    assert isinstance(ctx._scope.trackers[0], SendTracker)
