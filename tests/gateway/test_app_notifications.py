"""The app's notification dispatcher, as ``create_app`` wires it: it builds its own delivery
session (with ``[payments] allow_private_webhook_targets``), delivers what the outbox holds to a
merchant's receiver on loopback, and closes that session when the app's resources close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.payments import SIGNATURE_HEADER, verify_signature

from .conftest import MakeGateway


async def test_the_app_delivers_notifications_and_closes_its_delivery_session(
    make_gateway: MakeGateway, aiohttp_server: Callable[..., Awaitable[Any]]
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    connections: list[asyncio.BaseTransport] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        assert request.transport is not None
        connections.append(request.transport)
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    gw = await make_gateway(
        payments={"allow_private_webhook_targets": True, "outbox_interval_seconds": 0.05}
    )
    resources = gw.resources
    endpoint = await resources.merchants.set_webhook_endpoint(
        gw.merchant.id, str(server.make_url("/hook")), allow_http=True, allow_private=True
    )
    async with resources.db.transaction() as tx:
        event_id = await resources.outbox.enqueue(
            tx, gw.merchant.id, "payment.captured", {"id": "pay_1"}
        )
    async with asyncio.timeout(10):
        await arrived.wait()
    [(headers, body)] = received
    assert headers["Tessera-Event-Id"] == event_id
    verify_signature(endpoint.secret, headers[SIGNATURE_HEADER], body)
    [connection] = connections
    assert not connection.is_closing()  # kept alive in the dispatcher's pool

    await gw.client.close()  # the app's cleanup_ctx closes its resources
    async with asyncio.timeout(5):
        while not connection.is_closing():  # noqa: ASYNC110 - a transport has no event
            await asyncio.sleep(0.01)
