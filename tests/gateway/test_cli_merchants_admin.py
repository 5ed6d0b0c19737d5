"""``tessera merchants list|delete|keys create|list|revoke`` and ``vault provision``'s admin
secret id, through the CLI's ``main`` on SQLite and PostgreSQL, against the real OpenBao.

The commands run in a thread (``main`` runs its own event loop), so that a gateway app can be
running on this test's loop, on the same database, meanwhile: a revoked key must be refused by
every gateway once its cached answer expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hvac
import hvac.exceptions
import pytest
import structlog

from gateway.cli import main
from gateway.merchants import _MIGRATIONS, MerchantStore, hash_api_key
from vault.audit import AuditEntry, AuditLog
from vault.database import migrate, open_database
from vault.provisioning import ADMIN_ROLE

from .conftest import Gateway, MakeGateway

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030}


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    """Runs ``tessera ... --config <this test's file>`` and opens its database."""

    config: Path
    url: str
    capsys: pytest.CaptureFixture[str]

    async def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, [*args, "--config", str(self.config)])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    async def create_merchant(self, name: str) -> tuple[str, str]:
        result = await self("merchants", "create", name)
        assert result.code == 0, result.err
        merchant = re.search(r"merchant: (mer_[a-z0-9]+)", result.out)
        key = re.search(r"api key:\s+(tsk_[A-Za-z0-9]{40})", result.out)
        assert merchant and key
        return merchant.group(1), key.group(1)

    async def store(self) -> AsyncIterator[MerchantStore]:
        db = await open_database(self.url)
        try:
            yield MerchantStore(db)
        finally:
            await db.close()

    async def audit(self, action: str) -> list[AuditEntry]:
        db = await open_database(self.url)
        try:
            return [e for e in await AuditLog(db).entries() if e.action == action]
        finally:
            await db.close()

    async def authenticates(self, key: str) -> bool:
        async for store in self.store():
            return await store.authenticate(key) is not None
        raise AssertionError("unreachable")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures the process's logging (JSON on stderr): put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


@pytest.fixture
def db_url(database_url: str | None, tmp_path: Path) -> str:
    return database_url or f"sqlite:///{tmp_path / 'tessera.db'}"


@pytest.fixture
def cli(
    db_url: str,
    tmp_path: Path,
    provisioned_vault: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    for name in list(os.environ):
        if name.startswith("TESSERA_") and not name.startswith("TESSERA_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TESSERA_VAULT_ADMIN_TOKEN", provisioned_vault.root_token)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n\n[vault]\naddr = "{provisioned_vault.addr}"\n'
    )
    return Cli(config=config, url=db_url, capsys=capsys)


def _no_secrets(result: Result, *keys: str) -> None:
    """Neither a key (unless the command just made it) nor any key's hash is in the output."""
    for key in keys:
        assert key not in result.out + result.err
        assert hash_api_key(key) not in result.out + result.err
    assert "whsec_" not in result.out + result.err


# -- keys ---------------------------------------------------------------------------------------


