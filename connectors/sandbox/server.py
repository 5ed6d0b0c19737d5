"""The sandbox provider on HTTP: a stateful, in-memory test gateway for loopback use.

``create_app()`` builds the aiohttp application (entry point ``tessera.simulators: sandbox``);
``python -m connectors.sandbox.server --port P`` runs it standalone. It approves by default;
magic card numbers and amounts steer it (also served as JSON at ``GET /__sandbox/magic``)::

    card number        behaviour
    4242424242424242   approved (so is any other Luhn-valid, unexpired card)
    4000000000009995   declined insufficient_funds
    4000000000000002   declined do_not_honor
    4000000000000069   declined expired_card (so is any past expiry)
    4000000000000127   declined incorrect_cvc (so is a CVC that is not 3-4 digits)
    4000000000000135   declined invalid_card_number (so is a Luhn-invalid number)
    4100000000000019   declined fraud_suspected
    4000000000009987   declined lost_card            -> lost_or_stolen
    4000000000009979   declined stolen_card          -> lost_or_stolen
    4000000000000143   declined card_not_supported
    4000000000000150   declined limit_exceeded
    4000000000000168   declined authentication_required
    4000000000000176   declined restricted_card
    4000000000000119   declined processing_error
    4000000000000184   402 try_again_later: nothing recorded, retryable
    4000000000003220   3-D Secure: requires_action + redirect to /3ds/{id}
    4000000000000200   pending, settles authorized/captured after the settle delay
    4000000000000218   pending, settles declined do_not_honor after the settle delay

    amount (minor units, any currency, any request with an amount)
    99429   429 with Retry-After: 1, nothing done
    99500   500, nothing done
    99503   503 on the first request of an idempotency key, then served normally
    99408   done, then no reply for longer than any deadline (``hang_seconds``)
    99104   done, then the connection is reset without a reply (every time)
    99105   done, reset the first time; a retry with the same key gets the stored reply

API (``Authorization: Bearer <api_key>``, JSON; wire models in ``transformers.py``)::

    POST /v1/authorizations                      201 authorization | 402 declined | 4xx error
    GET  /v1/authorizations?reference=R          {"data": [authorization, ...]}
    GET  /v1/authorizations/{id}
    POST /v1/authorizations/{id}/captures        {"amount", "currency", "final"}
    POST /v1/authorizations/{id}/voids
    POST /v1/authorizations/{id}/refunds         {"amount", "currency", "reason"}
    POST /v1/verifications                       {"currency", "card"}
    GET  /3ds/{id}  (challenge page)   POST /3ds/{id}  outcome=authenticated|failed
                    -> 303 to return_url?authorization=ID&authentication=succeeded|failed

Every POST honours ``Idempotency-Key`` (same key and body: the stored reply, with
``Idempotent-Replayed: true``; different body: 422 ``idempotency_key_reused``).

Admin and inspection (no auth; loopback tooling for tests and the conformance kit)::

    GET  /__sandbox/health        GET /__sandbox/magic        GET /__sandbox/openapi.json
    GET  /__sandbox/charges       authorizations, their idempotency keys, times each key was seen
    GET  /__sandbox/requests      every API request: method, path, key, masked card, status
    GET  /__sandbox/events        webhooks emitted (body, signature, delivery attempts)
    POST /__sandbox/reset         forget everything
    POST /__sandbox/authorizations/{id}/settle   settle a pending authorization now

Webhooks (``authorization.<status>``, signed ``Sandbox-Signature: t=..,v1=..``) are emitted on
settlement, 3-D Secure completion, captures, voids and refunds, and POSTed to ``webhook_url``
when one is given. Card numbers are logged masked; the PAN is never stored or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any, TypeVar

import aiohttp
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError
from structlog.typing import FilteringBoundLogger
from yarl import URL

from connectors.sandbox.openapi import openapi_document
from connectors.sandbox.simulator import (
    FAULTS_BY_AMOUNT,
    MAGIC_AMOUNTS,
    MAGIC_CARDS,
    Authorization,
    Fault,
    IdempotencyStore,
    Ledger,
    Reply,
    SandboxRefusal,
    mask_card,
)
from connectors.sandbox.transformers import (
    WEBHOOK_SCHEME,
    AuthorizationCreate,
    CaptureCreate,
    RefundCreate,
    VerificationCreate,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_WEBHOOK_SECRET",
    "STATE",
    "SandboxState",
    "create_app",
    "main",
]

DEFAULT_API_KEY = "sk_sandbox_tessera_local"
DEFAULT_WEBHOOK_SECRET = "whsec_sandbox_tessera_local"  # noqa: S105 - a public sandbox default

#: Sees every API request's method, path and raw body (tests use it to prove the PAN arrived).
RequestObserver = Callable[[str, str, bytes], None]

_LOGGER: FilteringBoundLogger = structlog.get_logger("tessera.sandbox")
_MAX_BODY = 64 * 1024
_KEPT = 10_000


@dataclass
class SandboxState:
    """Everything one sandbox app holds (``app[STATE]``)."""

    api_key: str
    webhook_secret: str
    webhook_url: str | None
    hang_seconds: float
    ledger: Ledger
    idempotency: IdempotencyStore
    observer: RequestObserver | None = None
    # Bounded: a long `tessera dev` session or a benchmark must not grow the simulator forever.
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_KEPT))
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_KEPT))
    faulted_once: set[bytes] = field(default_factory=set)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    def reset(self) -> None:
        self.ledger.reset()
        self.idempotency.reset()
        self.requests.clear()
        self.events.clear()
        self.faulted_once.clear()

    # -- webhooks ---------------------------------------------------------------------------------

    def emit(self, auth: Authorization) -> None:
        event = {
            "id": f"evt_{base64.b32encode(secrets.token_bytes(15)).decode().lower()}",
            "type": f"authorization.{auth.status}",
            "created": int(time.time()),
            "data": auth.view(),
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        record: dict[str, Any] = {
            "id": event["id"],
            "type": event["type"],
            "body": body.decode(),
            "signature": WEBHOOK_SCHEME.sign(self.webhook_secret, body),
            "delivery_attempts": 0,
            "delivered": False,
        }
        self.events.append(record)
        if self.webhook_url is not None:
            task = asyncio.get_running_loop().create_task(self._deliver(record, body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _deliver(self, record: dict[str, Any], body: bytes) -> None:
        assert self.webhook_url is not None
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        for attempt in range(3):
            record["delivery_attempts"] = attempt + 1
            # Signed at each attempt, so a late retry is not refused as stale.
            headers = {
                "Content-Type": "application/json",
                WEBHOOK_SCHEME.header: WEBHOOK_SCHEME.sign(self.webhook_secret, body),
            }
            try:
                async with self.session.post(self.webhook_url, data=body, headers=headers) as r:
                    if r.status < 300:
                        record["delivered"] = True
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                _LOGGER.info("sandbox_webhook_failed", error=type(exc).__name__)
            await asyncio.sleep(0.2 * 2**attempt)

    def schedule_settlement(self, auth: Authorization) -> None:
        if auth.settles_at is None:
            return
        delay = max(auth.settles_at - self.ledger.clock(), 0.0)
        loop = asyncio.get_running_loop()
        self.timers.append(loop.call_later(delay, self.ledger.settle_due))


STATE = web.AppKey("sandbox_state", SandboxState)


# -- plumbing -------------------------------------------------------------------------------------


def _json(reply: Reply, **headers: str) -> web.Response:
    return web.json_response(reply.body, status=reply.status, headers=headers or None)


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], payload: object) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError:
        # The input is never echoed: it may hold a PAN.
        raise SandboxRefusal(400, "invalid_request", "The request body is malformed.") from None


def _reset_connection(request: web.Request) -> None:
    """Close with RST, without a reply: the client sees a reset after it sent everything."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


