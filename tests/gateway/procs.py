"""Real processes for gateway tests: the sandbox provider and ``tessera serve``, on 127.0.0.1.

Tests that kill, restart or drain a gateway need it in a process of its own. This module starts
them and makes sure none outlives its test::

    async with Processes(tmp_path) as procs:
        sandbox = await procs.sandbox(hang_seconds=1.0)
        gateway = await procs.gateway(gateway_config(...))
        ...
    # every process started here is SIGKILLed (its whole session) and reaped on exit

``python -m tests.gateway.procs sandbox ...`` runs the sandbox simulator with the options its own
CLI does not expose (``--hang-seconds``); ``python -m tests.gateway.procs gateway --alias ID --
serve --config F`` runs the ``tessera`` CLI after registering a copy of the sandbox connector
under another id (a second, independently configured connector, for bulkhead tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from vault.devserver import free_port

__all__ = [
    "SANDBOX_API_KEY",
    "SANDBOX_WEBHOOK_SECRET",
    "Api",
    "Proc",
    "Processes",
    "Reply",
    "create_merchant",
    "database",
    "eventually",
    "gateway_config",
    "payment_body",
    "postgres_schema",
    "sandbox_admin",
    "sandbox_section",
    "to_toml",
]

REPO = Path(__file__).resolve().parents[2]
SANDBOX_API_KEY = "sk_sandbox_procs_key"
SANDBOX_WEBHOOK_SECRET = "whsec_sandbox_procs_secret"
_START_TIMEOUT = 20.0

T = TypeVar("T")


@dataclass
class Proc:
    """One started process: its ``Popen``, its log file, and the base URL it serves."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signum)

    async def wait(self, within: float) -> int:
        """The exit code, polling for ``within`` seconds; TimeoutError if it is still running."""
        deadline = time.monotonic() + within
        while (code := self.popen.poll()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} still running after {within} s")
            await asyncio.sleep(0.02)
        return code

    def destroy(self) -> None:
        """SIGKILL the process's whole session and reap it (idempotent)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(timeout=10)


@dataclass
class Processes:
    """Starts processes for one test; ``async with`` guarantees none is left running."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        errors = []
        for proc in reversed(self.started):
            try:
                proc.destroy()
            except Exception as exc:  # destroy the others first, then raise
                errors.append(exc)
        if errors:
            raise errors[0]

    def spawn(self, name: str, argv: Sequence[str]) -> Proc:
        log = self.workdir / f"{name}-{secrets.token_hex(3)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env["PYTHONUNBUFFERED"] = "1"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    async def sandbox(
        self,
        *,
        hang_seconds: float = 600.0,
        settle_delay: float = 0.2,
        api_key: str = SANDBOX_API_KEY,
        webhook_secret: str = SANDBOX_WEBHOOK_SECRET,
    ) -> Proc:
        """The sandbox provider simulator as a real HTTP server; ready when this returns."""
        port = free_port()
        proc = self.spawn(
            "sandbox",
            [
                sys.executable,
                "-m",
                "tests.gateway.procs",
                "sandbox",
                "--port",
                str(port),
                "--api-key",
                api_key,
                "--webhook-secret",
                webhook_secret,
                "--hang-seconds",
                str(hang_seconds),
                "--settle-delay",
                str(settle_delay),
            ],
        )
        proc.url = f"http://127.0.0.1:{port}"
        await wait_http(proc, "/__sandbox/health")
        return proc

    async def gateway(
        self, config: str, *, aliases: Sequence[str] = (), name: str = "gateway"
    ) -> Proc:
        """``tessera serve --config`` with ``config`` (TOML text); ready (``/readyz``) on return."""
        path = self.workdir / f"{name}-{secrets.token_hex(3)}.toml"
        path.write_text(config)
        port = _port_of(config)
        serve = ["--log-level", "INFO", "serve", "--config", str(path)]
        if aliases:
            argv = [sys.executable, "-m", "tests.gateway.procs", "gateway"]
            for alias in aliases:
                argv += ["--alias", alias]
            argv += ["--", *serve]
        else:
            argv = [*_tessera_cli(), *serve]
        proc = self.spawn(name, argv)
        proc.url = f"http://127.0.0.1:{port}"
        await wait_http(proc, "/readyz")
        return proc


def _tessera_cli() -> list[str]:
    script = Path(sys.executable).parent / "tessera"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def _port_of(config: str) -> int:
    return int(tomllib.loads(config)["server"]["port"])


async def wait_http(proc: Proc, path: str, within: float = _START_TIMEOUT) -> None:
    """Poll ``proc.url + path`` until it answers 200; fail early (with its log) if it dies."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if not proc.alive:
                raise RuntimeError(
                    f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(proc.url + path) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{proc.name} not ready after {within} s:\n{proc.output()}")
            await asyncio.sleep(0.05)


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


class Api:
    """A merchant's view of one gateway process (``Authorization: Bearer <api key>``)."""

    def __init__(self, http: aiohttp.ClientSession, gateway: Proc, api_key: str) -> None:
        self.http = http
        self.gateway = gateway
        self.api_key = api_key

    def on(self, gateway: Proc) -> Api:
        return Api(self.http, gateway, self.api_key)

    async def request(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> Reply:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.http.request(
            method, self.gateway.url + path, json=body, headers=headers
        ) as resp:
            text = await resp.text()
            return Reply(resp.status, json.loads(text) if text else None, dict(resp.headers))

    async def post(self, path: str, body: Any = None, *, key: str | None = None) -> Reply:
        return await self.request("POST", path, body, key=key)

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path)

    async def tokenize(self, number: str = "4242424242424242") -> str:
        card = {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}
        reply = await self.post("/v1/tokens", {"card": card})
        assert reply.status == 201, reply
        return str(reply.body["id"])


