"""Running the gateway: one process, or N worker processes sharing a port (SO_REUSEPORT).

``serve(settings)`` runs until SIGINT/SIGTERM, then stops accepting, lets in-flight requests drain
for ``server.shutdown_timeout`` seconds and closes every resource. With ``workers > 1`` the parent
starts N children that each bind the same port with SO_REUSEPORT (the kernel spreads connections
across them), forwards SIGTERM to them, and exits non-zero if any of them fails; when one worker
exits on its own, the parent stops the others and exits non-zero too (a supervisor restarts the
whole gateway rather than leaving it running on fewer workers than configured).

Before any worker starts, ``serve`` checks what an operator can get wrong (``preflight``): the
address is free (SO_REUSEPORT would otherwise let a second gateway silently share the port of a
running one), the database opens and answers, and Vault is reachable, unsealed and accepts the
gateway's credentials. A failed check prints one ``tessera: ...`` line saying what to fix and
``serve`` returns 1, with no traceback and no worker started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from pydantic import SecretStr

from gateway.app import IN_FLIGHT, create_app, vault_credentials_problem
from gateway.config import ConfigError, Settings
from gateway.observability import RedactingAccessLogger
from gateway.problems import problem_response
from normalization.errors import (
    TesseraError,
    VaultPermissionDeniedError,
    VaultSealedError,
    VaultUnavailableError,
)

__all__ = [
    "GatewayRunner",
    "StartupError",
    "check_listen_address",
    "preflight",
    "run_gateway",
    "serve",
    "start_site",
]

#: Bound on each start-up check: asyncpg would otherwise wait 60 s for an unanswering host.
_CHECK_TIMEOUT = 15.0


class StartupError(Exception):
    """The gateway cannot start; the message says what is wrong and what to check."""


log = structlog.get_logger("tessera.server")


# -- errors aiohttp answers itself -------------------------------------------------------------

#: What a client whose request aiohttp's HTTP parser refused is told: never the parser's message,
#: which quotes the offending request line or header (a card number in a path, a header value or
#: a method token came back verbatim in aiohttp's ``text/plain`` 400).
_UNPARSABLE_DETAIL = "The request is not valid HTTP/1.1 and was not processed."
_INTERNAL_DETAIL = "An unexpected error occurred."


class _ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answers replaced by problem+json.

    ``handle_error`` is how aiohttp answers what never reaches the application: a request its
    parser refused (400: bad request line, method token, header, or a line over the size limit)
    and an exception escaping the middleware (500; 504 for a ``TimeoutError``). aiohttp's answer
    is ``text/plain`` quoting the parser's message, the raw input included, and its log line
    carries the same text in the traceback. Here the answer is a fixed problem+json body (4xx:
    ``http_error``, 5xx: 500 ``internal_error``) and a parser refusal is logged by exception class
    only.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        del message  # the parser's text: it quotes the input
        error = type(exc).__name__ if exc is not None else None
        if status >= 500:
            # As the middleware does for its own 500s: the traceback through the redaction.
            log.error("unhandled_error", status=status, error=error, exc_info=exc)
            status, code, detail = 500, "internal_error", _INTERNAL_DETAIL
        else:
            # A bad method token on a connection's first request is usually TLS or other
            # non-HTTP traffic sent to the port: routine on a public address (aiohttp logs it at
            # debug level for the same reason).
            routine = isinstance(exc, BadHttpMethod) and self._request_count == 1
            (log.debug if routine else log.info)(
                "http_request_rejected", status=status, error=error
            )
            code, detail = "http_error", _UNPARSABLE_DETAIL
        if request.writer.output_size > 0:
            # Part of a response already went out: the connection cannot carry another one.
            raise ConnectionError("a response was already sent; cannot send the error")
        request_id = uuid.uuid4().hex  # the shape of every other request id
        response = problem_response(
            status, code, detail, request_id=request_id, headers={"X-Request-Id": request_id}
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp drains a request's unread body after the answer; a body that does not decode
        (a ``Content-Encoding`` it does not match) fails there, outside any handler, and aiohttp
        logged it as an unhandled error with a traceback: an alert any client could raise. It
        is the client's fault, answered already: logged by class only, at info level."""
        if isinstance(kw.get("exc_info"), RequestPayloadError):
            log.info("http_request_body_unreadable", error=type(kw["exc_info"]).__name__)
            return
        super().log_exception(*args, **kw)


