"""Operator commands: ``vault provision``, ``merchants create|list|delete|webhook``,
``merchants keys create|list|revoke``, ``keys rotate``, ``audit verify``, ``reconcile``,
``attempts list`` and ``attempts settle``.

They read the same configuration as ``tessera serve`` (``--config FILE`` and ``TESSERA_*``
variables) and need ``vault.admin_token`` (or ``TESSERA_VAULT_ADMIN_TOKEN``) for Vault admin work.

Failures an operator can fix (Vault unreachable or sealed, a refused token, a database that does
not open) propagate as exceptions that ``gateway.cli.main`` turns into one ``tessera: ...`` line
and exit status 1. Merchant creation, deletion and webhook registration, and API key creation and
revocation are written to the audit log, like key rotation; none of these commands ever prints a
key hash or a webhook signing secret it did not just make.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

from gateway.config import ConfigError, Settings
from gateway.merchants import AmbiguousKeyError, ApiKey, MerchantStore, WebhookUrlError
from normalization import NotSupportedError, PaymentStatus, TesseraError
from vault.audit import AuditAnchor, AuditLog
from vault.client import VaultClient
from vault.database import PostgresDatabase, SqliteDatabase, open_database
from vault.provisioning import (
    ADMIN_ROLE,
    ensure_tenant_keys,
    fingerprint_key_name,
    pan_key_name,
    provision,
)
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
    "merchants_delete",
    "merchants_keys_create",
    "merchants_keys_list",
    "merchants_keys_revoke",
    "merchants_list",
    "merchants_webhook_set",
    "reconcile",
    "rotate_keys",
    "vault_provision",
]

T = TypeVar("T")

#: Tenants rotated at once by ``keys rotate``: each mostly waits (Vault, the settle pause).
_ROTATE_CONCURRENCY = 8


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


def vault_provision(settings: Settings, *, admin_secret_id_file: Path | None = None) -> int:
    """Provision OpenBao; print the gateway's AppRole credentials and the admin role id.

    The admin AppRole's secret id is issued only with ``admin_secret_id_file``: it is written
    there, in a file this command creates with mode 0600 (an existing file is refused, never
    overwritten), and not printed. Without it none is issued: a secret id printed to a terminal
    ends up in scrollback and CI logs, and one issued and not shown would stay valid with
    nobody knowing of it. ``bao write -f auth/approle/role/tessera-admin/secret-id`` issues one
    by hand."""
    token = _admin_token(settings)
    fd = _create_private_file(admin_secret_id_file) if admin_secret_id_file else None
    try:
        result = provision(settings.vault.addr, token, admin_secret_id=fd is not None)
        if fd is not None:
            assert result.admin_secret_id is not None
            os.write(fd, f"{result.admin_secret_id}\n".encode())
    except BaseException:
        if fd is not None:
            os.close(fd)
            assert admin_secret_id_file is not None
            admin_secret_id_file.unlink(missing_ok=True)
        raise
    if fd is not None:
        os.close(fd)
    print("OpenBao provisioned (transit, KV v2, policies, AppRole).")
    print(f"gateway role_id:   {result.gateway_role_id}")
    print(f"gateway secret_id: {result.gateway_secret_id}")
    print("Put them in [vault] role_id / secret_id (or TESSERA_VAULT_SECRET_ID).")
    print(f"admin role_id:     {result.admin_role_id}")
    if admin_secret_id_file is not None:
        print(f"admin secret_id:   written to {admin_secret_id_file} (mode 0600)")
    print(
        "Each run issues a new gateway secret_id; earlier ones stay valid, so running it again "
        "changes nothing for gateways already configured.",
        file=sys.stderr,
    )
    if admin_secret_id_file is None:
        print(
            f"No {ADMIN_ROLE} secret_id was issued. For one: --admin-secret-id-file FILE (written "
            f"with mode 0600), or bao write -f auth/approle/role/{ADMIN_ROLE}/secret-id.",
            file=sys.stderr,
        )
    return 0


def _create_private_file(path: Path) -> int:
    """A new file at ``path`` only its owner can read (0600), open for writing. An existing
    path is refused rather than overwritten (or followed, were it a symlink)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"--admin-secret-id-file {path}: already exists; give a path that does not (it is "
            "created with mode 0600, never overwritten)."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"--admin-secret-id-file {path}: cannot create it ({exc.strerror})."
        ) from None


