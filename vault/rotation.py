"""Key rotation: a new PAN key version, every stored ciphertext rewrapped, old versions retired.

``rotate_tenant_keys`` (behind ``tessera keys rotate``), for one tenant:

1. rotate ``tessera-pan-<tenant>``: new encryptions use the new version at once;
2. rewrap every stored ciphertext under an older version, ``batch_size`` rows per transit
   ``rewrap`` call and per ``UPDATE`` (Vault re-encrypts without ever returning the plaintext);
   a row is only overwritten if it still holds the ciphertext that was rewrapped. For an
   envelope ciphertext (``vault.envelope``) the wrapped data key is what transit rewraps, once
   per distinct key in a batch; the payload sealed under the data key is left as it is;
3. wait ``settle_seconds`` and sweep once more: a tokenization that encrypted under the old
   version just before step 1 may insert its row after the first sweep passed it. With
   envelope encryption a gateway keeps sealing under a data key wrapped by the old version for
   up to its ``data_key_seconds``, so ``tessera keys rotate`` settles for that long plus the
   Vault timeout and a second (``--settle-seconds``);
4. only when no row is left under an older version, raise the key's
   ``min_decryption_version`` to the latest, so the old versions can no longer decrypt
   anything (a stolen old ciphertext or a backup is then useless). If any row could not be
   rewrapped, the minimum stays where it was and the report says how many are left: raising it
   would make those tokens unrevealable. The count is taken again after raising it, and a row
   under an old version that arrived meanwhile puts the minimum back.

The action is audited (actor, tenant, versions, counts).

**The fingerprint key is pinned, not rotated here.** Fingerprints are HMACs of the PAN kept in
the store for dedup and search. Rotating ``tessera-fp-<tenant>`` would change every card's
fingerprint: dedup would stop matching, and every fingerprint merchants saved would stop finding
their tokens. Unlike ciphertext, an HMAC cannot be rewrapped: it can only be recomputed from the
PAN, which means decrypting every token. So routine rotation leaves the HMAC key alone, each
fingerprint names its key version (``fp_v1_…``), and the report shows the version in use. If the
fingerprint key must change (suspected compromise), that is a re-fingerprinting migration: rotate
the HMAC key, decrypt every token in batches, HMAC under the new version, update the rows, and
tell merchants their fingerprints changed; dedup misses while it runs. It needs decrypt and HMAC
rights together, which no single provisioned role has on purpose, so it is not a routine command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from normalization import VaultError
from vault.audit import AuditAction, AuditLog
from vault.client import VaultClient
from vault.envelope import is_envelope, join_envelope, split_envelope
from vault.provisioning import fingerprint_key_name, pan_key_name
from vault.token_store import CiphertextUpdate, TokenStore

__all__ = ["RotationReport", "rotate_all", "rotate_tenant_keys"]


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What one tenant's rotation did."""

    tenant: str
    pan_key: str
    previous_version: int
    new_version: int
    rewrapped: int
    remaining: int
    """Rows still under an older version (rewrap failed): ``min_decryption_version`` not raised."""
    min_decryption_version: int
    fingerprint_key_version: int
    """The pinned HMAC key version fingerprints are made with (unchanged by rotation)."""

    @property
    def complete(self) -> bool:
        return self.remaining == 0


