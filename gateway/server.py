"""Running the gateway: one process, or N worker processes sharing a port (SO_REUSEPORT).

``serve(settings)`` runs until SIGINT/SIGTERM, then stops accepting, lets in-flight requests drain
for ``server.shutdown_timeout`` seconds and closes every resource. With ``workers > 1`` the parent
starts N children that each bind the same port with SO_REUSEPORT (the kernel spreads connections
across them), forwards SIGTERM to them, and exits non-zero if any of them fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import SecretStr

from gateway.app import IN_FLIGHT, create_app
from gateway.config import Settings
from gateway.observability import RedactingAccessLogger

__all__ = ["run_gateway", "serve", "start_site"]

log = structlog.get_logger("tessera.server")


async def start_site(
    app: web.Application, settings: Settings, *, reuse_port: bool = False
) -> tuple[web.AppRunner, str]:
    """Start ``app`` on the configured host/port; return the runner and the base URL."""
    server = settings.server
    # The access log, when on, never writes query strings (RedactingAccessLogger).
    extra: dict[str, object] = (
        {"access_log_class": RedactingAccessLogger} if server.access_log else {"access_log": None}
    )
    runner = web.AppRunner(
        app,
        keepalive_timeout=server.keepalive_timeout,
        shutdown_timeout=server.shutdown_timeout,
        handle_signals=False,
        **extra,  # type: ignore[arg-type]
    )
    await runner.setup()
    site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port or None)
    await site.start()
    port = _bound_port(runner) or server.port
    return runner, f"http://{server.host}:{port}"


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


async def run_gateway(
    settings: Settings,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (in this process), then drain and close."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings)
    _unwind_before_cleanup(app, settings.server.shutdown_timeout)
    runner, url = await start_site(app, settings, reuse_port=reuse_port)
    tune_gc()
    log.info("gateway_started", url=url)
    try:
        if on_ready is not None:
            await on_ready(url)
        await stop.wait()
    finally:
        log.info("gateway_stopping")
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


#: Container allocations (net of frees) between young collections; CPython's default is 700.
GC_THRESHOLD = (10_000, 20, 20)


def tune_gc() -> None:
    """Freeze what start-up made and collect young garbage less often.

    Measured under ``bench/tokenize.py`` (docs/performance.md, third pass): with CPython's
    defaults a worker spent 0.3-1.4 s per 10 s run in the cycle collector, and each full
    collection walked every object the process had ever made (modules, classes, schemas,
    connectors), pausing the event loop for 40-95 ms: the requests caught behind it were the
    p99. After ``gc.freeze()`` the collector never looks at start-up objects again, and the
    higher first threshold (most request objects die by reference counting, so few collections
    are needed) left 0-10 short collections per run. Cyclic garbage is still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _unwind_before_cleanup(app: web.Application, timeout: float) -> None:
    """Close the app's resources only once cancelled requests have finished unwinding.

    Past ``shutdown_timeout``, aiohttp cancels the handlers still running but does not wait for
    them before the app's cleanup closes the database: a payment request cut off that way could
    not release its idempotency claim (the merchant's retry got 409 until the lease lapsed) and
    failed with "Cannot operate on a closed database". The gateway middleware counts requests
    (``app[IN_FLIGHT]``), and the first cleanup step (cleanup contexts exit in reverse) waits, at
    most ``timeout``, for none to run.
    """
    in_flight = app[IN_FLIGHT]

    async def wait_for_requests(_app: web.Application) -> AsyncIterator[None]:
        yield
        await in_flight.wait_idle(timeout)

    app.cleanup_ctx.append(wait_for_requests)


def _worker(settings_json: str, log_level: str) -> None:
    from gateway.observability import configure_logging

    configure_logging(log_level)
    asyncio.run(run_gateway(Settings.model_validate_json(settings_json), reuse_port=True))


def serve(settings: Settings, *, log_level: str = "INFO") -> int:
    """Run the gateway with ``settings.server.workers`` processes; return an exit code."""
    workers = settings.server.workers
    if workers == 1:
        asyncio.run(run_gateway(settings))
        return 0
    payload = _settings_json(settings)
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_worker, args=(payload, log_level), daemon=False) for _ in range(workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)


def _settings_json(settings: Settings) -> str:
    """Settings with secrets in clear, for the spawn boundary only (never logged).

    Every ``SecretStr`` is revealed, wherever it is: a JSON dump masks them as ``**********``,
    and a worker given the mask for ``payments.idempotency_key`` or a connector's credentials
    would refuse to start or be refused by the provider.
    """

    def reveal(value: object) -> object:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {key: reveal(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [reveal(item) for item in value]
        return value

    return json.dumps(reveal(settings.model_dump()))
