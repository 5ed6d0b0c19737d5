"""The aiohttp application factory.

``create_app(settings)`` builds the app; one ``cleanup_ctx`` generator opens every resource
(database, stores, Vault client and batcher, tokenization service, background sweeper) in order
and closes them in reverse. Views are thin: they parse, call a service, and return JSON; domain
errors become problem+json in ``gateway_middleware`` and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, NoReturn

import structlog
from aiohttp import web
from pydantic import ValidationError

from gateway.config import ConfigError, Settings
from gateway.connector_pool import ConnectorPool, VaultRevealer
from gateway.merchants import ApiKeyCache, AuthFailureLimiter, Merchant, MerchantStore
from gateway.observability import GatewayMetrics, method_label, multiprocess_metrics
from gateway.payment_service import PaymentService
from gateway.payments import (
    IdempotencyStore,
    NotificationDispatcher,
    Outbox,
    PaymentStore,
    ReconcilePolicy,
)
from gateway.problems import HttpProblem, problem_response, status_for, validation_problem
from gateway.reconciliation import run_reconciler
from gateway.routing import Router
from gateway.secrets import idempotency_fingerprint_key
from gateway.tracing import current_tracer, span
from normalization.errors import TesseraError, VaultError, VaultPermissionDeniedError
from sdk import ConnectorMetrics
from vault.audit import AuditLog
from vault.batcher import TransitBatcher
from vault.client import AppRoleCredentials, VaultClient
from vault.cvv import CvvHolder
from vault.database import PostgresDatabase, SqliteDatabase, open_database
from vault.envelope import EnvelopeCipher
from vault.token_store import TokenStore
from vault.tokenization import TokenizationService

__all__ = ["IN_FLIGHT", "MERCHANT", "RESOURCES", "InFlight", "Resources", "create_app"]

log = structlog.get_logger("tessera.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Resources:
    """Everything the views use, opened once per process."""

    settings: Settings
    metrics: GatewayMetrics
    db: SqliteDatabase | PostgresDatabase
    merchants: MerchantStore
    api_keys: ApiKeyCache
    auth_limiter: AuthFailureLimiter
    vault: VaultClient
    batcher: TransitBatcher
    token_store: TokenStore
    audit: AuditLog
    cvv: CvvHolder
    tokens: TokenizationService
    payment_store: PaymentStore
    idempotency: IdempotencyStore
    outbox: Outbox
    pool: ConnectorPool
    payments: PaymentService


class InFlight:
    """How many requests the gateway middleware is handling right now (``count``).

    Counted in the one middleware rather than in a layer of its own (a coroutine frame per
    request): ``gateway.server`` waits for it to reach 0 before the app's resources close.
    """

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        #: Set by the middleware when ``count`` falls to 0, only while someone waits for that.
        self.idle: asyncio.Event | None = None

    async def wait_idle(self, limit: float) -> None:
        """Return once no request is being handled, or after ``limit`` seconds."""
        if self.count == 0:
            return
        idle = self.idle = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), limit)
        finally:
            self.idle = None


RESOURCES = web.AppKey("resources", Resources)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", GatewayMetrics)
#: False for the operator commands that borrow the gateway's resources (``tessera reconcile``,
#: ``tessera attempts``): no reconciler, notification dispatcher, sweeper or housekeeping runs
#: beside them, so a listing calls no provider and a verdict races nothing of its own.
BACKGROUND = web.AppKey("background", bool)
MERCHANT = web.RequestKey("merchant", Merchant)
REQUEST_ID = web.RequestKey("request_id", str)

#: Paths that need no API key.
_PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/webhooks/")


def vault_credentials_problem(settings: Settings) -> str | None:
    """Why the gateway has no Vault credentials to log in with, or None."""
    vs = settings.vault
    if vs.token is None and not (vs.role_id and vs.secret_id):
        return (
            "[vault] the gateway needs Vault credentials: role_id + secret_id "
            "(TESSERA_VAULT_ROLE_ID / TESSERA_VAULT_SECRET_ID) or token (TESSERA_VAULT_TOKEN)."
        )
    return None


def _vault_client(settings: Settings) -> VaultClient:
    problem = vault_credentials_problem(settings)
    if problem is not None:
        raise ConfigError(problem)
    vs = settings.vault
    approle = None
    if vs.role_id and vs.secret_id:
        approle = AppRoleCredentials(role_id=vs.role_id, secret_id=vs.secret_id.get_secret_value())
    return VaultClient(
        vs.addr,
        token=vs.token.get_secret_value() if vs.token else None,
        approle=approle,
        timeout=vs.timeout,
        connect_timeout=vs.connect_timeout,
        max_connections=vs.max_connections,
    )


async def _resources_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        db = await open_database(settings.database.url)
        stack.push_async_callback(db.close)
        merchants = MerchantStore(db)
        await merchants.migrate()
        token_store = TokenStore(db)
        await token_store.migrate()
        audit = AuditLog(db)
        await audit.migrate()
        vault = _vault_client(settings)
        stack.push_async_callback(vault.close)
        ts = settings.tokenization
        batcher = TransitBatcher(vault, max_items=ts.batch_max_items, enabled=ts.batching)
        # Closed before the Vault session (callbacks run in reverse): queued calls finish first.
        stack.push_async_callback(batcher.close)
        cvv = CvvHolder(ttl_seconds=ts.cvv_ttl_seconds)
        envelope = EnvelopeCipher(
            vault if ts.encryption == "envelope" else None,
            batcher,
            key_seconds=ts.data_key_seconds,
            unwrapped_seconds=ts.unwrapped_key_seconds,
        )
        stack.callback(envelope.forget)
        tokens = TokenizationService(
            token_store, batcher, cvv=cvv, audit=audit, client=vault, envelope=envelope
        )
        # Grouped inserts still in flight finish before the batcher, Vault and database close.
        stack.push_async_callback(tokens.close)
        # An open attempt is presumed abandoned (reconciled) only once no call of this process
        # can still be running: the grace outlasts the longest connector deadline.
        longest = max((c.deadline_seconds for c in settings.connectors.values()), default=0.0)
        grace = max(ReconcilePolicy().in_flight_grace, timedelta(seconds=longest + 30))
        payment_store = PaymentStore(db, reconcile_policy=ReconcilePolicy(in_flight_grace=grace))
        await payment_store.migrate()
        ps = settings.payments
        idempotency = IdempotencyStore(
            db,
            fingerprint_key=await idempotency_fingerprint_key(db, ps.idempotency_key),
            retention_seconds=ps.idempotency_retention_seconds,
            claim_lease_seconds=ps.idempotency_lease_seconds,
        )
        await idempotency.migrate()
        outbox = Outbox(db)
        await outbox.migrate()
        pool = ConnectorPool.build(
            settings.connectors,
            revealer=VaultRevealer(tokens),
            metrics=ConnectorMetrics(app[METRICS].registry),
        )
        stack.push_async_callback(pool.close, drain_seconds=settings.server.shutdown_timeout)
        # Connectors configured with credentials_from = "vault": read before the first request.
        # The operator commands (no background tasks) still run without them: listing or
        # settling attempts calls no provider, and a reconcile's calls fail on their own.
        try:
            await pool.load_all_credentials(vault)
        except TesseraError as exc:
            if app[BACKGROUND]:
                raise
            log.warning("connector_credentials_unavailable", code=exc.code, reason=str(exc))
        router = Router(settings.routing, {c: pool.manifest(c) for c in pool.ids()})
        payments = PaymentService(db, payment_store, tokens, pool, router, outbox, audit)
        app[RESOURCES] = Resources(
            settings=settings,
            metrics=app[METRICS],
            db=db,
            merchants=merchants,
            api_keys=ApiKeyCache(merchants, settings.auth.key_cache_seconds),
            auth_limiter=AuthFailureLimiter(
                settings.auth.failure_limit, settings.auth.failure_window_seconds
            ),
            vault=vault,
            batcher=batcher,
            token_store=token_store,
            audit=audit,
            cvv=cvv,
            tokens=tokens,
            payment_store=payment_store,
            idempotency=idempotency,
            outbox=outbox,
            pool=pool,
            payments=payments,
        )
        stop = asyncio.Event()
        # It builds and closes its own delivery session, whose GuardedResolver keeps deliveries
        # off internal addresses (gateway.payments.outbox); closed after its task is cancelled.
        dispatcher = NotificationDispatcher(
            outbox, merchants, allow_private_targets=ps.allow_private_webhook_targets
        )
        stack.push_async_callback(dispatcher.close)
        if not app[BACKGROUND]:
            yield
            return
        background = [
            asyncio.create_task(_sweep_forever(tokens, ts.sweep_interval_seconds)),
            asyncio.create_task(
                run_reconciler(
                    payment_store, payments, interval=ps.reconcile_interval_seconds, stop=stop
                )
            ),
            asyncio.create_task(
                dispatcher.run_forever(stop, idle_interval=ps.outbox_interval_seconds)
            ),
            asyncio.create_task(_housekeeping(idempotency, outbox, payment_store, stop)),
        ]
        if pool.vault_sourced():
            background.append(asyncio.create_task(pool.refresh_credentials_forever(vault, stop)))
        if multiprocess_metrics():
            background.append(asyncio.create_task(_publish_gauges(pool, stop)))
        try:
            yield
        finally:
            stop.set()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _sweep_forever(tokens: TokenizationService, interval: float) -> None:
    """Delete expired tokens (and forget stale CVVs) every ``interval`` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await tokens.sweep_expired()
            if removed:
                log.info("tokens_expired", count=removed)
        except TesseraError as exc:
            log.warning("sweep_failed", code=exc.code)
        except Exception:
            log.exception("sweep_crashed")


