"""Key rotation against the real OpenBao, on both databases: every token stays revealable,
old key versions are retired, failures keep them, the action is audited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from normalization import TesseraError, VaultError
from tests.vault.conftest import card
from vault.audit import AuditLog
from vault.client import VaultClient
from vault.provisioning import fingerprint_key_name, pan_key_name
from vault.rotation import rotate_all, rotate_tenant_keys
from vault.token_store import CiphertextUpdate, TokenRecord, TokenStore
from vault.tokenization import TokenizationService


async def _tokenize(service: TokenizationService, tenant: str, count: int) -> list[TokenRecord]:
    cards = [card() for _ in range(count)]
    results = await service.tokenize_many(tenant, cards, dedup=True)
    records = [r[0] for r in results if not isinstance(r, TesseraError)]
    assert len(records) == count
    return records


async def test_rotation_rewraps_everything_and_retires_the_old_version(
    service: TokenizationService,
    store: TokenStore,
    audit: AuditLog,
    vault_client: VaultClient,
    tenant: str,
) -> None:
    cards = [card() for _ in range(450)]
    results = await service.tokenize_many(tenant, cards, dedup=True)
    records = [r[0] for r in results if not isinstance(r, TesseraError)]
    old_ciphertext = records[0].ciphertext

    report = await rotate_tenant_keys(
        vault_client, store, tenant, batch_size=200, audit=audit, actor="admin:ops",
        settle_seconds=0,
    )  # fmt: skip
    assert (report.previous_version, report.new_version) == (1, 2)
    assert report.rewrapped == 450 and report.remaining == 0 and report.complete
    assert report.min_decryption_version == 2
    assert report.fingerprint_key_version == 1

    key = await vault_client.transit_read_key(pan_key_name(tenant))
    assert key["min_decryption_version"] == 2 and key["latest_version"] == 2
    assert await store.count_below_version(tenant, 2) == 0
    # A ciphertext from before the rotation (a backup, a leak) no longer decrypts.
    (stale,) = await vault_client.transit_decrypt(pan_key_name(tenant), [old_ciphertext])
    assert isinstance(stale, VaultError)

    revealed = await asyncio.gather(
        *(service.reveal(tenant, r.id, purpose="rotation-check", actor="test") for r in records)
    )
    assert [r.number for r in revealed] == [c.number for c in cards]
    # Fingerprints are pinned: dedup and search still find the old tokens.
    again, created = await service.tokenize(tenant, cards[7], dedup=True)
    assert not created and again.id == records[7].id
    new, _ = await service.tokenize(tenant, card())
    assert new.key_version == 2

    rotations = [e for e in await audit.entries() if e.action == "keys.rotate"]
    assert len(rotations) == 1
    assert rotations[0].actor == "admin:ops" and rotations[0].tenant == tenant
    assert "rewrapped 450" in (rotations[0].detail or "")
    assert (await audit.verify()).ok


async def test_rotating_again_and_all_tenants(
    service: TokenizationService,
    store: TokenStore,
    audit: AuditLog,
    vault_client: VaultClient,
    new_tenant: Callable[[], str],
) -> None:
    tenants = [new_tenant(), new_tenant()]
    tokens = {tenant: await _tokenize(service, tenant, 30) for tenant in tenants}
    # Other tenants' tokens in a shared store are rotated too, so restrict the check to ours.
    first = await rotate_all(vault_client, store, audit=audit, actor="cli", settle_seconds=0)
    second = await rotate_all(vault_client, store, audit=audit, actor="cli", settle_seconds=0)
    ours = [r for r in [*first, *second] if r.tenant in tenants]
    assert sorted((r.tenant, r.new_version) for r in ours) == sorted(
        (t, v) for t in tenants for v in (2, 3)
    )
    assert all(r.complete and r.rewrapped == 30 for r in ours)
    for tenant in tenants:
        key = await vault_client.transit_read_key(pan_key_name(tenant))
        assert key["min_decryption_version"] == 3
        for record in tokens[tenant][:5]:
            revealed = await service.reveal(tenant, record.id, purpose="check", actor="test")
            assert revealed.number.last4 == record.last4
        fingerprint_key = await vault_client.transit_read_key(fingerprint_key_name(tenant))
        assert fingerprint_key["latest_version"] == 1


async def test_a_row_that_cannot_be_rewrapped_keeps_old_versions_alive(
    service: TokenizationService,
    store: TokenStore,
    audit: AuditLog,
    vault_client: VaultClient,
    tenant: str,
) -> None:
    good = await _tokenize(service, tenant, 5)
    # A ciphertext Vault cannot rewrap (corrupted in the database, say).
    (broken,) = await _tokenize(service, tenant, 1)
    corrupted = CiphertextUpdate(broken.id, broken.ciphertext, "vault:v1:bm90LWEtY2lwaGVy")
    assert await store.update_ciphertexts(tenant, [corrupted]) == 1

    report = await rotate_tenant_keys(
        vault_client, store, tenant, audit=audit, actor="admin", settle_seconds=0
    )
    assert report.rewrapped == 5 and report.remaining == 1 and not report.complete
    assert report.min_decryption_version == 1
    key = await vault_client.transit_read_key(pan_key_name(tenant))
    assert key["min_decryption_version"] == 1
    revealed = await service.reveal(tenant, good[0].id, purpose="check", actor="test")
    assert revealed.number.last4 == good[0].last4
