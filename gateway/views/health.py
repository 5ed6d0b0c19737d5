"""``/healthz`` (the process answers), ``/readyz`` (Vault unsealed and the store reachable) and
``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app import METRICS, RESOURCES
from gateway.http import json_response
from normalization.errors import TesseraError

__all__ = ["setup"]

_READY_TIMEOUT = 2.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            health = await resources.vault.health()
        checks["vault"] = "sealed" if health.sealed else "ok"
    except (TesseraError, TimeoutError):
        checks["vault"] = "unreachable"
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            await resources.db.ping()
        checks["database"] = "ok"
    except Exception:  # noqa: BLE001 - any driver error means "not ready", nothing more
        checks["database"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
        headers=None if ready else {"Retry-After": "1"},
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