async def _housekeeping(
    idempotency: IdempotencyStore, outbox: Outbox, store: PaymentStore, stop: asyncio.Event
) -> None:
    """Hourly: forget expired idempotency keys, delivered notifications (after 7 days) and
    received webhook event ids (after 30 days, well past any provider's redelivery window)."""
    while not stop.is_set():
        try:
            now = datetime.now(UTC)
            await idempotency.purge_expired()
            await outbox.purge_delivered(now - timedelta(days=7))
            await store.purge_webhook_events(now - timedelta(days=30))
        except TesseraError as exc:
            log.warning("housekeeping_failed", code=exc.code)
        except Exception:
            log.exception("housekeeping_crashed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=3600)


async def _publish_gauges(pool: ConnectorPool, stop: asyncio.Event) -> None:
    """Every second, write each connector's breaker and bulkhead gauges (multiprocess metrics:
    a scrape on any worker reads what every worker last wrote, at most a second old)."""
    while not stop.is_set():
        try:
            for connector_id in pool.ids():
                pool.runtime(connector_id).publish_gauges()
        except Exception:  # a full disk, say: log it and keep publishing
            log.exception("metrics_publish_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
)
# Version 4 (random) and the RFC 4122 variant, set on 128 random bits: what uuid.uuid4() does,
# without building a UUID object (about 2 us a request).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


_IDS_PER_DRAW = 256
#: Request ids drawn ahead: one ``os.urandom`` call for 256 of them instead of one each (the
#: system call was about 1 us of the 2 per id). Emptied in a forked child, which must not hand
#: out its parent's ids.
_fresh_ids: list[str] = []
os.register_at_fork(after_in_child=_fresh_ids.clear)


def _draw_request_ids() -> None:
    pool = os.urandom(16 * _IDS_PER_DRAW)
    _fresh_ids.extend(
        "%032x" % (int.from_bytes(pool[i : i + 16]) & _UUID4_CLEAR | _UUID4_SET)
        for i in range(0, len(pool), 16)
    )


def _new_request_id() -> str:
    """A fresh random UUID (version 4, from ``os.urandom`` like ``uuid4()``), as 32 lowercase
    hex digits like ``uuid4().hex``."""
    if not _fresh_ids:
        _draw_request_ids()
    return _fresh_ids.pop()


def _request_id(offered: str | None) -> str:
    """The client's ``X-Request-Id`` if it is a canonical UUID, else a new one.

    Anything freer would be echoed in a header, a problem body and every log line of the
    request, and a client can put anything there, card data included (encoded or not); a UUID's
    fixed shape cannot hold a PAN.
    """
    if offered and _UUID_RE.fullmatch(offered):
        return offered.lower()
    return _new_request_id()


def _bound_request_id_var() -> contextvars.ContextVar[Any]:
    """The context variable behind ``structlog.contextvars.bind_contextvars(request_id=...)``.

    Setting and resetting it directly is what bind/unbind do, minus their per-call bookkeeping;
    every ``merge_contextvars`` processor (production's and anyone's own) still sees the id.
    """
    tokens = structlog.contextvars.bind_contextvars(request_id=None)
    structlog.contextvars.reset_contextvars(**tokens)
    return tokens["request_id"].var


_REQUEST_ID_VAR = _bound_request_id_var()


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gateway's one middleware: request id, tracing, metrics, authentication, and the one
    place errors become problem+json.

    One layer instead of several (errors around authentication, and the in-flight count that
    ``gateway.server`` waits on at shutdown) saves a coroutine frame and a handler partial per
    request each; the order of what happens is the same as before.
    """
    app = request.app
    request_id = _request_id(request.headers.get("X-Request-Id"))
    request[REQUEST_ID] = request_id
    bound = _REQUEST_ID_VAR.set(request_id)
    started = time.perf_counter()
    route = _route_name(request)
    # Counted from here (nothing above can wait) until the handler has returned or raised.
    in_flight = app[IN_FLIGHT]
    in_flight.count += 1
    try:
        tracer = current_tracer()
        if tracer is None:
            response = await _handle(request, handler, request_id, app)
        else:
            method = method_label(request.method)
            with span(
                f"{method} {route}",
                **{"http.request.method": method, "http.route": route},
                request_id=request_id,
            ) as current:
                response = await _handle(request, handler, request_id, app)
                if current is not None:
                    current.set_attribute("http.response.status_code", response.status)
    finally:
        _REQUEST_ID_VAR.reset(bound)
        in_flight.count -= 1
        if in_flight.count == 0 and in_flight.idle is not None:
            in_flight.idle.set()
    app[METRICS].observe_request(
        route, request.method, response.status, time.perf_counter() - started
    )
    response.headers["X-Request-Id"] = request_id
    return response


async def _handle(
    request: web.Request, handler: Handler, request_id: str, app: web.Application
) -> web.StreamResponse:
    try:
        # ``Authorization: Bearer <merchant API key>`` on every /v1 route except webhooks. Done
        # here rather than in a coroutine of its own (one frame less per request); a cached key
        # is answered without awaiting anything.
        path = request.path
        if path.startswith("/v1/") and not path.startswith(_PUBLIC_PREFIXES):
            resources = app[RESOURCES]
            key = _bearer_key(request, resources)
            merchant = None
            if key:
                cached = resources.api_keys.cached(key)
                merchant = cached[1] if cached is not None else await resources.api_keys.fetch(key)
            if merchant is None:
                _refuse(request, resources)
            request[MERCHANT] = merchant
        return await handler(request)
    except HttpProblem as exc:
        problem = problem_response(
            exc.status,
            exc.code,
            exc.detail,
            retry_after=exc.retry_after,
            headers=exc.headers,
            request_id=request_id,
            **exc.extra,
        )
        if exc.close:
            problem.force_close()
        return problem
    except ValidationError as exc:
        code, detail, errors = validation_problem(exc)
        return problem_response(422, code, detail, request_id=request_id, errors=errors)
    except VaultError as exc:
        app[METRICS].vault_errors.labels(exc.code).inc()
        log.warning("vault_error", code=exc.code, detail=exc.detail)
        status = status_for(exc)  # 503, but for a stored row that is wrong (retrying won't help)
        return problem_response(
            status,
            exc.code,
            _vault_detail(exc) if status == 503 else exc.detail,
            retry_after=(exc.retry_after or 1) if status == 503 else None,
            request_id=request_id,
        )
    except TesseraError as exc:
        status = status_for(exc)
        return problem_response(
            status,
            exc.code,
            exc.detail,
            retry_after=exc.retry_after or (1 if status == 503 else None),
            request_id=request_id,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status, "http_error")
        # Keep the exception's headers: a 405 must say which methods are allowed (RFC 9110).
        passthrough = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return problem_response(
            exc.status, code, exc.reason, headers=passthrough, request_id=request_id
        )
    except Exception:
        # The traceback goes through the redacting logger; the client learns nothing.
        log.exception("unhandled_error")
        return problem_response(
            500, "internal_error", "An unexpected error occurred.", request_id=request_id
        )


def _vault_detail(exc: VaultError) -> str:
    """What a client is told about a vault error (never the error's own text).

    A refusal is not an outage: Vault is up and refusing the gateway's own credentials (a revoked
    secret id or token), which an operator has to fix; every other vault error is "unavailable".
    """
    if isinstance(exc, VaultPermissionDeniedError):
        return (
            "The token vault refused the gateway's credentials; the gateway's Vault role and "
            "secret id (or token) need attention. Retry later."
        )
    return "The token vault is unavailable; nothing was stored. Retry later."


def _client_address(request: web.Request, resources: Resources) -> str:
    """Who failed authentication, for the limiter: the peer, or, when the peer is one of the
    ``[auth] trusted_proxies``, the right-most ``X-Forwarded-For`` address that is not (each
    proxy appends the address it received from; entries left of an untrusted one are the
    client's own claims and prove nothing). A hop that is not an address: the peer."""
    peer = request.remote or "unknown"
    trusted = resources.settings.auth.trusted_proxies
    if not trusted or not _trusted(_ip(peer), trusted):
        return peer
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    for hop in reversed(forwarded.split(",")):
        if not (hop := hop.strip()):
            continue
        ip = _ip(hop)
        if not _trusted(ip, trusted):
            return hop if ip is not None else peer
    return peer


def _ip(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _trusted(
    ip: IPv4Address | IPv6Address | None, networks: Sequence[IPv4Network | IPv6Network]
) -> bool:
    return ip is not None and any(ip in network for network in networks)


def _bearer_key(request: web.Request, resources: Resources) -> str:
    """The offered API key (``""`` when there is none); 429 while the client is blocked."""
    wait = resources.auth_limiter.blocked_for(_client_address(request, resources))
    if wait > 0:
        raise HttpProblem(
            429, "too_many_auth_failures", "Too many failed authentications.", retry_after=wait
        )
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if key and scheme.lower() == "bearer" else ""


def _refuse(request: web.Request, resources: Resources) -> NoReturn:
    """Count a failed authentication and answer 401."""
    resources.auth_limiter.record_failure(_client_address(request, resources))
    resources.metrics.auth_failures.inc()
    raise HttpProblem(
        401,
        "unauthorized",
        "A valid API key is required: Authorization: Bearer <key>.",
        headers={"WWW-Authenticate": 'Bearer realm="tessera"'},
    )


def create_app(
    settings: Settings, *, metrics: GatewayMetrics | None = None, background: bool = True
) -> web.Application:
    """The gateway application; resources open when it starts and close when it stops.
    ``background=False``: without the reconciler, dispatcher, sweeper and housekeeping tasks
    (operator commands that only borrow the resources)."""
    from gateway.views import health, openapi, payments, tokens, webhooks

    server = settings.server
    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=server.client_max_size,
        handler_args={
            "max_line_size": server.max_line_size,
            "max_field_size": server.max_field_size,
            "max_headers": server.max_headers,
        },
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics or GatewayMetrics()
    app[IN_FLIGHT] = InFlight()
    app[BACKGROUND] = background
    app.cleanup_ctx.append(_resources_ctx)
    health.setup(app)
    openapi.setup(app)
    tokens.setup(app)
    payments.setup(app)
    webhooks.setup(app)
    return app