class _ProblemServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory) making ``_ProblemRequestHandler`` s."""

    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own errors as problem+json.

    aiohttp has no hook for these answers (a parser refusal never reaches the middlewares), so
    the ``Server`` aiohttp builds (start-up hooks run, handler arguments set) is made a
    ``_ProblemServer``, which only changes the class of the handler it makes per connection.
    Nothing is copied or built twice; it happens before any connection exists.
    """

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProblemServer
        return server


async def start_site(
    app: web.Application, settings: Settings, *, reuse_port: bool = False
) -> tuple[web.AppRunner, str]:
    """Start ``app`` on the configured host/port; return the runner and the base URL."""
    server = settings.server
    # The access log, when on, never writes query strings (RedactingAccessLogger).
    extra: dict[str, object] = (
        {"access_log_class": RedactingAccessLogger} if server.access_log else {"access_log": None}
    )
    runner = GatewayRunner(
        app,
        keepalive_timeout=server.keepalive_timeout,
        shutdown_timeout=server.shutdown_timeout,
        handle_signals=False,
        **extra,  # type: ignore[arg-type]
    )
    try:
        await runner.setup()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise StartupError(f"the gateway could not open its resources: {_reason(exc)}") from exc
    site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise StartupError(_listen_problem(server.host, server.port, exc)) from None
    port = _bound_port(runner) or server.port
    return runner, base_url(server.host, port)


def base_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets (``http://[::1]:8080``)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- start-up checks ----------------------------------------------------------------------------


def check_listen_address(
    host: str,
    port: int,
    *,
    port_option: str = "[server] port",
    host_option: str = "[server] host",
) -> None:
    """Raise ``StartupError`` unless ``host:port`` can be bound *without* SO_REUSEPORT.

    The workers bind with SO_REUSEPORT, which also lets them join the listening socket of a
    gateway that is already running (same user): the kernel would then split traffic between the
    old and the new configuration without a word. A plain bind, as here, fails on any listener.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}:{port}: the host does not resolve ({exc.strerror}); "
            f"check {host_option}."
        ) from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartupError(
                    _listen_problem(
                        host, port, exc, port_option=port_option, host_option=host_option
                    )
                ) from None


def _listen_problem(
    host: str,
    port: int,
    exc: OSError,
    *,
    port_option: str = "[server] port",
    host_option: str = "[server] host",
) -> str:
    """The operator's line for a failed bind, naming the settings to change (``port_option``,
    ``host_option``: the configuration keys, or a command's own options)."""
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: the address is already in use (another gateway or program is listening "
            f"there); stop it or choose another {port_option}."
        )
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); use a port >= 1024."
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: this machine has no such address; check {host_option}."
    return f"{where}: {exc.strerror or exc}."


async def preflight(settings: Settings) -> None:
    """Check the database and Vault the way the gateway will use them; raise ``StartupError``.

    The database is opened (migrations are left to the gateway) and pinged. Vault must answer
    ``sys/health`` unsealed, and accept the gateway's credentials: an AppRole login, or a
    ``lookup-self`` of a static token. Each check is bounded (``_CHECK_TIMEOUT``).
    """
    await _check_database(settings.database.url)
    await _check_vault(settings)
    await _check_connector_credentials(settings)


async def _check_database(url: str) -> None:
    from vault.database import open_database

    shown = _redacted_url(url)
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            db = await open_database(url)
            try:
                await db.ping()
            finally:
                await db.close()
    except TimeoutError:
        raise StartupError(
            f"the database at {shown} did not answer within {_CHECK_TIMEOUT:.0f} s; check "
            "[database] url (TESSERA_DATABASE_URL) and that the server is up."
        ) from None
    except Exception as exc:  # noqa: BLE001 - every driver error means "cannot start"
        hint = ""
        if url.startswith("sqlite:"):
            hint = " (does its directory exist and is it writable?)"
        raise StartupError(
            f"cannot open the database at {shown}{hint}: {_reason(exc)}; check [database] url "
            "(TESSERA_DATABASE_URL)."
        ) from None