async def _merchants_and_audit(
    db: SqliteDatabase | PostgresDatabase,
) -> tuple[MerchantStore, AuditLog]:
    """The merchant store and the audit log, migrated: what most admin commands write to."""
    store, audit = MerchantStore(db), AuditLog(db)
    await store.migrate()
    await audit.migrate()
    return store, audit


def merchants_create(settings: Settings, name: str, *, dedup: bool) -> int:
    """Create the merchant row and API key, then its Vault keys; undone if Vault fails.

    The row needs the merchant id that Vault's key names use, so it comes first; when the keys
    cannot be created (Vault unreachable, sealed, token refused) the row and its key are deleted
    again and the error propagates: a merchant never exists with an API key nobody saw and no
    keys to tokenize under.
    """
    token = _admin_token(settings)

    async def work(db: SqliteDatabase | PostgresDatabase) -> tuple[str, str]:
        store, audit = await _merchants_and_audit(db)
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


def rotate_keys(
    settings: Settings, tenant: str | None, *, settle_seconds: float | None = None
) -> int:
    token = _admin_token(settings)

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        merchants, audit = await _merchants_and_audit(db)
        store = TokenStore(db)
        await store.migrate()
        if tenant is not None and await merchants.get(tenant) is None:
            print(f"tessera: no merchant {tenant!r}.", file=sys.stderr)
            return 1
        tenants = [tenant] if tenant else [m.id for m in await merchants.list()]
        if not tenants:
            print("No merchants: nothing to rotate.")
            return 0
        # Gateways sealing with envelope encryption keep a data key wrapped under the old
        # version for up to their data_key_seconds and insert its cards once the fingerprint
        # call returns: the last sweep waits that long (vault.rotation), whatever this file's
        # own encryption setting, since it may not be the gateways' file.
        settle = settle_seconds
        if settle is None:
            settle = settings.tokenization.data_key_seconds + settings.vault.timeout + 1.0
        print(f"Rotating {len(tenants)} merchant(s), {_ROTATE_CONCURRENCY} at a time; each waits "
              f"{settle:g} s for gateways to retire data keys of the old version.")  # fmt: skip
        gate = asyncio.Semaphore(_ROTATE_CONCURRENCY)
        incomplete = 0

        async def rotate(client: VaultClient, tenant_id: str) -> None:
            nonlocal incomplete
            async with gate:
                try:
                    report = await rotate_tenant_keys(
                        client, store, tenant_id, audit=audit, actor="cli:keys-rotate",
                        settle_seconds=settle,
                    )  # fmt: skip
                except TesseraError as exc:
                    # This merchant only (Vault down or refusing, a missing key, the database):
                    # the others carry on, and the run exits 1.
                    incomplete += 1
                    print(f"tessera: {tenant_id}: not rotated: {exc}", file=sys.stderr)
                    return
            print(
                f"{tenant_id}: {report.pan_key} v{report.previous_version} -> "
                f"v{report.new_version}; rewrapped {report.rewrapped}, remaining "
                f"{report.remaining}; min_decryption_version {report.min_decryption_version}",
                flush=True,
            )
            if not report.complete:
                incomplete += 1
                print(
                    f"tessera: {tenant_id}: {report.remaining} ciphertexts are still under an "
                    "old key version, so old versions still decrypt; run the rotation again.",
                    file=sys.stderr,
                )

        async with VaultClient(settings.vault.addr, token=token) as client:
            # Every merchant's rotation runs to its end before the client and database close;
            # an unexpected error is raised only then.
            outcomes = await asyncio.gather(
                *(rotate(client, t) for t in tenants), return_exceptions=True
            )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
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
        if result.ok and (head := result.head) is not None:
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
        store, audit = await _merchants_and_audit(db)
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