def payment_body(token: str, value: int, reference: str, currency: str = "EUR") -> dict[str, Any]:
    return {
        "amount": {"value": value, "currency": currency},
        "payment_method": {"type": "card", "token": token},
        "reference": reference,
    }


async def sandbox_admin(http: aiohttp.ClientSession, sandbox: Proc, what: str) -> Any:
    """``GET /__sandbox/<what>`` (charges, requests, events) of a sandbox process."""
    async with http.get(f"{sandbox.url}/__sandbox/{what}") as resp:
        assert resp.status == 200
        return await resp.json()


async def eventually(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """Poll ``check`` until it returns something other than None (fail after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


# -- configuration --------------------------------------------------------------------------------


def sandbox_section(sandbox: Proc, **overrides: Any) -> dict[str, Any]:
    """A ``[connectors.<id>]`` section pointing at the sandbox process."""
    return {
        "base_url": sandbox.url,
        "test_mode": True,
        "deadline_seconds": 5.0,
        "credentials": {"api_key": SANDBOX_API_KEY, "webhook_secret": SANDBOX_WEBHOOK_SECRET},
        **overrides,
    }


def gateway_config(
    *,
    database_url: str,
    vault_addr: str,
    vault_token: str,
    connectors: Mapping[str, Mapping[str, Any]],
    port: int | None = None,
    server: Mapping[str, Any] | None = None,
    routing: Mapping[str, Any] | None = None,
    payments: Mapping[str, Any] | None = None,
    idempotency_key: str | None = "procs-fingerprint-key-0123456789abcdef",
) -> str:
    """TOML for ``tessera serve``. ``idempotency_key=None``: the first process generates one."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port or free_port(), **(server or {})},
        "database": {"url": database_url},
        "vault": {"addr": vault_addr, "token": vault_token, "timeout": 5.0},
        "auth": {"key_cache_seconds": 0},
        "connectors": {k: dict(v) for k, v in connectors.items()},
        "routing": dict(routing or {"default": list(connectors)[:1]}),
        "payments": {
            **({"idempotency_key": idempotency_key} if idempotency_key else {}),
            **(payments or {}),
        },
    }
    return to_toml(data)


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Nested dicts of str/int/float/bool/lists of scalars as TOML (enough for gateway configs)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = ""
    if lines:
        out += (f"[{prefix.rstrip('.')}]\n" if prefix else "") + "\n".join(lines) + "\n\n"
    for name, table in tables:
        out += to_toml(table, f"{name}.")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


# -- data -----------------------------------------------------------------------------------------


async def create_merchant(database_url: str, vault_addr: str, root_token: str) -> tuple[str, str]:
    """A merchant in ``database_url`` with its Vault keys: (merchant id, API key)."""
    from gateway.merchants import MerchantStore
    from vault.database import open_database
    from vault.provisioning import ensure_tenant_keys

    db = await open_database(database_url)
    try:
        store = MerchantStore(db)
        await store.migrate()
        merchant, key = await store.create("procs")
    finally:
        await db.close()
    await asyncio.to_thread(ensure_tenant_keys, vault_addr, root_token, merchant.id)
    return merchant.id, key


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[Any]:
    """The gateway's database opened from the test (to look at what a process left behind)."""
    from vault.database import open_database

    db = await open_database(url)
    try:
        yield db
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def postgres_schema(dsn: str) -> AsyncIterator[str]:
    """A fresh schema ``t_<random>``; yields a DSN whose ``search_path`` is it; dropped after."""
    import asyncpg

    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    parts = urlsplit(dsn)
    query = f"{parts.query}&search_path={schema}" if parts.query else f"search_path={schema}"
    try:
        yield urlunsplit(parts._replace(query=query))
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


# -- process entry points -------------------------------------------------------------------------


def _run_sandbox(args: argparse.Namespace) -> None:
    from aiohttp import web

    from connectors.sandbox.server import create_app

    app = create_app(
        api_key=args.api_key,
        webhook_secret=args.webhook_secret,
        settle_delay=args.settle_delay,
        hang_seconds=args.hang_seconds,
    )
    web.run_app(
        app, host="127.0.0.1", port=args.port, access_log=None, shutdown_timeout=1.0, print=None
    )


def _run_gateway(args: argparse.Namespace) -> int:
    from gateway.cli import main
    from sdk import register_connector
    from sdk.registry import load_connectors

    base = load_connectors()["sandbox"]
    for alias in args.alias:
        manifest = base.manifest.model_copy(update={"id": alias, "display_name": alias})
        register_connector(type(f"Sandbox_{alias}", (base,), {"manifest": manifest}))
    return main(args.cli)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gateway.procs")
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox = commands.add_parser("sandbox")
    sandbox.add_argument("--port", type=int, required=True)
    sandbox.add_argument("--api-key", default=SANDBOX_API_KEY)
    sandbox.add_argument("--webhook-secret", default=SANDBOX_WEBHOOK_SECRET)
    sandbox.add_argument("--hang-seconds", type=float, default=600.0)
    sandbox.add_argument("--settle-delay", type=float, default=0.2)
    gateway = commands.add_parser("gateway")
    gateway.add_argument("--alias", action="append", default=[])
    gateway.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "sandbox":
        _run_sandbox(args)
        return 0
    if args.cli and args.cli[0] == "--":
        args.cli = args.cli[1:]
    return _run_gateway(args)


if __name__ == "__main__":
    sys.exit(_main())
