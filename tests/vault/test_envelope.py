"""Envelope encryption against the real OpenBao, on both databases: cards sealed in process
under transit data keys, revealed through transit decrypt of the wrapped key, rotated by
rewrapping each data key once; refusals, tampering, cancellation and mixed stores."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import secrets
from collections.abc import Callable

import hvac
import pytest

from normalization import TesseraError, VaultError, VaultPermissionDeniedError
from tests.conftest import ProvisionedVault
from tests.vault.conftest import FakeClock, card
from vault.audit import AuditLog
from vault.batcher import TransitBatcher
from vault.client import VaultClient
from vault.cvv import CvvHolder
from vault.envelope import EnvelopeCipher, is_envelope, join_envelope, split_envelope
from vault.provisioning import TOKENIZE_POLICY, pan_key_name, policy_documents
from vault.rotation import rotate_tenant_keys
from vault.token_store import TokenRecord, TokenStore, key_version_of
from vault.tokenization import TokenizationService


class Ticker:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
def envelope(vault_client: VaultClient, batcher: TransitBatcher, ticker: Ticker) -> EnvelopeCipher:
    return EnvelopeCipher(vault_client, batcher, key_seconds=10, monotonic=ticker)


def _service(
    store: TokenStore,
    batcher: TransitBatcher,
    audit: AuditLog,
    clock: FakeClock,
    envelope: EnvelopeCipher | None,
    client: VaultClient | None = None,
) -> TokenizationService:
    return TokenizationService(
        store, batcher, cvv=CvvHolder(), audit=audit, clock=clock, envelope=envelope, client=client
    )


@pytest.fixture
def sealing(
    store: TokenStore,
    batcher: TransitBatcher,
    audit: AuditLog,
    clock: FakeClock,
    envelope: EnvelopeCipher,
) -> TokenizationService:
    return _service(store, batcher, audit, clock, envelope)


async def _reveal_all(
    service: TokenizationService, tenant: str, records: list[TokenRecord]
) -> list[str]:
    revealed = await asyncio.gather(
        *(service.reveal(tenant, r.id, purpose="test", actor="test") for r in records)
    )
    return [card.number.reveal() for card in revealed]


async def test_tokenize_seals_in_process_and_reveal_opens(
    sealing: TokenizationService, envelope: EnvelopeCipher, store: TokenStore, tenant: str
) -> None:
    cards = [card(holder_name="Ada Lovelace" if i % 2 else None) for i in range(40)]
    records = [r for r, _ in await asyncio.gather(*(sealing.tokenize(tenant, c) for c in cards))]

    # Forty concurrent tokenizations, one data key (the fetch is shared), one wrapping.
    assert envelope.data_keys_fetched == 1
    wrapped = {split_envelope(r.ciphertext)[0] for r in records}
    assert len(wrapped) == 1 and next(iter(wrapped)).startswith("vault:v1:")
    for record, c in zip(records, cards, strict=True):
        assert record.ciphertext.startswith("env:vault:v1:") and record.key_version == 1
        assert c.number.reveal() not in record.ciphertext
        stored = await store.get(tenant, record.id)
        assert stored is not None and stored.ciphertext == record.ciphertext

    revealed = await asyncio.gather(
        *(sealing.reveal(tenant, r.id, purpose="test", actor="test") for r in records)
    )
    assert [r.number.reveal() for r in revealed] == [c.number.reveal() for c in cards]
    assert [r.holder_name for r in revealed] == [c.holder_name for c in cards]
    # The key that sealed them is not what opened them: transit unwrapped it, once.
    assert envelope.data_keys_unwrapped == 1


async def test_a_batch_is_sealed_under_one_data_key_and_dedup_still_matches(
    sealing: TokenizationService, envelope: EnvelopeCipher, tenant: str
) -> None:
    cards = [card() for _ in range(300)]
    results = await sealing.tokenize_many(tenant, cards, dedup=True)
    records = [r[0] for r in results if not isinstance(r, TesseraError)]
    assert len(records) == 300 and envelope.data_keys_fetched == 1
    assert all(is_envelope(r.ciphertext) for r in records)
    again, created = await sealing.tokenize(tenant, cards[17], dedup=True)
    assert not created and again.id == records[17].id
    assert await _reveal_all(sealing, tenant, records[:25]) == [
        c.number.reveal() for c in cards[:25]
    ]


async def test_data_keys_turn_over_with_age_and_use(
    vault_client: VaultClient,
    batcher: TransitBatcher,
    store: TokenStore,
    audit: AuditLog,
    clock: FakeClock,
    ticker: Ticker,
    tenant: str,
) -> None:
    envelope = EnvelopeCipher(vault_client, batcher, key_seconds=10, max_uses=5, monotonic=ticker)
    service = _service(store, batcher, audit, clock, envelope)
    first = [(await service.tokenize(tenant, card()))[0] for _ in range(5)]
    assert envelope.data_keys_fetched == 1
    sixth, _ = await service.tokenize(tenant, card())  # the sixth use needs a new key
    assert envelope.data_keys_fetched == 2
    ticker.now += 10  # and so does age
    late, _ = await service.tokenize(tenant, card())
    assert envelope.data_keys_fetched == 3
    keys = {split_envelope(r.ciphertext)[0] for r in [*first, sixth, late]}
    assert len(keys) == 3
    assert len(await _reveal_all(service, tenant, [*first, sixth, late])) == 7


async def test_unwrapped_keys_are_cached_for_their_lifetime_only(
    vault_client: VaultClient,
    batcher: TransitBatcher,
    store: TokenStore,
    audit: AuditLog,
    clock: FakeClock,
    ticker: Ticker,
    tenant: str,
) -> None:
    sealer = _service(store, batcher, audit, clock, EnvelopeCipher(vault_client, batcher))
    records = [r[0] for r in await asyncio.gather(*(sealer.tokenize(tenant, card()) for _ in range(6)))]  # fmt: skip

    caching = EnvelopeCipher(None, batcher, unwrapped_seconds=30, monotonic=ticker)
    revealer = _service(store, batcher, audit, clock, caching)
    await _reveal_all(revealer, tenant, records)
    await _reveal_all(revealer, tenant, records)
    assert caching.data_keys_unwrapped == 1
    ticker.now += 30
    await _reveal_all(revealer, tenant, records[:1])
    assert caching.data_keys_unwrapped == 2

    uncached = EnvelopeCipher(None, batcher, unwrapped_seconds=0)
    revealer = _service(store, batcher, audit, clock, uncached)
    for record in records:
        await revealer.reveal(tenant, record.id, purpose="test", actor="test")
    assert uncached.data_keys_unwrapped == len(records)


async def test_a_transit_mode_gateway_reveals_envelope_tokens_and_vice_versa(
    sealing: TokenizationService,
    store: TokenStore,
    batcher: TransitBatcher,
    audit: AuditLog,
    clock: FakeClock,
    tenant: str,
) -> None:
    transit = _service(store, batcher, audit, clock, None)
    sealed_card, transit_card = card(), card()
    sealed, _ = await sealing.tokenize(tenant, sealed_card)
    plain, _ = await transit.tokenize(tenant, transit_card)
    assert is_envelope(sealed.ciphertext) and plain.ciphertext.startswith("vault:v1:")
    for service in (transit, sealing):
        assert await _reveal_all(service, tenant, [sealed, plain]) == [
            sealed_card.number.reveal(),
            transit_card.number.reveal(),
        ]


async def test_a_ciphertext_moved_to_another_tenant_or_altered_does_not_open(
    sealing: TokenizationService,
    store: TokenStore,
    envelope: EnvelopeCipher,
    batcher: TransitBatcher,
    new_tenant: Callable[[], str],
) -> None:
    tenant, other = new_tenant(), new_tenant()
    the_card = card()
    record, _ = await sealing.tokenize(tenant, the_card)
    pan = the_card.number.reveal()

    wrapped, body = split_envelope(record.ciphertext)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    tampered = join_envelope(wrapped, base64.b64encode(bytes(raw)).decode())
    for bad in (tampered, "env:vault:v1:abc:!!notbase64", "env:nothing"):
        with pytest.raises(VaultError) as caught:
            await envelope.open(pan_key_name(tenant), bad)
        assert pan not in str(caught.value) and pan[-4:] not in str(caught.value)

    # The other tenant's key cannot unwrap this tenant's data key, even after this tenant's
    # reveal cached it (the cache is per transit key).
    await envelope.open(pan_key_name(tenant), record.ciphertext)
    for cipher in (envelope, EnvelopeCipher(None, batcher)):
        with pytest.raises(VaultError, match="Transit decrypt failed"):
            await cipher.open(pan_key_name(other), record.ciphertext)

    # And with the right data key at hand (an unwrapper that ignores which key it was asked
    # for), the payload is still bound to the tenant's key name.
    class Confused:
        async def decrypt(self, key: str, ciphertext: str) -> bytes:
            return await batcher.decrypt(pan_key_name(tenant), ciphertext)

    with pytest.raises(VaultError, match="does not decrypt") as caught:
        await EnvelopeCipher(None, Confused()).open(pan_key_name(other), record.ciphertext)
    assert pan not in str(caught.value)


async def test_a_policy_without_data_keys_falls_back_to_transit_and_says_so(
    provisioned_vault: ProvisionedVault,
    store: TokenStore,
    audit: AuditLog,
    clock: FakeClock,
    ticker: Ticker,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The tokenize policy as it was before envelope encryption: encrypt and hmac only.
    root = hvac.Client(url=provisioned_vault.addr, token=provisioned_vault.root_token)
    name = f"tsr-old-tokenize-{secrets.token_hex(3)}"
    old = policy_documents()[TOKENIZE_POLICY].replace(
        'path "transit/datakey/plaintext/tessera-pan-*" { capabilities = ["update"] }\n', ""
    )
    assert "datakey" not in old
    root.sys.create_or_update_policy(name, old)
    token = root.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    async with VaultClient(provisioned_vault.addr, token=token) as limited:
        limited_batcher = TransitBatcher(limited)
        try:
            envelope = EnvelopeCipher(limited, limited_batcher, monotonic=ticker)
            service = _service(store, limited_batcher, audit, clock, envelope)
            with caplog.at_level(logging.WARNING, logger="vault.envelope"):
                one, _ = await service.tokenize(tenant, card())
                many = await service.tokenize_many(tenant, [card(), card()])
            assert one.ciphertext.startswith("vault:v1:")
            assert all(
                not isinstance(r, TesseraError) and r[0].ciphertext.startswith("vault:v1:")
                for r in many
            )
            # Asked once, then left alone for a while; the operator is told what to run.
            warnings = [r for r in caplog.records if r.name == "vault.envelope"]
            assert len(warnings) == 1 and warnings[0].getMessage() == "envelope_datakey_denied"
            assert warnings[0].key == pan_key_name(tenant)  # type: ignore[attr-defined]
            assert "tessera vault provision" in warnings[0].hint  # type: ignore[attr-defined]
            assert not envelope.may_seal(pan_key_name(tenant))
            ticker.now += 61
            assert envelope.may_seal(pan_key_name(tenant))
            with pytest.raises(VaultPermissionDeniedError):
                await envelope.seal(pan_key_name(tenant), [b"x"])
        finally:
            await limited_batcher.close()


async def test_the_gateway_approle_may_make_data_keys(
    provisioned_vault: ProvisionedVault, tenant: str
) -> None:
    credentials = provisioned_vault.result.gateway_credentials()
    async with VaultClient(provisioned_vault.addr, approle=credentials) as gateway:
        plaintext, wrapped = await gateway.transit_datakey(pan_key_name(tenant))
        assert len(plaintext) == 32 and wrapped.startswith("vault:v1:")
        (unwrapped,) = await gateway.transit_decrypt(pan_key_name(tenant), [wrapped])
        assert unwrapped == plaintext


async def test_a_cancelled_caller_does_not_break_the_shared_fetch(
    vault_client: VaultClient, batcher: TransitBatcher, tenant: str
) -> None:
    envelope = EnvelopeCipher(vault_client, batcher)
    key = pan_key_name(tenant)
    callers = [asyncio.ensure_future(envelope.seal(key, [b"4111"])) for _ in range(5)]
    await asyncio.sleep(0)
    callers[0].cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    sealed = [r[0] for r in results[1:] if isinstance(r, list)]
    assert len(sealed) == 4 and envelope.data_keys_fetched == 1
    assert all([await envelope.open(key, c) for c in sealed])


async def test_rotation_rewraps_each_data_key_once_and_retires_the_old_version(
    vault_client: VaultClient,
    batcher: TransitBatcher,
    store: TokenStore,
    audit: AuditLog,
    clock: FakeClock,
    tenant: str,
) -> None:
    sealer = _service(store, batcher, audit, clock, EnvelopeCipher(vault_client, batcher))
    transit = _service(store, batcher, audit, clock, None)
    cards = [card() for _ in range(260)]
    sealed = [r[0] for r in await sealer.tokenize_many(tenant, cards[:250]) if not isinstance(r, TesseraError)]  # fmt: skip
    plain = [(await transit.tokenize(tenant, c))[0] for c in cards[250:]]
    old_ciphertext = sealed[0].ciphertext

    report = await rotate_tenant_keys(
        vault_client, store, tenant, batch_size=100, audit=audit, actor="test", settle_seconds=0
    )
    assert report.rewrapped == 260 and report.remaining == 0
    assert report.min_decryption_version == 2

    after = [await store.get(tenant, r.id) for r in [*sealed, *plain]]
    assert all(r is not None and r.key_version == 2 for r in after)
    assert all(r is not None and r.ciphertext.startswith("env:vault:v2:") for r in after[:250])
    # The sealed payload is untouched, only its data key was rewrapped.
    assert split_envelope(after[0].ciphertext)[1] == split_envelope(old_ciphertext)[1]  # type: ignore[union-attr]

    fresh = _service(store, batcher, audit, clock, EnvelopeCipher(None, batcher))
    assert await _reveal_all(fresh, tenant, [*sealed, *plain]) == [c.number.reveal() for c in cards]
    # A row from before the rotation (a backup) no longer opens: its wrapped key is retired.
    with pytest.raises(VaultError):
        await EnvelopeCipher(None, batcher).open(pan_key_name(tenant), old_ciphertext)


def test_key_versions_and_envelope_parts() -> None:
    assert key_version_of("env:vault:v3:d3JhcHBlZA==:Ym9keQ==") == 3
    assert split_envelope("env:vault:v3:d3JhcHBlZA==:Ym9keQ==") == (
        "vault:v3:d3JhcHBlZA==",
        "Ym9keQ==",
    )
    for bad in ("vault:v1:abc", "env:", "env:vault:v1:abc", "env:other:v1:abc:def"):
        with pytest.raises(ValueError):
            split_envelope(bad)
    assert 'path "transit/datakey/plaintext/tessera-pan-*"' in policy_documents()[TOKENIZE_POLICY]


async def test_a_row_sealed_under_the_old_version_after_the_count_puts_the_minimum_back(
    vault_client: VaultClient,
    batcher: TransitBatcher,
    store: TokenStore,
    audit: AuditLog,
    clock: FakeClock,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A gateway holding a data key from before the rotation, longer than the settle pause.
    late_gateway = _service(store, batcher, audit, clock, EnvelopeCipher(vault_client, batcher))
    early, _ = await late_gateway.tokenize(tenant, card())
    counted = store.count_below_version
    late: list[TokenRecord] = []

    async def count_then_a_late_row(t: str, version: int) -> int:
        result = await counted(t, version)
        if not late:  # right after the first count: the late row lands
            late.append((await late_gateway.tokenize(t, card()))[0])
        return result

    monkeypatch.setattr(store, "count_below_version", count_then_a_late_row)
    report = await rotate_tenant_keys(
        vault_client, store, tenant, audit=audit, actor="test", settle_seconds=0
    )
    assert late and late[0].key_version == 1
    assert report.remaining == 1 and not report.complete and report.min_decryption_version == 1
    key = await vault_client.transit_read_key(pan_key_name(tenant))
    assert key["min_decryption_version"] == 1
    fresh = _service(store, batcher, audit, clock, EnvelopeCipher(None, batcher))
    assert len(await _reveal_all(fresh, tenant, [early, late[0]])) == 2

    monkeypatch.setattr(store, "count_below_version", counted)
    again = await rotate_tenant_keys(
        vault_client, store, tenant, audit=audit, actor="test", settle_seconds=0
    )
    assert again.complete and again.min_decryption_version == again.new_version == 3
    assert len(await _reveal_all(fresh, tenant, [early, late[0]])) == 2


async def test_a_malformed_envelope_row_fails_alone_in_a_rotation(
    sealing: TokenizationService,
    vault_client: VaultClient,
    store: TokenStore,
    audit: AuditLog,
    tenant: str,
) -> None:
    good, _ = await sealing.tokenize(tenant, card())
    broken = dataclasses.replace(good, id="tok_" + "B" * 24, ciphertext="env:vault:v1:broken")
    assert await store.insert_many([broken]) == {(tenant, broken.id)}
    report = await rotate_tenant_keys(
        vault_client, store, tenant, audit=audit, actor="test", settle_seconds=0
    )
    assert report.rewrapped == 1 and report.remaining == 1 and report.min_decryption_version == 1
    assert await _reveal_all(sealing, tenant, [good])


async def test_purge_drops_keys_past_their_lifetime(
    vault_client: VaultClient, batcher: TransitBatcher, ticker: Ticker, tenant: str
) -> None:
    envelope = EnvelopeCipher(
        vault_client, batcher, key_seconds=10, unwrapped_seconds=30, monotonic=ticker
    )
    key = pan_key_name(tenant)
    (sealed,) = await envelope.seal(key, [b"4111111111111111"])
    await envelope.open(key, sealed)
    envelope.purge()
    assert envelope.seal_now(key, b"x") is not None  # both still fresh
    ticker.now += 10
    envelope.purge()
    assert envelope._sealing == {} and len(envelope._unwrapped) == 1
    ticker.now += 20
    envelope.purge()
    assert not envelope._unwrapped


async def test_waiters_of_a_failed_fetch_get_their_own_exception(
    batcher: TransitBatcher, ticker: Ticker
) -> None:
    class Down:
        async def transit_datakey(self, key: str, *, bits: int = 256) -> tuple[bytes, str]:
            await asyncio.sleep(0.01)
            raise VaultError("The vault is unreachable.")

    envelope = EnvelopeCipher(Down(), batcher, monotonic=ticker)
    errors = await asyncio.gather(
        *(envelope.seal("tessera-pan-x", [b"1"]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(e, VaultError) for e in errors)
    assert len({id(e) for e in errors}) == 3