def _printable(text: str) -> str:
    """``text`` with control characters replaced: a merchant name never drives the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _shown_url(url: str) -> str:
    """A webhook URL without its query and fragment, which may carry a merchant's token."""
    parts = urlsplit(url)
    hidden = "?..." if parts.query or parts.fragment else ""
    return urlunsplit(parts._replace(query="", fragment="")) + hidden


def _when(stamp: str | None) -> str:
    """A stored ISO timestamp as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), ``-`` for none."""
    if stamp is None:
        return "-"
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def merchants_list(settings: Settings, *, as_json: bool = False) -> int:
    """Every merchant, oldest first: id, name, created, live API keys, webhook URL (``tessera
    merchants list``). ``as_json``: one JSON array for scripts. Never a key, a key hash or a
    signing secret; a webhook URL's query string is shown as ``?...``."""

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        store = MerchantStore(db)
        await store.migrate()
        summaries = await store.summaries()
        if as_json:
            print(
                json.dumps(
                    [
                        {
                            "id": s.merchant.id,
                            "name": s.merchant.name,
                            "created_at": s.merchant.created_at,
                            "active_keys": s.active_keys,
                            "token_dedup": s.merchant.token_dedup,
                            "webhook_url": _shown_url(s.webhook_url) if s.webhook_url else None,
                        }
                        for s in summaries
                    ],
                    indent=2,
                )
            )
            return 0
        if not summaries:
            print("No merchants.")
            return 0
        names = [_printable(s.merchant.name) for s in summaries]
        width = max(len("name"), *(len(name) for name in names))
        print(f"{'merchant':<20}  {'name':<{width}}  {'created':<20}  {'keys':>4}  webhook")
        for summary, name in zip(summaries, names, strict=True):
            webhook = _shown_url(summary.webhook_url) if summary.webhook_url else "-"
            print(
                f"{summary.merchant.id:<20}  {name:<{width}}  "
                f"{_when(summary.merchant.created_at):<20}  {summary.active_keys:>4}  {webhook}"
            )
        return 0

    return asyncio.run(_with_db(settings, work))


def _key_name(key: ApiKey) -> str:
    return f"{key.id or '(no id)'} ({key.prefix})"


def merchants_keys_list(settings: Settings, merchant_id: str, *, as_json: bool = False) -> int:
    """The merchant's API keys, live and revoked: id, prefix, created, revoked. Exit 1 for an
    unknown merchant."""

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        store = MerchantStore(db)
        await store.migrate()
        if await store.get(merchant_id) is None:
            print(f"tessera: no merchant {merchant_id!r}.", file=sys.stderr)
            return 1
        keys = await store.keys(merchant_id)
        if as_json:
            print(
                json.dumps(
                    [
                        {
                            "id": k.id,
                            "prefix": k.prefix,
                            "created_at": k.created_at,
                            "revoked_at": k.revoked_at,
                        }
                        for k in keys
                    ],
                    indent=2,
                )
            )
            return 0
        if not keys:
            print(f"{merchant_id} has no API keys.")
            return 0
        print(f"{'key id':<20}  {'prefix':<8}  {'created':<20}  revoked")
        for key in keys:
            print(
                f"{key.id or '-':<20}  {key.prefix:<8}  {_when(key.created_at):<20}  "
                f"{_when(key.revoked_at)}"
            )
        return 0

    return asyncio.run(_with_db(settings, work))