async def test_keys_create_list_revoke_are_audited_and_revocation_is_immediate_in_the_store(
    cli: Cli,
) -> None:
    merchant, first = await cli.create_merchant("Acme Ltd")

    created = await cli("merchants", "keys", "create", merchant, "--reason", "INC-7 rotation")
    assert created.code == 0, created.err
    key_id = re.search(r"key id:\s+(key_[a-z0-9]{16})", created.out)
    second = re.search(r"api key:\s+(tsk_[A-Za-z0-9]{40})", created.out)
    assert key_id and second, created.out
    assert "shown once" in created.err
    assert await cli.authenticates(second.group(1))

    listed = await cli("merchants", "keys", "list", merchant)
    assert listed.code == 0, listed.err
    _no_secrets(listed, first, second.group(1))
    rows = listed.out.splitlines()[1:]
    assert len(rows) == 2
    assert rows[1].split()[:2] == [key_id.group(1), second.group(1)[:8]]
    assert rows[0].split()[1] == first[:8] and rows[0].split()[-1] == "-"

    as_json = await cli("merchants", "keys", "list", merchant, "--json")
    keys = json.loads(as_json.out)
    assert [k["prefix"] for k in keys] == [first[:8], second.group(1)[:8]]
    assert set(keys[0]) == {"id", "prefix", "created_at", "revoked_at"}
    first_id = keys[0]["id"]
    assert re.fullmatch(r"key_[a-z0-9]{16}", first_id)

    revoked = await cli("merchants", "keys", "revoke", merchant, first_id, "--reason", "leaked")
    assert revoked.code == 0, revoked.err
    assert f"revoked {first_id} ({first[:8]}) of {merchant}" in revoked.out
    assert "key_cache_seconds" in revoked.err
    _no_secrets(revoked, first, second.group(1))
    assert not await cli.authenticates(first)
    assert await cli.authenticates(second.group(1))

    listed = await cli("merchants", "keys", "list", merchant, "--json")
    states = {k["id"]: k["revoked_at"] for k in json.loads(listed.out)}
    assert states[first_id] is not None and states[key_id.group(1)] is None

    [made] = await cli.audit("merchant.key_create")
    assert (made.actor, made.tenant, made.target) == (
        "cli:merchants-keys-create",
        merchant,
        key_id.group(1),
    )
    assert made.purpose == "INC-7 rotation" and made.detail == f"prefix {second.group(1)[:8]}"
    [gone] = await cli.audit("merchant.key_revoke")
    assert (gone.actor, gone.tenant, gone.target, gone.purpose) == (
        "cli:merchants-keys-revoke",
        merchant,
        first_id,
        "leaked",
    )
    verified = await cli("audit", "verify")
    assert verified.code == 0 and "intact" in verified.out

    # Revoking it again changes nothing and audits nothing.
    again = await cli("merchants", "keys", "revoke", merchant, first_id)
    assert again.code == 0 and "already revoked" in again.out
    assert len(await cli.audit("merchant.key_revoke")) == 1


