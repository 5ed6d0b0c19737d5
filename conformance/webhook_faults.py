"""Webhooks for the kit: a loopback receiver, and the faults a provider's deliveries can have.

In simulator mode the kit passes its ``WebhookReceiver``'s URL to the simulator (``webhook_url``),
so the provider's own signed deliveries arrive as they would at the gateway. Scenarios then hand
them to the connector's ``verify_webhook`` / ``parse_webhook`` as delivered, and with the faults a
real network and a real attacker produce (``tamper_body``, ``tamper_signature``, ``delay``, and
duplicate or reordered delivery, which need no transformation: the same request twice, the list
reversed). Deliveries are recorded in cassettes with the time they arrived, so replay verifies
the signatures against that time and stays deterministic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from conformance.simulators import bound_port
from sdk import WebhookRequest

__all__ = [
    "WebhookReceiver",
    "delay",
    "delivery_from_json",
    "delivery_to_json",
    "tamper_body",
    "tamper_signature",
]


@dataclass
class WebhookReceiver:
    """Accepts every POST on loopback and keeps it as a ``WebhookRequest``."""

    deliveries: list[WebhookRequest] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append(WebhookRequest.of(dict(request.headers), body, time.time()))
        return web.Response(status=204)

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/webhooks", self._receive)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = bound_port(site)
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def tamper_body(delivery: WebhookRequest) -> WebhookRequest:
    """The same delivery with one byte of the body changed (a forged or corrupted payload)."""
    body = bytearray(delivery.body or b"{}")
    index = len(body) // 2
    body[index] = ord("0") if body[index] != ord("0") else ord("1")
    return replace(delivery, body=bytes(body))


def tamper_signature(delivery: WebhookRequest) -> WebhookRequest:
    """The same delivery with the last character of every signature-looking header changed."""
    headers = dict(delivery.headers)
    for name, value in delivery.headers.items():
        if "signature" in name or "hmac" in name or name.endswith("-sig"):
            last = value[-1:] or "0"
            headers[name] = value[:-1] + ("0" if last != "0" else "1")
    return replace(delivery, headers=headers)


def delay(delivery: WebhookRequest, seconds: float) -> WebhookRequest:
    """The same delivery arriving ``seconds`` later (a replay, or a stale retry)."""
    return replace(delivery, received_at=delivery.received_at + seconds)


_TRANSPORT_HEADERS = frozenset(
    {"host", "content-length", "connection", "user-agent", "accept", "accept-encoding"}
)


def delivery_to_json(delivery: WebhookRequest) -> dict[str, Any]:
    """A delivery for a cassette: the provider's headers and body, and when it arrived."""
    return {
        "headers": {
            k: v for k, v in delivery.headers.items() if k.lower() not in _TRANSPORT_HEADERS
        },
        "body": delivery.body.decode("utf-8", errors="replace"),
        "received_at": delivery.received_at,
    }


def delivery_from_json(data: dict[str, Any]) -> WebhookRequest:
    return WebhookRequest(
        headers={str(k).lower(): str(v) for k, v in data["headers"].items()},
        body=str(data["body"]).encode("utf-8"),
        received_at=float(data["received_at"]),
    )