async def _check_vault(settings: Settings) -> None:
    from gateway.app import _vault_client

    addr = settings.vault.addr
    client = _vault_client(settings)  # ConfigError when there are no credentials
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            health = await client.health()
            if not health.initialized:
                raise StartupError(f"Vault at {addr} is not initialized (bao operator init).")
            if health.sealed:
                raise VaultSealedError()
            # The AppRole login the gateway will make, or the static token, looked up.
            await client.check_credentials()
    except TimeoutError:
        raise StartupError(
            f"Vault at {addr} did not answer within {_CHECK_TIMEOUT:.0f} s; check [vault] addr "
            "(TESSERA_VAULT_ADDR)."
        ) from None
    except VaultSealedError:
        raise StartupError(
            f"Vault at {addr} is sealed; unseal it (bao operator unseal), then start the gateway."
        ) from None
    except VaultUnavailableError as exc:
        raise StartupError(
            f"Vault at {addr} does not answer: {exc} Check [vault] addr (TESSERA_VAULT_ADDR) "
            "and that OpenBao/Vault is running."
        ) from None
    except VaultPermissionDeniedError as exc:
        # The client's own sentence (wrong credentials, or a locked-out role): never a secret.
        raise StartupError(
            f"Vault at {addr} refused the gateway's credentials. {exc.detail} Check [vault] "
            "role_id and secret_id (TESSERA_VAULT_ROLE_ID / TESSERA_VAULT_SECRET_ID) or "
            "TESSERA_VAULT_TOKEN. "
            "`tessera vault provision` prints the role id and a fresh secret id."
        ) from None
    except TesseraError as exc:
        raise StartupError(f"Vault at {addr} answered with an error: {exc}") from None
    finally:
        await client.close()


async def _check_connector_credentials(settings: Settings) -> None:
    """Every configured connector's credentials are there: in the file, or in Vault KV for
    ``credentials_from = "vault"`` (read with the gateway's own Vault credentials, as it will)."""
    from gateway.app import _vault_client
    from gateway.connector_pool import installed_connectors, read_credentials
    from sdk import Credentials

    classes = installed_connectors(settings.connectors, warn=False)  # ConfigError: exit 2
    from_vault = []
    for connector_id, config in settings.connectors.items():
        if config.credentials_from == "vault":
            from_vault.append(connector_id)
            continue
        try:
            Credentials(config.credentials).check_against(classes[connector_id].manifest)
        except TesseraError as exc:
            raise StartupError(f"[connectors.{connector_id}]: {exc}") from None
    if not from_vault:
        return
    client = _vault_client(settings)
    try:
        for connector_id in from_vault:
            try:
                async with asyncio.timeout(_CHECK_TIMEOUT):
                    await read_credentials(client, connector_id, classes[connector_id].manifest)
            except TimeoutError:
                raise StartupError(
                    f"Vault did not answer within {_CHECK_TIMEOUT:.0f} s when reading connector "
                    f"{connector_id!r}'s credentials."
                ) from None
            except TesseraError as exc:
                raise StartupError(f"[connectors.{connector_id}]: {exc}") from None
    finally:
        await client.close()


#: Query parameters that carry a credential in a database URL (asyncpg and libpq read them).
_SECRET_QUERY_RE = re.compile(r"((?:^|&)(?:password|passfile|sslpassword)=)[^&]*", re.IGNORECASE)