async def test_revoke_by_prefix_by_whole_key_and_an_ambiguous_prefix(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    merchant, first = await cli.create_merchant("Prefixes")
    # Two more keys sharing one prefix (1 in 15 million by chance; forced here).
    import gateway.merchants as merchants_module

    real = merchants_module.new_api_key
    monkeypatch.setattr(merchants_module, "new_api_key", lambda: "tsk_SAME" + real()[8:])
    twins = [
        re.search(r"api key:\s+(\S+)", (await cli("merchants", "keys", "create", merchant)).out)
        for _ in range(2)
    ]
    monkeypatch.setattr(merchants_module, "new_api_key", real)
    a, b = (m.group(1) for m in twins if m)

    ambiguous = await cli("merchants", "keys", "revoke", merchant, "tsk_SAME")
    assert ambiguous.code == 1
    assert "names 2 keys" in ambiguous.err and "give the key id" in ambiguous.err
    assert ambiguous.err.count("key_") == 2
    assert await cli.authenticates(a) and await cli.authenticates(b)

    by_prefix = await cli("merchants", "keys", "revoke", merchant, first[:8])
    assert by_prefix.code == 0, by_prefix.err
    assert not await cli.authenticates(first)

    # The whole key (what an operator holds when it leaked): matched by its hash, never echoed.
    by_key = await cli("merchants", "keys", "revoke", merchant, a)
    assert by_key.code == 0, by_key.err
    _no_secrets(by_key, a, b)
    assert not await cli.authenticates(a) and await cli.authenticates(b)
    assert len(await cli.audit("merchant.key_revoke")) == 2


async def test_revoke_refusals_exit_1_and_change_nothing(cli: Cli) -> None:
    merchant, key = await cli.create_merchant("Refusals")
    _, other_key = await cli.create_merchant("Other")
    cases = {
        ("mer_nosuchmerchant00", key[:8]): "no merchant 'mer_nosuchmerchant00'",
        (merchant, "key_nosuchkey0000000"): "no key of this merchant",
        (merchant, other_key[:8]): "no key of this merchant",  # another merchant's key
        (merchant, other_key): "no key of this merchant",
        (merchant, "tsk_AB"): "first 8 characters",
    }
    for (mer, which), message in cases.items():
        result = await cli("merchants", "keys", "revoke", mer, which)
        assert result.code == 1, (which, result)
        assert message in result.err, (which, result.err)
        assert "Traceback" not in result.err
        _no_secrets(result, key, other_key)
    assert await cli.authenticates(key) and await cli.authenticates(other_key)
    assert await cli.audit("merchant.key_revoke") == []

    unknown = await cli("merchants", "keys", "create", "mer_nosuchmerchant00")
    assert unknown.code == 1 and "no merchant" in unknown.err
    assert "tsk_" not in unknown.out
    unknown = await cli("merchants", "keys", "list", "mer_nosuchmerchant00")
    assert unknown.code == 1 and "no merchant" in unknown.err


async def test_revoke_all_revokes_every_live_key_and_audits_each(cli: Cli) -> None:
    merchant, first = await cli.create_merchant("Offboarded")
    second = re.search(
        r"api key:\s+(\S+)", (await cli("merchants", "keys", "create", merchant)).out
    )
    assert second
    _, kept = await cli.create_merchant("Kept")

    result = await cli("merchants", "keys", "revoke", merchant, "--all", "--reason", "offboard")
    assert result.code == 0, result.err
    assert result.out.count("revoked key_") == 2
    assert "no live API key left" in result.err
    assert not await cli.authenticates(first)
    assert not await cli.authenticates(second.group(1))
    assert await cli.authenticates(kept)
    entries = await cli.audit("merchant.key_revoke")
    assert len(entries) == 2 and {e.purpose for e in entries} == {"offboard"}

    again = await cli("merchants", "keys", "revoke", merchant, "--all")
    assert again.code == 0 and "had no live key" in again.out
    assert len(await cli.audit("merchant.key_revoke")) == 2


# -- list ---------------------------------------------------------------------------------------


async def test_merchants_list_shows_ids_names_live_keys_and_webhooks_without_secrets(
    cli: Cli,
) -> None:
    empty = await cli("merchants", "list")
    assert empty.code == 0 and empty.out.strip() == "No merchants."
    assert json.loads((await cli("merchants", "list", "--json")).out) == []

    acme, acme_key = await cli.create_merchant("Acme Ltd")
    shop, shop_key = await cli.create_merchant("Shop\x1b[31m")
    extra = re.search(r"api key:\s+(\S+)", (await cli("merchants", "keys", "create", acme)).out)
    assert extra
    await cli("merchants", "keys", "revoke", shop, shop_key[:8])
    async for store in cli.store():
        endpoint = await store.set_webhook_endpoint(
            acme, "https://93.184.215.14/hooks?token=merchant-secret"
        )

    listed = await cli("merchants", "list")
    assert listed.code == 0, listed.err
    _no_secrets(listed, acme_key, shop_key, extra.group(1))
    assert endpoint.secret not in listed.out and "merchant-secret" not in listed.out
    assert "\x1b" not in listed.out  # a name cannot drive the operator's terminal
    header, *rows = listed.out.splitlines()
    assert header.split() == ["merchant", "name", "created", "keys", "webhook"]
    assert len(rows) == 2
    assert rows[0].startswith(acme) and "Acme Ltd" in rows[0]
    assert re.search(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+2\s+https://93\.184\.215\.14/hooks\?\.\.\.$", rows[0]
    )
    assert rows[1].startswith(shop) and re.search(r"Z\s+0\s+-$", rows[1])

    data = json.loads((await cli("merchants", "list", "--json")).out)
    assert [(m["id"], m["name"], m["active_keys"]) for m in data] == [
        (acme, "Acme Ltd", 2),
        (shop, "Shop\x1b[31m", 0),
    ]
    assert data[0]["webhook_url"] == "https://93.184.215.14/hooks?..."
    assert data[1]["webhook_url"] is None


# -- delete -------------------------------------------------------------------------------------


async def test_delete_needs_yes_then_removes_the_merchant_and_its_keys_audited(cli: Cli) -> None:
    merchant, key = await cli.create_merchant("Mistake")
    _, kept_key = await cli.create_merchant("Kept")

    # A gateway may accept a live key, or one revoked less than key_cache_seconds (5 s here)
    # ago, and make a token for the merchant after the checks: refused until neither holds.
    live = await cli("merchants", "delete", merchant, "--yes")
    assert live.code == 1 and "revoke them first" in live.err and "--all" in live.err
    assert (await cli("merchants", "keys", "revoke", merchant, "--all")).code == 0
    recent = await cli("merchants", "delete", merchant, "--yes")
    assert recent.code == 1 and "key_cache_seconds (5 s)" in recent.err
    assert await cli.audit("merchant.delete") == []
    cli.config.write_text(cli.config.read_text() + "\n[auth]\nkey_cache_seconds = 0\n")

    unconfirmed = await cli("merchants", "delete", merchant)
    assert unconfirmed.code == 2
    assert "--yes" in unconfirmed.err and "1 API keys (0 live)" in unconfirmed.err

    deleted = await cli("merchants", "delete", merchant, "--yes", "--reason", "created by mistake")
    assert deleted.code == 0, deleted.err
    assert f"deleted {merchant} (Mistake)" in deleted.out
    assert f"tessera-pan-{merchant}" in deleted.err  # says the Vault keys stay
    _no_secrets(deleted, key, kept_key)
    assert not await cli.authenticates(key)
    assert await cli.authenticates(kept_key)
    listed = json.loads((await cli("merchants", "list", "--json")).out)
    assert [m["name"] for m in listed] == ["Kept"]
    [entry] = await cli.audit("merchant.delete")
    assert (entry.actor, entry.tenant, entry.purpose) == (
        "cli:merchants-delete",
        merchant,
        "created by mistake",
    )
    assert (await cli("audit", "verify")).code == 0

    again = await cli("merchants", "delete", merchant, "--yes")
    assert again.code == 1 and "no merchant" in again.err


# -- against running gateways ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def _status(gw: Gateway, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    resp = await gw.client.get("/v1/tokens", params={"fingerprint": "fp"}, headers=headers)
    await resp.read()
    return resp.status


async def test_a_revoked_key_gets_401_from_every_gateway_once_the_key_cache_expires(
    cli: Cli, make_gateway: MakeGateway, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways (two processes' caches) on the CLI's database, ``key_cache_seconds = 30``
    on a controlled clock: the revoked key is still answered from each cache until it
    expires, then refused by both; a key made by the CLI works on both."""
    clock = _Clock()
    monkeypatch.setattr("gateway.merchants.time", SimpleNamespace(monotonic=clock))
    one = await make_gateway(database_url=db_url, auth={"key_cache_seconds": 30})
    two = await make_gateway(database_url=db_url, auth={"key_cache_seconds": 30})
    key = one.api_key
    assert await _status(one, key) == 200 and await _status(two, key) == 200

    created = await cli("merchants", "keys", "create", one.merchant.id)
    new_key = re.search(r"api key:\s+(\S+)", created.out)
    assert new_key
    revoked = await cli("merchants", "keys", "revoke", one.merchant.id, key[:8])
    assert revoked.code == 0, revoked.err

    clock.now += 29.0  # within the cache time: answered from each cache
    assert await _status(one, key) == 200 and await _status(two, key) == 200
    clock.now += 1.0  # expired: asked again, refused
    assert await _status(one, key) == 401 and await _status(two, key) == 401
    assert await _status(one, new_key.group(1)) == 200
    assert await _status(two, new_key.group(1)) == 200


async def test_delete_refuses_a_merchant_with_tokens_and_its_keys_stop_working(
    cli: Cli, make_gateway: MakeGateway, db_url: str
) -> None:
    gw = await make_gateway(database_url=db_url)  # key_cache_seconds = 0: no cache
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert resp.status == 201, await resp.text()

    refused = await cli("merchants", "delete", gw.merchant.id, "--yes")
    assert refused.code == 1
    assert "has 1 tokens and 0 payments" in refused.err and "--all" in refused.err
    assert await _status(gw, gw.api_key) == 200
    assert await cli.audit("merchant.delete") == []

    unused, unused_key = await gw.add_merchant("unused")
    assert await _status(gw, unused_key) == 200
    assert (await cli("merchants", "keys", "revoke", unused.id, "--all")).code == 0
    cli.config.write_text(cli.config.read_text() + "\n[auth]\nkey_cache_seconds = 0\n")
    deleted = await cli("merchants", "delete", unused.id, "--yes")
    assert deleted.code == 0, deleted.err
    assert await _status(gw, unused_key) == 401
    assert await _status(gw, gw.api_key) == 200


# -- migration 3 --------------------------------------------------------------------------------


async def test_keys_made_before_migration_3_get_ids_and_can_be_revoked_by_them(
    cli: Cli,
) -> None:
    db = await open_database(cli.url)
    try:
        await migrate(db, "merchants", _MIGRATIONS[:2])
        await db.execute(
            "INSERT INTO merchants (id, name, token_dedup, created_at) VALUES ($1, $2, $3, $4)",
            "mer_oldmerchantabcde",
            "Old",
            False,
            "2025-01-01T00:00:00+00:00",
        )
        old_keys = ["tsk_" + c * 40 for c in "AB"]
        for key in old_keys:
            await db.execute(
                "INSERT INTO api_keys (key_hash, merchant_id, prefix, created_at) "
                "VALUES ($1, $2, $3, $4)",
                hash_api_key(key),
                "mer_oldmerchantabcde",
                key[:8],
                "2025-01-01T00:00:00+00:00",
            )
    finally:
        await db.close()

    listed = await cli("merchants", "keys", "list", "mer_oldmerchantabcde", "--json")
    assert listed.code == 0, listed.err
    ids = [k["id"] for k in json.loads(listed.out)]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(re.fullmatch(r"key_[a-p]{16}", i) for i in ids)
    assert await cli.authenticates(old_keys[0]) and await cli.authenticates(old_keys[1])
    revoked = await cli("merchants", "keys", "revoke", "mer_oldmerchantabcde", ids[0])
    assert revoked.code == 0, revoked.err
    assert [await cli.authenticates(k) for k in old_keys].count(False) == 1


# -- vault provision: the admin secret id ---------------------------------------------------------


def _admin_secret_ids(vault: Any) -> int:
    client = hvac.Client(url=vault.addr, token=vault.root_token)
    try:
        reply = client.auth.approle.list_secret_id_accessors(ADMIN_ROLE)
    except hvac.exceptions.InvalidPath:
        return 0
    finally:
        client.adapter.close()
    return len(reply["data"]["keys"])


async def test_provision_issues_no_admin_secret_id_unless_asked_for_a_private_file(
    cli: Cli, provisioned_vault: Any, tmp_path: Path
) -> None:
    before = _admin_secret_ids(provisioned_vault)
    plain = await cli("vault", "provision")
    assert plain.code == 0, plain.err
    assert "gateway secret_id:" in plain.out and "admin role_id:" in plain.out
    assert "admin secret_id" not in plain.out
    assert f"bao write -f auth/approle/role/{ADMIN_ROLE}/secret-id" in plain.err
    assert _admin_secret_ids(provisioned_vault) == before  # no live credential nobody holds

    path = tmp_path / "admin-secret-id"
    written = await cli("vault", "provision", "--admin-secret-id-file", str(path))
    assert written.code == 0, written.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret_id = path.read_text().strip()
    assert secret_id and secret_id not in written.out + written.err
    assert f"written to {path} (mode 0600)" in written.out
    assert _admin_secret_ids(provisioned_vault) == before + 1
    role_id = re.search(r"admin role_id:\s+(\S+)", written.out)
    assert role_id
    client = hvac.Client(url=provisioned_vault.addr)
    try:
        login = client.auth.approle.login(role_id.group(1), secret_id, use_token=False)
    finally:
        client.adapter.close()
    assert "tessera-admin" in login["auth"]["policies"]

    refused = await cli("vault", "provision", "--admin-secret-id-file", str(path))
    assert refused.code == 2 and "already exists" in refused.err
    assert path.read_text().strip() == secret_id  # never overwritten
    assert _admin_secret_ids(provisioned_vault) == before + 1
    missing_dir = await cli("vault", "provision", "--admin-secret-id-file", str(tmp_path / "no/f"))
    assert missing_dir.code == 2 and "cannot create it" in missing_dir.err