async def rotate_tenant_keys(
    client: VaultClient,
    store: TokenStore,
    tenant: str,
    *,
    batch_size: int = 200,
    audit: AuditLog,
    actor: str,
    settle_seconds: float = 1.0,
) -> RotationReport:
    """Rotate the tenant's PAN key, rewrap its tokens, retire old versions (see module doc).

    ``client`` needs the admin policy (rotate, read/configure keys, rewrap). Raises
    ``VaultError`` if Vault fails; rows already rewrapped stay valid under either version, so
    running it again later finishes the job (it then rotates once more, which is harmless).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive.")
    pan_key = pan_key_name(tenant)
    fingerprint_info = await client.transit_read_key(fingerprint_key_name(tenant))
    previous = int((await client.transit_read_key(pan_key))["latest_version"])
    await client.transit_rotate(pan_key)
    key_info = await client.transit_read_key(pan_key)
    latest = int(key_info["latest_version"])
    min_decryption = int(key_info.get("min_decryption_version", 1))

    rewrapped = await _rewrap_below(client, store, tenant, pan_key, latest, batch_size)
    if settle_seconds > 0:
        await asyncio.sleep(settle_seconds)
    rewrapped += await _rewrap_below(client, store, tenant, pan_key, latest, batch_size)

    remaining = await store.count_below_version(tenant, latest)
    if remaining == 0 and min_decryption < latest:
        await client.transit_configure_key(pan_key, min_decryption_version=latest)
        # A row sealed under an old version that arrives only now (a gateway whose data keys
        # outlived the settle pause) would be unrevealable: put the minimum back and report it.
        remaining = await store.count_below_version(tenant, latest)
        if remaining:
            await client.transit_configure_key(pan_key, min_decryption_version=min_decryption)
        else:
            min_decryption = latest
    report = RotationReport(
        tenant=tenant,
        pan_key=pan_key,
        previous_version=previous,
        new_version=latest,
        rewrapped=rewrapped,
        remaining=remaining,
        min_decryption_version=min_decryption,
        fingerprint_key_version=int(fingerprint_info["latest_version"]),
    )
    await audit.append(
        actor=actor,
        action=AuditAction.KEYS_ROTATE,
        tenant=tenant,
        target=pan_key,
        detail=(
            f"v{previous} to v{latest}; rewrapped {rewrapped}; remaining {remaining};"
            f" min_decryption_version {min_decryption}"
        ),
    )
    return report


async def rotate_all(
    client: VaultClient,
    store: TokenStore,
    *,
    batch_size: int = 200,
    audit: AuditLog,
    actor: str,
    settle_seconds: float = 1.0,
) -> list[RotationReport]:
    """``rotate_tenant_keys`` for every tenant that has tokens in ``store``, one after another."""
    return [
        await rotate_tenant_keys(
            client,
            store,
            tenant,
            batch_size=batch_size,
            audit=audit,
            actor=actor,
            settle_seconds=settle_seconds,
        )
        for tenant in await store.tenants()
    ]


async def _rewrap_below(
    client: VaultClient,
    store: TokenStore,
    tenant: str,
    pan_key: str,
    latest: int,
    batch_size: int,
) -> int:
    """One pass over the tenant's rows under versions older than ``latest``; rows rewrapped."""
    rewrapped = 0
    async for batch in store.iter_for_rewrap(tenant, batch_size, below_version=latest):
        # What transit rewraps: a transit ciphertext itself, or an envelope's wrapped data key,
        # once per distinct key (the cards sealed under one data key share it).
        parts = [_parts(item.ciphertext) for item in batch]
        distinct = list(dict.fromkeys(p[0] for p in parts if p is not None))
        results = dict(zip(distinct, await client.transit_rewrap(pan_key, distinct), strict=True))
        updates = []
        for item, part in zip(batch, parts, strict=True):
            if part is None:
                continue  # malformed: not rewrapped, so counted in ``remaining``
            wrapped, body = part
            new = results[wrapped]
            if isinstance(new, VaultError):
                continue
            updates.append(
                CiphertextUpdate(
                    item.id, item.ciphertext, new if body is None else join_envelope(new, body)
                )
            )
        rewrapped += await store.update_ciphertexts(tenant, updates)
    return rewrapped


def _parts(ciphertext: str) -> tuple[str, str | None] | None:
    """What transit rewraps in a stored ciphertext, and the envelope body to keep (None for a
    transit ciphertext); None for a malformed envelope (that row alone fails)."""
    if not is_envelope(ciphertext):
        return ciphertext, None
    try:
        return split_envelope(ciphertext)
    except ValueError:
        return None
