"""``POST /v1/webhooks/{connector}``: provider webhooks, verified by their connector.

No merchant API key: the connector verifies the provider's signature (timestamped HMAC or the
provider's scheme, replay window). Each event is processed once (``(connector, event id)`` is
recorded first; a failure to apply it forgets it again so the provider's redelivery runs), and
its reported state goes through the same state machine as a sync, so webhooks and syncs converge
and a duplicate or out-of-order event changes nothing twice.
"""

from __future__ import annotations

from aiohttp import web

from gateway.app import RESOURCES
from gateway.http import json_response, read_raw_body
from gateway.problems import HttpProblem
from normalization import TesseraError
from sdk.webhooks import WebhookRequest, WebhookVerificationError

__all__ = ["setup"]

_MAX_WEBHOOK_BYTES = 256 * 1024


async def receive_webhook(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    connector_id = request.match_info["connector"]
    if connector_id not in resources.pool:
        raise HttpProblem(404, "unknown_connector", "No such connector on this gateway.")
    # Bounded in size (chunked bodies too) and in time, like every other body: a provider, or
    # anyone posting here, cannot hold a connection open or buffer more than the limit.
    body = await read_raw_body(
        request,
        read_timeout=resources.settings.server.read_timeout,
        max_size=_MAX_WEBHOOK_BYTES,
    )
    runtime = resources.pool.runtime(connector_id)
    webhook = WebhookRequest.of(dict(request.headers), body)
    try:
        runtime.connector.verify_webhook(webhook, runtime.credentials)
        events = runtime.connector.parse_webhook(webhook)
    except WebhookVerificationError as exc:
        raise HttpProblem(400, exc.code, exc.detail) from None
    applied = 0
    for event in events:
        if not await resources.payment_store.record_webhook_event(connector_id, event.event_id):
            continue  # a duplicate: processed before
        try:
            if await resources.payments.apply_webhook_event(connector_id, event):
                applied += 1
        except TesseraError:
            await resources.payment_store.forget_webhook_event(connector_id, event.event_id)
            raise
    return json_response({"received": len(events), "applied": applied})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/webhooks/{connector}", receive_webhook)