Handler = Callable[[SandboxState, web.Request, Any], Reply]


async def _api_call(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The pipeline of every API POST: auth, log, faults, idempotency, the handler, faults."""
    state = request.app[STATE]
    entry: dict[str, Any] = {"method": request.method, "path": request.path, "status": None}
    state.requests.append(entry)
    if request.headers.get("Authorization") != f"Bearer {state.api_key}":
        entry["status"] = 401
        return _json(SandboxRefusal(401, "unauthorized", "Invalid API key.").reply())
    body = await request.read()
    if state.observer is not None:
        state.observer(request.method, request.path, body)
    try:
        payload = json.loads(body) if body else {}
    except ValueError:
        payload = None
    card = payload.get("card") if isinstance(payload, dict) else None
    amount = payload.get("amount") if isinstance(payload, dict) else None
    key = request.headers.get("Idempotency-Key")
    entry.update(
        idempotency_key=key,
        card=mask_card(card.get("number")) if isinstance(card, dict) else None,
        amount=amount if isinstance(amount, int) else None,
    )
    _LOGGER.debug(
        "sandbox_request",
        method=request.method,
        path=request.path,
        card=entry["card"],
        idempotency_key=key,
    )
    if key:
        state.idempotency.seen[key] += 1
    fault = FAULTS_BY_AMOUNT.get(amount) if type(amount) is int else None
    fingerprint = state.idempotency.fingerprint(request.method, request.path, body)
    first_time = (key.encode() if key else fingerprint) not in state.faulted_once
    if fault in (Fault.UNAVAILABLE_ONCE, Fault.RESET_ONCE):
        state.faulted_once.add(key.encode() if key else fingerprint)
    if fault is Fault.THROTTLE:
        entry["status"] = 429
        reply = SandboxRefusal(429, "rate_limited", "Slow down.").reply()
        return _json(reply, **{"Retry-After": "1"})
    if fault is Fault.SERVER_ERROR or (fault is Fault.UNAVAILABLE_ONCE and first_time):
        status = 500 if fault is Fault.SERVER_ERROR else 503
        entry["status"] = status
        return _json(SandboxRefusal(status, "server_error", "The sandbox failed.").reply())

    replayed = False
    try:
        stored = state.idempotency.replay(key, fingerprint) if key else None
        if stored is not None:
            reply, replayed = stored, True
        else:
            if payload is None:
                raise SandboxRefusal(400, "invalid_request", "The body is not JSON.")
            reply = handler(state, request, payload)
            if key:
                state.idempotency.store(key, fingerprint, reply)
    except SandboxRefusal as refusal:
        reply = refusal.reply()
    entry["status"] = reply.status

    if fault is Fault.HANG:
        entry["status"] = "hang"
        try:
            async with asyncio.timeout(state.hang_seconds):
                await state.closing.wait()
        except TimeoutError:
            pass
    if fault is Fault.RESET or (fault is Fault.RESET_ONCE and first_time):
        entry["status"] = "reset"
        _reset_connection(request)
        return web.Response(status=204)  # never written: the transport is gone
    return _json(reply, **({"Idempotent-Replayed": "true"} if replayed else {}))


# -- API handlers ---------------------------------------------------------------------------------


def _create_authorization(state: SandboxState, request: web.Request, payload: Any) -> Reply:
    wire = _parse(AuthorizationCreate, payload)
    key = request.headers.get("Idempotency-Key")
    reply = state.ledger.authorize(wire, idempotency_key=key, base_url=_base_url(request))
    auth = state.ledger.authorizations.get(str(reply.body.get("id")))
    if auth is not None:
        state.schedule_settlement(auth)
    return reply


def _capture(state: SandboxState, request: web.Request, payload: Any) -> Reply:
    return state.ledger.capture(request.match_info["id"], _parse(CaptureCreate, payload))


def _void(state: SandboxState, request: web.Request, payload: Any) -> Reply:
    return state.ledger.void(request.match_info["id"])


def _refund(state: SandboxState, request: web.Request, payload: Any) -> Reply:
    return state.ledger.refund(request.match_info["id"], _parse(RefundCreate, payload))


def _verify(state: SandboxState, request: web.Request, payload: Any) -> Reply:
    return state.ledger.verify(_parse(VerificationCreate, payload))


def _post(handler: Handler) -> Callable[[web.Request], Any]:
    async def view(request: web.Request) -> web.StreamResponse:
        return await _api_call(request, handler)

    return view


def _authorized(request: web.Request) -> web.Response | None:
    state = request.app[STATE]
    state.requests.append({"method": request.method, "path": request.path, "status": None})
    if request.headers.get("Authorization") != f"Bearer {state.api_key}":
        state.requests[-1]["status"] = 401
        return _json(SandboxRefusal(401, "unauthorized", "Invalid API key.").reply())
    return None


async def get_authorization(request: web.Request) -> web.StreamResponse:
    refused = _authorized(request)
    if refused is not None:
        return refused
    state = request.app[STATE]
    try:
        reply = Reply(200, state.ledger.get(request.match_info["id"]).view())
    except SandboxRefusal as refusal:
        reply = refusal.reply()
    state.requests[-1]["status"] = reply.status
    return _json(reply)


async def list_authorizations(request: web.Request) -> web.StreamResponse:
    refused = _authorized(request)
    if refused is not None:
        return refused
    state = request.app[STATE]
    reference = request.query.get("reference")
    state.ledger.settle_due()
    if reference is None:
        found = list(state.ledger.authorizations.values())
    else:
        found = state.ledger.find(reference)
    state.requests[-1]["status"] = 200
    return web.json_response({"data": [auth.view() for auth in found]})


# -- 3-D Secure -----------------------------------------------------------------------------------

_CHALLENGE_PAGE = """<!doctype html><html><head><title>Sandbox 3-D Secure</title></head><body>
<h1>Sandbox 3-D Secure</h1><p>Authorization {id}: {amount} minor units of {currency}.</p>
<form method="post"><button name="outcome" value="authenticated">Authenticate</button>
<button name="outcome" value="failed">Fail authentication</button></form></body></html>"""


async def challenge_page(request: web.Request) -> web.StreamResponse:
    try:
        auth = request.app[STATE].ledger.get(request.match_info["id"])
    except SandboxRefusal as refusal:
        return _json(refusal.reply())
    page = _CHALLENGE_PAGE.format(
        id=escape(auth.id), amount=auth.amount, currency=escape(auth.currency)
    )
    return web.Response(text=page, content_type="text/html")


async def complete_challenge(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    succeeded = form.get("outcome", "authenticated") != "failed"
    try:
        auth = request.app[STATE].ledger.authenticate(request.match_info["id"], succeeded=succeeded)
    except SandboxRefusal as refusal:
        return _json(refusal.reply())
    if auth.return_url:
        target = URL(auth.return_url).update_query(
            authorization=auth.id, authentication="succeeded" if succeeded else "failed"
        )
        raise web.HTTPSeeOther(location=str(target))
    return web.json_response(auth.view())


# -- admin ----------------------------------------------------------------------------------------


async def admin_health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def admin_magic(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {
            "cards": [asdict(card) for card in MAGIC_CARDS],
            "amounts": [asdict(magic) for magic in MAGIC_AMOUNTS],
        }
    )


async def admin_openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document())


async def admin_charges(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.ledger.settle_due()
    seen = state.idempotency.seen
    charges = [
        {
            **auth.view(),
            "idempotency_key": auth.idempotency_key,
            "key_seen": seen[auth.idempotency_key] if auth.idempotency_key else 0,
        }
        for auth in state.ledger.authorizations.values()
    ]
    return web.json_response({"charges": charges, "idempotency_keys": dict(state.idempotency.seen)})


async def admin_requests(request: web.Request) -> web.StreamResponse:
    return web.json_response({"requests": list(request.app[STATE].requests)})


async def admin_events(request: web.Request) -> web.StreamResponse:
    return web.json_response({"events": list(request.app[STATE].events)})


async def admin_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return web.json_response({"status": "reset"})


async def admin_settle(request: web.Request) -> web.StreamResponse:
    ledger = request.app[STATE].ledger
    auth_id = request.match_info["id"]
    ledger.settle_due(force=auth_id)
    try:
        return web.json_response(ledger.get(auth_id).view())
    except SandboxRefusal as refusal:
        return _json(refusal.reply())


# -- the app --------------------------------------------------------------------------------------


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    state = app[STATE]
    for timer in state.timers:
        timer.cancel()
    for task in list(state.tasks):
        task.cancel()
    if state.tasks:
        await asyncio.gather(*state.tasks, return_exceptions=True)
    if state.session is not None:
        await state.session.close()


async def _wake_hanging(app: web.Application) -> None:
    app[STATE].closing.set()  # hanging replies end at shutdown instead of holding it up


def create_app(
    *,
    webhook_url: str | None = None,
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
    api_key: str = DEFAULT_API_KEY,
    settle_delay: float = 1.0,
    hang_seconds: float = 600.0,
    idempotency_retention_seconds: float = 86400.0,
    request_observer: RequestObserver | None = None,
) -> web.Application:
    """The sandbox provider as an aiohttp app; see the module docstring."""
    app = web.Application(client_max_size=_MAX_BODY)
    state = SandboxState(
        api_key=api_key,
        webhook_secret=webhook_secret,
        webhook_url=webhook_url,
        hang_seconds=hang_seconds,
        ledger=Ledger(settle_delay=settle_delay),
        idempotency=IdempotencyStore(retention_seconds=idempotency_retention_seconds),
        observer=request_observer,
    )
    state.ledger.on_change = state.emit
    app[STATE] = state
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_wake_hanging)
    routes = [
        web.post("/v1/authorizations", _post(_create_authorization)),
        web.get("/v1/authorizations", list_authorizations),
        web.get("/v1/authorizations/{id}", get_authorization),
        web.post("/v1/authorizations/{id}/captures", _post(_capture)),
        web.post("/v1/authorizations/{id}/voids", _post(_void)),
        web.post("/v1/authorizations/{id}/refunds", _post(_refund)),
        web.post("/v1/verifications", _post(_verify)),
        web.get("/3ds/{id}", challenge_page),
        web.post("/3ds/{id}", complete_challenge),
        web.get("/__sandbox/health", admin_health),
        web.get("/__sandbox/magic", admin_magic),
        web.get("/__sandbox/openapi.json", admin_openapi),
        web.get("/__sandbox/charges", admin_charges),
        web.get("/__sandbox/requests", admin_requests),
        web.get("/__sandbox/events", admin_events),
        web.post("/__sandbox/reset", admin_reset),
        web.post("/__sandbox/authorizations/{id}/settle", admin_settle),
    ]
    app.add_routes(routes)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m connectors.sandbox.server [--host H] [--port P] ...``"""
    parser = argparse.ArgumentParser(description="Run the Tessera sandbox provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET)
    parser.add_argument("--settle-delay", type=float, default=1.0)
    args = parser.parse_args(argv)
    app = create_app(
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        api_key=args.api_key,
        settle_delay=args.settle_delay,
    )
    web.run_app(app, host=args.host, port=args.port, access_log=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