def _redacted_url(url: str) -> str:
    """``url`` without its password (database URLs may carry one, in the user part or as a
    ``password`` query parameter)."""
    try:
        parts = urlsplit(url)
        query = _SECRET_QUERY_RE.sub(r"\1***", parts.query)
        if parts.password is None and query == parts.query:
            return url  # as written (urlunsplit would turn sqlite://// into sqlite://)
        parts = parts._replace(query=query)
        if parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
        return urlunsplit(parts)
    except ValueError:
        return "<the configured URL>"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    app = create_app(settings)
    _unwind_before_cleanup(app, settings.server.shutdown_timeout)
    # Signal handlers only once serving: a worker that cannot start and is stopped by the parent
    # at that moment then dies by the signal, rather than printing "Exception ignored when
    # trying to write to the signal wakeup fd" from a loop that is closing.
    runner, url = await start_site(app, settings, reuse_port=reuse_port)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
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
    from gateway.observability import configure_logging, multiprocess_metrics

    configure_logging(log_level)
    try:
        asyncio.run(run_gateway(Settings.model_validate_json(settings_json), reuse_port=True))
    except StartupError as exc:
        _say(f"worker {os.getpid()}: {exc}")
        sys.exit(1)
    finally:
        if multiprocess_metrics():  # its live gauges leave the sums
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _shared_metrics_dir() -> Iterator[None]:
    """Workers share their metrics through files (prometheus-client's multiprocess mode), so
    that ``/metrics`` on any worker reports the whole gateway. The directory is the operator's
    ``PROMETHEUS_MULTIPROC_DIR`` if set (they wipe it between runs, as prometheus-client
    requires), else a fresh one removed when the gateway stops. Set before the workers spawn:
    prometheus-client chooses its mode at import."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    path = tempfile.mkdtemp(prefix="tessera-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


_RANDOM_PORT_PROBLEM = (
    "[server] port = 0 picks a random port per process; with workers > 1 set a port."
)


def _random_port_per_worker(settings: Settings) -> bool:
    return settings.server.workers > 1 and settings.server.port == 0


def check_serve_settings(settings: Settings) -> None:
    """Raise ``ConfigError`` (exit 2) for settings the gateway cannot run with at all: a random
    port shared by several workers, no Vault credentials, a ``PROMETHEUS_MULTIPROC_DIR`` that is
    not a writable directory."""
    problems = [_RANDOM_PORT_PROBLEM] if _random_port_per_worker(settings) else []
    credentials = vault_credentials_problem(settings)
    if credentials is not None:
        problems.append(credentials)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir and not (
        os.path.isdir(metrics_dir) and os.access(metrics_dir, os.W_OK | os.X_OK)
    ):
        # prometheus-client's multiprocess mode writes its files there from the first metric:
        # every worker would die with a traceback.
        problems.append(
            f"PROMETHEUS_MULTIPROC_DIR={metrics_dir} is not a directory the gateway can write; "
            "create it (empty) or unset it (the gateway then uses a temporary one)."
        )
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(
            "the gateway cannot run with this configuration:\n  " + "\n  ".join(problems)
        )


def serve(settings: Settings, *, log_level: str = "INFO", checks: bool = True) -> int:
    """Run the gateway with ``settings.server.workers`` processes; return an exit code.

    ``checks`` runs ``check_listen_address`` and ``preflight`` first: a failure prints one
    ``tessera: ...`` line on stderr and returns 1 before anything listens.
    """
    server = settings.server
    workers = server.workers
    try:
        if _random_port_per_worker(settings):
            raise StartupError(_RANDOM_PORT_PROBLEM)
        if checks:
            check_listen_address(server.host, server.port)
            asyncio.run(preflight(settings))
        if workers == 1:
            asyncio.run(run_gateway(settings))
            return 0
    except StartupError as exc:
        _say(str(exc))
        return 1
    payload = _settings_json(settings)
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_worker, args=(payload, log_level), daemon=False) for _ in range(workers)
    ]
    stopping = False

    def stop_children() -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        stop_children()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _shared_metrics_dir():
            return _supervise(children, stop_children, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(
    children: Sequence[multiprocessing.process.BaseProcess],
    stop_children: Callable[[], None],
    stopping: Callable[[], bool],
) -> int:
    """Start the workers and wait; the first one to exit ends the gateway."""
    for child in children:
        child.start()
    # The first worker to exit ends the gateway: either we are stopping (SIGTERM forwarded), or
    # it failed, and the others are stopped rather than left serving on fewer workers.
    ready = multiprocessing.connection.wait([child.sentinel for child in children])
    first = next(child for child in children if child.sentinel in ready)
    first.join()  # its sentinel closes before it can be reaped: join for the exit code
    unexpected = not stopping()
    if unexpected:
        _say(f"worker {first.pid} exited (code {first.exitcode}); stopping the others.")
        stop_children()
    for child in children:
        child.join()
    code = max((child.exitcode or 0) for child in children)
    return max(code, 1) if unexpected else code


def _say(message: str) -> None:
    """One ``tessera: ...`` line for the operator on stderr (not a JSON log line)."""
    sys.stderr.write(f"tessera: {message}\n")
    sys.stderr.flush()


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
