"""``/healthz`` (the process answers), ``/readyz`` (Vault unsealed and accepting the gateway's
credentials, the store reachable) and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.app import METRICS, RESOURCES
from gateway.http import json_response
from gateway.observability import render_metrics
from normalization.errors import TesseraError, VaultPermissionDeniedError
from vault.client import VaultClient

__all__ = ["CREDENTIALS_CHECK_SECONDS", "setup"]

_READY_TIMEOUT = 2.0
#: How long a credentials check answers ``/readyz`` before Vault is asked again: probes come
#: every few seconds from each load balancer, and each check is a request to Vault.
CREDENTIALS_CHECK_SECONDS = 5.0


class _CredentialsCheck:
    """``VaultClient.check_credentials`` at most once per ``interval``; concurrent probes share
    one call. "ok" and "refused" are kept for ``interval``; a failure to ask is not kept: its
    ``TesseraError`` propagates (``/readyz`` reports Vault unreachable)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._result = ""
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def status(self, vault: VaultClient) -> str:
        if time.monotonic() - self._checked_at < self.interval:
            return self._result
        async with self._lock:
            if time.monotonic() - self._checked_at < self.interval:
                return self._result  # checked while this probe waited
            try:
                await vault.check_credentials()
                result = "ok"
            except VaultPermissionDeniedError:
                result = "refused"
            self._result, self._checked_at = result, time.monotonic()
            return result


_CREDENTIALS = web.AppKey("credentials_check", _CredentialsCheck)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            health = await resources.vault.health()
            # Unsealed, a revoked secret id or token still fails every vault call (503
            # vault_permission_denied): the gateway is not ready then either.
            checks["vault"] = (
                "sealed"
                if health.sealed
                else await request.app[_CREDENTIALS].status(resources.vault)
            )
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
    body = render_metrics(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app[_CREDENTIALS] = _CredentialsCheck(CREDENTIALS_CHECK_SECONDS)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
