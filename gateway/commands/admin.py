"""Operator commands: ``vault provision``, ``merchants create``, ``keys rotate``, ``audit verify``,
``reconcile``, ``attempts list`` and ``attempts settle``.

They read the same configuration as ``tessera serve`` (``--config FILE`` and ``TESSERA_*``
variables) and need ``vault.admin_token`` (or ``TESSERA_VAULT_ADMIN_TOKEN``) for Vault admin work.

Failures an operator can fix (Vault unreachable or sealed, a refused token, a database that does
not open) propagate as exceptions that ``gateway.cli.main`` turns into one ``tessera: ...`` line
and exit status 1. Merchant creation and webhook registration are written to the audit log, like
key rotation.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from gateway.config import ConfigError, Settings
from gateway.merchants import MerchantStore, WebhookUrlError
from normalization import NotSupportedError, PaymentStatus
from normalization.errors import VaultNotFoundError, VaultPermissionDeniedError
from vault.audit import AuditAnchor, AuditLog
from vault.client import VaultClient
from vault.database import PostgresDatabase, SqliteDatabase, open_database
from vault.provisioning import ensure_tenant_keys, provision
from vault.rotation import rotate_tenant_keys
from vault.token_store import TokenStore

if TYPE_CHECKING:
    from gateway.app import Resources
    from gateway.payments import PaymentRecord

__all__ = [
    "attempts_list",
    "attempts_settle",
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
    if token is None:  # a configuration error: exit 2, like the others
        raise ConfigError(
            "this command needs a Vault admin token: set vault.admin_token in the "
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
    print(
        "Each run issues a new secret_id; earlier ones stay valid, so running it again changes "
        "nothing for gateways already configured.",
        file=sys.stderr,
    )
    return 0


def merchants_create(settings: Settings, name: str, *, dedup: bool) -> int:
    """Create the merchant row and API key, then its Vault keys; undone if Vault fails.

    The row needs the merchant id that Vault's key names use, so it comes first; when the keys
    cannot be created (Vault unreachable, sealed, token refused) the row and its key are deleted
    again and the error propagates: a merchant never exists with an API key nobody saw and no
    keys to tokenize under.
    """
    token = _admin_token(settings)

    async def work(db: SqliteDatabase | PostgresDatabase) -> tuple[str, str]:
        store = MerchantStore(db)
        await store.migrate()
        audit = AuditLog(db)
        await audit.migrate()
        merchant, key = await store.create(name, token_dedup=dedup)
        try:
            await asyncio.to_thread(ensure_tenant_keys, settings.vault.addr, token, merchant.id)
        except BaseException:
            await store.delete(merchant.id)
            raise
        await audit.append(
            actor="cli:merchants-create",
            action="merchant.create",
            tenant=merchant.id,
            target=merchant.id,
            detail=f"token_dedup={'on' if dedup else 'off'}",
        )
        return merchant.id, key

    merchant_id, key = asyncio.run(_with_db(settings, work))
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
        if tenant is not None and await merchants.get(tenant) is None:
            print(f"tessera: no merchant {tenant!r}.", file=sys.stderr)
            return 1
        tenants = [tenant] if tenant else [m.id for m in await merchants.list()]
        if not tenants:
            print("No merchants: nothing to rotate.")
            return 0
        incomplete = 0
        async with VaultClient(settings.vault.addr, token=token) as client:
            for tenant_id in tenants:
                try:
                    report = await rotate_tenant_keys(
                        client, store, tenant_id, audit=audit, actor="cli:keys-rotate"
                    )
                except (VaultNotFoundError, VaultPermissionDeniedError) as exc:
                    # This tenant only (a missing key, a policy gap): the others still rotate.
                    incomplete += 1
                    print(f"tessera: {tenant_id}: not rotated: {exc}", file=sys.stderr)
                    continue
                print(
                    f"{tenant_id}: {report.pan_key} v{report.previous_version} -> "
                    f"v{report.new_version}; rewrapped {report.rewrapped}, remaining "
                    f"{report.remaining}; min_decryption_version {report.min_decryption_version}"
                )
                if not report.complete:
                    incomplete += 1
                    print(
                        f"tessera: {tenant_id}: {report.remaining} ciphertexts could not be "
                        "rewrapped, so old key versions still decrypt; run the rotation again.",
                        file=sys.stderr,
                    )
        return 1 if incomplete else 0

    return asyncio.run(_with_db(settings, work))


def audit_verify(settings: Settings, *, anchor: str | None = None) -> int:
    """Walk the chain; ``anchor`` (``SEQ:HASH``, a head an earlier run printed) must still be
    in it. Prints the head to keep outside the database for the next run: without an anchor,
    someone with DDL rights who cuts entries off the end and moves the head back goes unseen."""
    exported: AuditAnchor | None = None
    if anchor is not None:
        seq, sep, digest = anchor.partition(":")
        if not (sep and seq.isascii() and seq.isdigit() and digest):
            raise ConfigError(f"--anchor must be SEQ:HASH as verify prints it, not {anchor!r}.")
        exported = AuditAnchor(int(seq), digest)

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        audit = AuditLog(db)
        await audit.migrate()
        result = await audit.verify(anchor=exported)
        if result.ok:
            head = await audit.head()
            print(
                f"audit log intact: {result.entries_checked} entries checked"
                + (f", anchor {exported.seq} found unchanged" if exported else "")
                + f". Head: {head.seq}:{head.hash} (keep it outside the database; pass it as "
                "--anchor next time)."
            )
            return 0
        print(
            f"audit log BROKEN at entry {result.first_bad_seq}: {result.reason} "
            f"({result.entries_checked} entries checked before it).",
        )
        return 1

    return asyncio.run(_with_db(settings, work))


async def _with_gateway(settings: Settings, work: Callable[[Resources], Awaitable[T]]) -> T:
    """Run ``work`` with the gateway's own resources (database, Vault, connectors), opened
    and closed as ``tessera serve`` does, but with none of its background tasks; it needs the
    gateway's Vault credentials."""
    from aiohttp import web

    from gateway.app import RESOURCES, create_app

    app = create_app(settings, background=False)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        return await work(app[RESOURCES])
    finally:
        await runner.cleanup()