def merchants_keys_create(settings: Settings, merchant_id: str, *, reason: str | None) -> int:
    """A new API key for the merchant, printed once; its id and prefix go to the audit log
    (``merchant.key_create``) in the same transaction. Exit 1 for an unknown merchant."""

    async def work(db: SqliteDatabase | PostgresDatabase) -> tuple[ApiKey, str] | None:
        store, audit = await _merchants_and_audit(db)
        try:
            async with db.transaction() as tx:
                record, key = await store.create_key(merchant_id, tx=tx)
                await audit.append(
                    actor="cli:merchants-keys-create",
                    action="merchant.key_create",
                    tenant=merchant_id,
                    target=record.id,
                    purpose=reason,
                    detail=f"prefix {record.prefix}",
                    tx=tx,
                )
        except LookupError:
            return None
        return record, key

    created = asyncio.run(_with_db(settings, work))
    if created is None:
        print(f"tessera: no merchant {merchant_id!r}.", file=sys.stderr)
        return 1
    record, key = created
    print(f"key id:   {record.id}")
    print(f"api key:  {key}")
    print(
        "The key is shown once; store it now. Once clients use it, revoke the key it replaces: "
        f"tessera merchants keys revoke {merchant_id} KEY_ID.",
        file=sys.stderr,
    )
    return 0


def merchants_keys_revoke(
    settings: Settings,
    merchant_id: str,
    which: str | None,
    *,
    every: bool = False,
    reason: str | None = None,
) -> int:
    """Revoke one of the merchant's API keys (``which``: its id, its 8-character prefix or the
    whole key) or, with ``every``, all its live keys. Each revocation is audited
    (``merchant.key_revoke``) in its transaction. Every gateway process refuses a revoked key
    once its cached answer expires: within ``[auth] key_cache_seconds``.

    Exit 1 for an unknown merchant, no matching key, or a prefix that names several keys
    (their ids are listed); a key already revoked is reported and exits 0 (nothing audited).
    ``which`` is never echoed: it may be the key itself."""
    if (which is None) == (not every):
        raise ConfigError("give a key id or prefix, or --all (not both).")

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        store, audit = await _merchants_and_audit(db)
        if await store.get(merchant_id) is None:
            print(f"tessera: no merchant {merchant_id!r}.", file=sys.stderr)
            return 1
        try:
            async with db.transaction() as tx:
                if every:
                    revoked = await store.revoke_all(merchant_id, tx=tx)
                    already: ApiKey | None = None
                else:
                    assert which is not None
                    key, changed = await store.revoke(merchant_id, which, tx=tx)
                    revoked, already = ([key], None) if changed else ([], key)
                for key in revoked:
                    await audit.append(
                        actor="cli:merchants-keys-revoke",
                        action="merchant.key_revoke",
                        tenant=merchant_id,
                        target=key.id or key.prefix,
                        purpose=reason,
                        detail=f"prefix {key.prefix}",
                        tx=tx,
                    )
            live = sum(k.active for k in await store.keys(merchant_id))
        except AmbiguousKeyError as exc:
            ids = ", ".join(_key_name(k) for k in exc.candidates)
            print(
                f"tessera: that prefix names {len(exc.candidates)} keys of {merchant_id}: {ids}; "
                "give the key id.",
                file=sys.stderr,
            )
            return 1
        except LookupError as exc:  # the store's message: what did not match, never ``which``
            print(
                f"tessera: {merchant_id}: {exc} (see tessera merchants keys list {merchant_id}).",
                file=sys.stderr,
            )
            return 1
        if already is not None:
            print(f"{_key_name(already)} was already revoked at {_when(already.revoked_at)}.")
            return 0
        for key in revoked:
            print(f"revoked {_key_name(key)} of {merchant_id} at {_when(key.revoked_at)}")
        if not revoked:
            print(f"{merchant_id} had no live key.")
        print(
            "Gateways refuse a revoked key within [auth] key_cache_seconds "
            f"({settings.auth.key_cache_seconds:g} s).",
            file=sys.stderr,
        )
        if live == 0:
            print(f"{merchant_id} has no live API key left.", file=sys.stderr)
        return 0

    return asyncio.run(_with_db(settings, work))


