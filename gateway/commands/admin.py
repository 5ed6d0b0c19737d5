"""Operator commands: ``vault provision``, ``merchants create``, ``keys rotate``, ``audit verify``.

They read the same configuration as ``tessera serve`` (``--config FILE`` and ``TESSERA_*``
variables) and need ``vault.admin_token`` (or ``TESSERA_VAULT_ADMIN_TOKEN``) for Vault admin work.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.config import Settings
from gateway.merchants import MerchantStore, WebhookUrlError
from vault.audit import AuditLog
from vault.client import VaultClient
from vault.database import PostgresDatabase, SqliteDatabase, open_database
from vault.provisioning import ensure_tenant_keys, provision
from vault.rotation import rotate_tenant_keys
from vault.token_store import TokenStore

__all__ = [
    "audit_verify",
    "merchants_create",
    "merchants_webhook_set",
    "reconcile",
    "rotate_keys",
    "vault_provision",
]

T = TypeVar("T")


def _admin_token(settings: Settings) -> str:
    token = settings.vault.admin_token or settings.vault.token
    if token is None:
        raise SystemExit(
            "tessera: this command needs a Vault admin token: set vault.admin_token in the "
            "config file or TESSERA_VAULT_ADMIN_TOKEN."
        )
    return token.get_secret_value()


async def _with_db(
    settings: Settings, work: Callable[[SqliteDatabase | PostgresDatabase], Awaitable[T]]
) -> T:
    db = await open_database(settings.database.url)
    try:
        return await work(db)
    finally:
        await db.close()


def vault_provision(settings: Settings) -> int:
    result = provision(settings.vault.addr, _admin_token(settings))
    print("OpenBao provisioned (transit, KV v2, policies, AppRole).")
    print(f"gateway role_id:   {result.gateway_role_id}")
    print(f"gateway secret_id: {result.gateway_secret_id}")
    print("Put them in [vault] role_id / secret_id (or TESSERA_VAULT_SECRET_ID).")
    return 0


def merchants_create(settings: Settings, name: str, *, dedup: bool) -> int:
    token = _admin_token(settings)

    async def work(db: SqliteDatabase | PostgresDatabase) -> tuple[str, str]:
        store = MerchantStore(db)
        await store.migrate()
        merchant, key = await store.create(name, token_dedup=dedup)
        return merchant.id, key

    merchant_id, key = asyncio.run(_with_db(settings, work))
    ensure_tenant_keys(settings.vault.addr, token, merchant_id)
    print(f"merchant: {merchant_id}")
    print(f"api key:  {key}")
    print("The key is shown once; store it now.", file=sys.stderr)
    return 0


def rotate_keys(settings: Settings, tenant: str | None) -> int:
    token = _admin_token(settings)

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        store = TokenStore(db)
        await store.migrate()
        audit = AuditLog(db)
        await audit.migrate()
        merchants = MerchantStore(db)
        await merchants.migrate()
        tenants = [tenant] if tenant else [m.id for m in await merchants.list()]
        async with VaultClient(settings.vault.addr, token=token) as client:
            for tenant_id in tenants:
                report = await rotate_tenant_keys(
                    client, store, tenant_id, audit=audit, actor="cli:keys-rotate"
                )
                print(f"{tenant_id}: {report}")
        return 0

    return asyncio.run(_with_db(settings, work))


def audit_verify(settings: Settings) -> int:
    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        audit = AuditLog(db)
        await audit.migrate()
        result = await audit.verify()
        print(result)
        return 0 if result.ok else 1

    return asyncio.run(_with_db(settings, work))


def reconcile(settings: Settings) -> int:
    """One reconciliation pass over every due attempt (``tessera reconcile``)."""
    from aiohttp import web

    from gateway.app import RESOURCES, create_app
    from gateway.reconciliation import reconcile_once

    async def work() -> int:
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()  # opens the resources (database, Vault, connectors)
        try:
            resources = app[RESOURCES]
            total = await reconcile_once(resources.payment_store, resources.payments, limit=500)
            print(f"reconciliation: {total!r}")
            return 1 if total.failed else 0
        finally:
            await runner.cleanup()

    return asyncio.run(work())


def merchants_webhook_set(settings: Settings, merchant_id: str, url: str) -> int:
    """Register the merchant's notification URL; prints the signing secret once.

    The URL must be https, without credentials, on a host whose every address is public (see
    ``gateway.merchants.check_webhook_url``); otherwise the reason is printed to stderr and the
    exit status is 2 (1 for an unknown merchant). ``[payments] allow_private_webhook_targets``
    (development and tests only) also admits http and loopback/private addresses.
    """
    allow_private = settings.payments.allow_private_webhook_targets

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        store = MerchantStore(db)
        await store.migrate()
        try:
            endpoint = await store.set_webhook_endpoint(
                merchant_id, url, allow_http=allow_private, allow_private=allow_private
            )
        except WebhookUrlError as exc:
            print(f"tessera: webhook URL refused ({exc.code}): {exc}", file=sys.stderr)
            return 2
        except LookupError:
            print(f"tessera: no merchant {merchant_id!r}.", file=sys.stderr)
            return 1
        print(f"webhook url:    {endpoint.url}")
        print(f"signing secret: {endpoint.secret}")
        print("Verify Tessera-Signature with this secret (docs/merchant-client.md).")
        return 0

    return asyncio.run(_with_db(settings, work))