def reconcile(settings: Settings) -> int:
    """One reconciliation pass over every due attempt (``tessera reconcile``)."""
    from gateway.reconciliation import reconcile_once

    async def work(resources: Resources) -> int:
        total = await reconcile_once(resources.payment_store, resources.payments, limit=500)
        print(f"reconciliation: {total!r}")
        return 1 if total.failed else 0

    return asyncio.run(_with_gateway(settings, work))


def attempts_list(settings: Settings, *, limit: int) -> int:
    """Print every open attempt, oldest first, with how it will be settled (``tessera attempts
    list``): ``sync`` and ``replay`` are the reconciler's; ``operator`` waits for
    ``tessera attempts settle``."""

    async def work(resources: Resources) -> int:
        attempts = await resources.payment_store.open_attempts(limit=limit)
        if not attempts:
            print("No open attempts.")
            return 0
        now = datetime.now(UTC)
        print(
            f"{'attempt':<28} {'payment':<28} {'operation':<22} {'amount':>14} "
            f"{'outcome':<9} {'age':>8}  settled by"
        )
        payments: dict[str, PaymentRecord] = {}  # a payment's open attempts share one read
        for attempt in attempts:
            payment = payments.get(attempt.payment_id)
            if payment is None:
                payment = await resources.payment_store.payment_of(attempt)
                payments[attempt.payment_id] = payment
            try:
                route = resources.payments.settled_by(attempt, payment)
            except NotSupportedError:
                route = "operator (connector not configured)"
            amount = attempt.amount
            shown = f"{amount.value} {amount.currency}" if amount else "-"
            outcome = attempt.outcome.value if attempt.outcome else "in flight"
            if attempt.status is PaymentStatus.PENDING:
                outcome = "pending"
            age = _age(now - attempt.started_at)
            print(
                f"{attempt.id:<28} {attempt.payment_id:<28} "
                f"{attempt.connector + ' ' + attempt.operation:<22} {shown:>14} "
                f"{outcome:<9} {age:>8}  {route}"
            )
        if len(attempts) == limit:
            print(f"(the oldest {limit}; --limit shows more)", file=sys.stderr)
        return 0

    return asyncio.run(_with_gateway(settings, work))


def _age(elapsed: timedelta) -> str:
    seconds = int(elapsed.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def attempts_settle(
    settings: Settings,
    attempt_id: str,
    *,
    happened: bool,
    reason: str,
    status: str | None,
    provider_reference: str | None,
) -> int:
    """Settle one open attempt from what the provider shows (``tessera attempts settle``);
    written to the audit log with the reason. Refusals (already settled, a verdict that does
    not fit the attempt or the payment) exit 1 with the reason and change nothing."""

    async def work(resources: Resources) -> int:
        payment, attempt = await resources.payments.settle_by_operator(
            attempt_id,
            happened=happened,
            reason=reason,
            actor="cli:attempts-settle",
            status=PaymentStatus(status) if status else None,
            provider_reference=provider_reference,
        )
        outcome = attempt.outcome.value if attempt.outcome else "-"
        print(f"attempt {attempt.id}: {attempt.operation} settled as {outcome}")
        shown = payment.status.value if payment.status else "new"
        print(
            f"payment {payment.id}: {shown}, captured {payment.captured}, "
            f"refunded {payment.refunded} ({payment.amount.currency} minor units)"
        )
        return 0

    return asyncio.run(_with_gateway(settings, work))


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
        audit = AuditLog(db)
        await audit.migrate()
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
        await audit.append(
            actor="cli:merchants-webhook",
            action="merchant.webhook_set",
            tenant=merchant_id,
            target=merchant_id,
            detail=f"host {urlsplit(endpoint.url).hostname}",
        )
        print(f"webhook url:    {endpoint.url}")
        print(f"signing secret: {endpoint.secret}")
        print("Verify Tessera-Signature with this secret (docs/merchant-client.md).")
        return 0

    return asyncio.run(_with_db(settings, work))