def merchants_delete(
    settings: Settings, merchant_id: str, *, confirmed: bool, reason: str | None = None
) -> int:
    """Delete a merchant that never holds tokens or payments (``tessera merchants delete``):
    its row, its API keys and its webhook endpoint go, in one transaction with the audit entry
    (``merchant.delete``). Refused (exit 1) when any token or payment names it: nothing would
    be left to authenticate as it, but those rows would stay, naming a merchant that no longer
    exists; revoke its keys instead. Refused too (exit 1) while any of its API keys is live or
    was revoked less than ``[auth] key_cache_seconds`` ago: a gateway may still accept such a
    key and make a token for the merchant. Without ``confirmed`` it says what it would delete and
    exits 2, changing nothing. Its Vault transit keys stay (the admin policy cannot delete
    keys); the audit log keeps every entry naming it."""

    async def work(db: SqliteDatabase | PostgresDatabase) -> int:
        from gateway.payments.store import PaymentStore

        store, audit = await _merchants_and_audit(db)
        token_store = TokenStore(db)
        await token_store.migrate()
        await PaymentStore(db).migrate()
        async with db.transaction() as tx:
            merchant = await store.get(merchant_id, tx=tx)
            if merchant is None:
                print(f"tessera: no merchant {merchant_id!r}.", file=sys.stderr)
                return 1
            tokens = await token_store.count(merchant_id, tx=tx)
            payments = int(
                await tx.fetchval(
                    "SELECT COUNT(*) FROM payments WHERE merchant_id = $1", merchant_id
                )
            )
            name = _printable(merchant.name)
            if tokens or payments:
                print(
                    f"tessera: {merchant_id} ({name}) has {tokens} tokens and {payments} "
                    "payments; they would be left naming a merchant that no longer exists, so it "
                    "is not deleted. To stop it using the API, revoke its keys: tessera merchants "
                    f"keys revoke {merchant_id} --all.",
                    file=sys.stderr,
                )
                return 1
            keys = await store.keys(merchant_id, tx=tx)
            # A gateway accepts a key it has cached for up to key_cache_seconds after it is
            # revoked (or its merchant deleted): until every key is past that, a request could
            # still make a token or payment for the merchant after the counts above.
            settle = timedelta(seconds=settings.auth.key_cache_seconds)
            now = datetime.now(UTC)
            usable = [
                k
                for k in keys
                if k.revoked_at is None or datetime.fromisoformat(k.revoked_at) + settle > now
            ]
            if usable:
                print(
                    f"tessera: {merchant_id} still has {len(usable)} API key(s) a gateway may "
                    "accept; revoke them first (tessera merchants keys revoke "
                    f"{merchant_id} --all), then delete once [auth] key_cache_seconds "
                    f"({settings.auth.key_cache_seconds:g} s) has passed.",
                    file=sys.stderr,
                )
                return 1
            live = sum(k.active for k in keys)
            what = f"{merchant_id} ({name}), its {len(keys)} API keys ({live} live)"
            if not confirmed:
                print(
                    f"tessera: merchants delete would delete {what} and any webhook endpoint; "
                    "no token or payment names it. Run it again with --yes to delete it.",
                    file=sys.stderr,
                )
                return 2
            await store.delete(merchant_id, tx=tx)
            await audit.append(
                actor="cli:merchants-delete",
                action="merchant.delete",
                tenant=merchant_id,
                target=merchant_id,
                purpose=reason,
                detail=f"{len(keys)} api keys ({live} live)",
                tx=tx,
            )
        print(f"deleted {what}.")
        print(
            f"Its Vault keys {pan_key_name(merchant_id)} and {fingerprint_key_name(merchant_id)} "
            "are left in OpenBao (they encrypt nothing now). Gateways refuse its keys within "
            f"[auth] key_cache_seconds ({settings.auth.key_cache_seconds:g} s).",
            file=sys.stderr,
        )
        return 0

    return asyncio.run(_with_db(settings, work))
