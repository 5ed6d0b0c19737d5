"""The tokenization service against the real OpenBao, on both databases.

Covers tokenize/dedup/search/delete/expiry, both formats, batches, concurrency, reveal and the
CVV, Vault failures (nothing stored), and the canary sweep (RELIABILITY.md items 20, 26-29, 33).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from normalization import (
    CardData,
    CardNumber,
    InvalidRequestError,
    TesseraError,
    TokenIntegrityError,
    TokenNotFoundError,
    VaultError,
    VaultSealedError,
    VaultUnavailableError,
    luhn_valid,
    mask_pan,
)
from tests.conftest import free_port
from tests.vault.canary import find_leaks, find_leaks_in, new_canary
from tests.vault.conftest import Database, FakeClock, card, random_pan
from vault import tokenization
from vault.audit import AuditLog
from vault.batcher import TransitBatcher
from vault.client import VaultClient
from vault.cvv import CvvHolder
from vault.database import open_database
from vault.devserver import DevServer
from vault.provisioning import ensure_tenant_keys, provision
from vault.token_store import CiphertextUpdate, TokenRecord, TokenStore
from vault.tokenization import TokenizationService
from vault.tokens import new_token

# -- tokenize, get, search, delete ------------------------------------------------------------


async def test_tokenize_opaque(service: TokenizationService, tenant: str) -> None:
    pan = random_pan("424242")
    record, created = await service.tokenize(tenant, card(pan, holder_name="Ada Lovelace"))
    assert created
    assert record.id.startswith("tok_") and len(record.id) == 28
    assert record.fingerprint.startswith("fp_v1_")
    assert (record.bin, record.last4, record.brand) == ("424242", pan[-4:], "visa")
    assert record.ciphertext.startswith("vault:v1:") and pan not in record.ciphertext
    assert record.key_version == 1 and record.expires_at is None
    assert await service.get(tenant, record.id) == record
    assert record.public_view()["card"]["last4"] == pan[-4:]


async def test_fingerprints_are_keyed_per_tenant(
    service: TokenizationService, new_tenant: Callable[[], str]
) -> None:
    first, second = new_tenant(), new_tenant()
    pan = CardNumber(random_pan())
    one, other = await service.fingerprint(first, pan), await service.fingerprint(second, pan)
    assert one != other  # a keyed HMAC, not a bare hash of the PAN
    assert one == await service.fingerprint(first, pan)
    record, _ = await service.tokenize(first, card(pan.reveal()))
    assert record.fingerprint == one
    assert [r.id for r in await service.find(first, one)] == [record.id]
    assert await service.find(second, one) == []


async def test_tenants_cannot_see_each_other(
    service: TokenizationService, new_tenant: Callable[[], str]
) -> None:
    owner, intruder = new_tenant(), new_tenant()
    record, _ = await service.tokenize(owner, card())
    with pytest.raises(TokenNotFoundError):
        await service.get(intruder, record.id)
    with pytest.raises(TokenNotFoundError):
        await service.delete(intruder, record.id, actor="merchant:intruder")
    with pytest.raises(TokenNotFoundError):
        await service.reveal(intruder, record.id, purpose="egress", actor="svc")
    assert await service.get(owner, record.id) == record


async def test_dedup_returns_the_existing_token(service: TokenizationService, tenant: str) -> None:
    pan = random_pan()
    first, created_first = await service.tokenize(tenant, card(pan), dedup=True)
    again, created_again = await service.tokenize(tenant, card(pan), dedup=True)
    assert created_first and not created_again
    assert again.id == first.id
    other, created_other = await service.tokenize(tenant, card(), dedup=True)
    assert created_other and other.id != first.id
    # Without dedup every call makes a new token; dedup is per format.
    plain, created_plain = await service.tokenize(tenant, card(pan))
    assert created_plain and plain.id != first.id
    numeric, created_numeric = await service.tokenize(
        tenant, card(pan), token_format="numeric", dedup=True
    )
    assert created_numeric and numeric.id != first.id
    assert len(await service.find(tenant, first.fingerprint)) == 3


async def test_dedup_hit_takes_a_renewed_expiry(service: TokenizationService, tenant: str) -> None:
    pan = random_pan()
    year = datetime.now(UTC).year
    first, _ = await service.tokenize(tenant, card(pan, exp_year=year + 1), dedup=True)
    renewed, created = await service.tokenize(
        tenant, card(pan, exp_year=year + 4, holder_name="New Name"), dedup=True
    )
    assert not created and renewed.id == first.id and renewed.exp_year == year + 4
    assert (await service.get(tenant, first.id)).exp_year == year + 4
    revealed = await service.reveal(tenant, first.id, purpose="test", actor="test")
    assert revealed.holder_name == "New Name" and revealed.exp_year == year + 4


async def test_a_dedup_hit_never_takes_an_older_card(
    service: TokenizationService, tenant: str
) -> None:
    """An old copy of a renewed card (a saved form, an old file) changes nothing; a holder name
    replaces the stored one only with an expiry no older; no name keeps the stored one."""
    pan = random_pan()
    year = datetime.now(UTC).year

    async def stored() -> tuple[int, str | None]:
        revealed = await service.reveal(tenant, first.id, purpose="test", actor="test")
        return revealed.exp_year, revealed.holder_name

    first, _ = await service.tokenize(
        tenant, card(pan, exp_year=year + 1, holder_name="A"), dedup=True
    )
    renewed, _ = await service.tokenize(tenant, card(pan, exp_year=year + 4), dedup=True)
    assert renewed.id == first.id and renewed.exp_year == year + 4
    assert await stored() == (year + 4, "A")  # renewed; the name kept
    old, created = await service.tokenize(
        tenant, card(pan, exp_year=year + 1, holder_name="Old"), dedup=True
    )
    assert not created and old.id == first.id and old.exp_year == year + 4
    assert await stored() == (year + 4, "A")  # the old copy took nothing
    # ... not even its CVC: the renewed card must not go out with the old card's code.
    await service.tokenize(tenant, card(pan, exp_year=year + 4, cvc="444"), dedup=True)
    await service.tokenize(tenant, card(pan, exp_year=year + 1, cvc="111"), dedup=True)
    revealed = await service.reveal(
        tenant, first.id, purpose="test", actor="test", consume_cvc=True
    )
    assert revealed.cvc is not None and revealed.cvc.reveal() == "444"
    await service.tokenize(tenant, card(pan, exp_year=year + 4, holder_name="B"), dedup=True)
    assert await stored() == (year + 4, "B")


async def test_a_dedup_hit_never_shortens_a_token(
    service: TokenizationService, tenant: str, clock: FakeClock
) -> None:
    """The token lives as long as the longest ask: a request without TTL makes it permanent,
    a longer TTL extends it, a shorter one or a TTL on a permanent token changes nothing."""
    pan = random_pan()
    first, _ = await service.tokenize(tenant, card(pan), ttl_seconds=60, dedup=True)
    longer, created = await service.tokenize(tenant, card(pan), ttl_seconds=600, dedup=True)
    assert not created and longer.id == first.id and longer.expires_at is not None
    assert (longer.expires_at - first.created_at).total_seconds() == 600
    shorter, _ = await service.tokenize(tenant, card(pan), ttl_seconds=60, dedup=True)
    assert shorter.expires_at == longer.expires_at
    forever, _ = await service.tokenize(tenant, card(pan), dedup=True)
    assert forever.id == first.id and forever.expires_at is None
    again, _ = await service.tokenize(tenant, card(pan), ttl_seconds=60, dedup=True)
    assert again.expires_at is None
    clock.advance(3600)
    assert (await service.get(tenant, first.id)).expires_at is None  # stored, not only returned


async def test_copies_of_a_card_in_one_batch_show_the_token_as_it_ended(
    service: TokenizationService, tenant: str
) -> None:
    pan = random_pan()
    year = datetime.now(UTC).year
    results = await service.tokenize_many(
        tenant, [card(pan, exp_year=year + y) for y in (1, 4, 2)], dedup=True
    )
    assert [r[1] for r in results if not isinstance(r, TesseraError)] == [True, False, False]
    records = [r[0] for r in results if not isinstance(r, TesseraError)]
    assert {r.id for r in records} == {records[0].id}
    assert [r.exp_year for r in records] == [year + 4] * 3
    assert (await service.get(tenant, records[0].id)).exp_year == year + 4


async def test_delete_is_audited_and_forgets(
    service: TokenizationService, tenant: str, audit: AuditLog, cvv: CvvHolder
) -> None:
    record, _ = await service.tokenize(tenant, card(cvc="123"))
    assert cvv.holds(tenant, record.id)
    await service.delete(tenant, record.id, actor="merchant:acme")
    assert not cvv.holds(tenant, record.id)
    with pytest.raises(TokenNotFoundError):
        await service.get(tenant, record.id)
    with pytest.raises(TokenNotFoundError):
        await service.delete(tenant, record.id, actor="merchant:acme")
    (entry,) = await audit.entries()
    assert (entry.action, entry.actor, entry.tenant, entry.target) == (
        "token.delete",
        "merchant:acme",
        tenant,
        record.id,
    )


async def test_expiry_and_sweeper(
    service: TokenizationService, tenant: str, clock: FakeClock, store: TokenStore
) -> None:
    short, _ = await service.tokenize(tenant, card(), ttl_seconds=60)
    forever, _ = await service.tokenize(tenant, card())
    assert short.expires_at is not None
    assert (short.expires_at - short.created_at).total_seconds() == 60
    clock.advance(59)
    assert await service.get(tenant, short.id) == short
    clock.advance(2)
    with pytest.raises(TokenNotFoundError):
        await service.get(tenant, short.id)
    with pytest.raises(TokenNotFoundError):  # gone for DELETE too, before the sweeper runs
        await service.delete(tenant, short.id, actor="merchant:acme")
    assert await service.find(tenant, short.fingerprint) == []
    with pytest.raises(TokenNotFoundError):
        await service.reveal(tenant, short.id, purpose="egress", actor="svc")
    assert await service.sweep_expired() == 1
    assert await store.count(tenant) == 1
    assert await service.get(tenant, forever.id) == forever


async def test_reveal_with_a_record_in_hand(
    service: TokenizationService,
    tenant: str,
    new_tenant: Callable[[], str],
    clock: FakeClock,
    audit: AuditLog,
) -> None:
    """The record a payment just read is decrypted as is (no second read), still audited; one
    of another tenant or token is not trusted, and an expired one is refused."""
    pan = random_pan()
    record, _ = await service.tokenize(tenant, card(pan, cvc="321"), ttl_seconds=60)
    other, _ = await service.tokenize(tenant, card())
    revealed = await service.reveal(
        tenant, record.id, purpose="egress", actor="svc", consume_cvc=True, record=record
    )
    assert revealed.number.reveal() == pan and revealed.cvc is not None
    assert [e.target for e in await audit.entries()] == [record.id]
    # A record that is not this token's is ignored: the token is read and decrypted.
    assert (
        await service.reveal(tenant, record.id, purpose="egress", actor="svc", record=other)
    ).number.reveal() == pan
    with pytest.raises(TokenNotFoundError):  # another tenant's token, whatever is in hand
        await service.reveal(new_tenant(), record.id, purpose="x", actor="svc", record=record)
    clock.advance(61)
    with pytest.raises(TokenNotFoundError):
        await service.reveal(tenant, record.id, purpose="egress", actor="svc", record=record)


async def test_expired_dedup_token_is_replaced(
    service: TokenizationService, tenant: str, clock: FakeClock
) -> None:
    pan = random_pan()
    old, _ = await service.tokenize(tenant, card(pan), ttl_seconds=10, dedup=True)
    clock.advance(11)
    new, created = await service.tokenize(tenant, card(pan), ttl_seconds=10, dedup=True)
    assert created and new.id != old.id


async def test_invalid_options_are_refused(service: TokenizationService, tenant: str) -> None:
    with pytest.raises(InvalidRequestError):
        await service.tokenize(tenant, card(), token_format="weird")  # type: ignore[arg-type]
    for ttl in (0, -5, 10**12):
        with pytest.raises(InvalidRequestError):
            await service.tokenize(tenant, card(), ttl_seconds=ttl)


async def test_a_pan_is_never_a_token_id(service: TokenizationService, tenant: str) -> None:
    pan = random_pan()
    with pytest.raises(TokenNotFoundError) as caught:
        await service.get(tenant, pan)
    assert pan not in str(caught.value) and pan not in repr(caught.value)


# -- numeric tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [13, 16, 19])
async def test_numeric_tokens(service: TokenizationService, tenant: str, length: int) -> None:
    pan = random_pan("411111", length)
    record, _ = await service.tokenize(tenant, card(pan), token_format="numeric")
    assert len(record.id) == length and record.id.isdigit()
    assert not luhn_valid(record.id)
    assert record.id[-4:] == pan[-4:]
    if length >= 15:
        assert record.id[:6] == "411111"
    revealed = await service.reveal(tenant, record.id, purpose="test", actor="test")
    assert revealed.number.reveal() == pan


async def test_numeric_collision_draws_again(
    service: TokenizationService, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pan = random_pan("411111")
    taken, _ = await service.tokenize(tenant, card(pan), token_format="numeric")
    draws = iter([taken.id, taken.id])
    real = tokenization.new_token

    def next_token(token_format: str, card_pan: str) -> str:
        return next(draws, None) or real(token_format, card_pan)  # type: ignore[arg-type]

    monkeypatch.setattr(tokenization, "new_token", next_token)
    record, created = await service.tokenize(tenant, card(pan), token_format="numeric")
    assert created and record.id != taken.id
    assert (await service.get(tenant, taken.id)).ciphertext == taken.ciphertext


async def test_collisions_that_never_end_fail_cleanly(
    service: TokenizationService, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken, _ = await service.tokenize(tenant, card(), token_format="numeric")
    monkeypatch.setattr(tokenization, "new_token", lambda *_: taken.id)
    with pytest.raises(TesseraError) as caught:
        await service.tokenize(tenant, card(), token_format="numeric")
    assert caught.value.code == "token_allocation_failed"


async def test_a_batch_item_without_a_free_id_fails_alone_after_every_attempt(
    service: TokenizationService, store: TokenStore, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One shared insert, then the retries of the stuck item alone: ``_INSERT_ATTEMPTS`` in all."""
    stuck = random_pan("411111")
    taken, _ = await service.tokenize(tenant, card(stuck), token_format="numeric")
    real_insert = store.insert_many
    statements: list[int] = []

    def next_token(token_format: str, card_pan: str) -> str:
        return taken.id if card_pan == stuck else new_token(token_format, card_pan)  # type: ignore[arg-type]

    async def counted_insert(records: Sequence[TokenRecord]) -> set[tuple[str, str]]:
        statements.append(len(records))
        return await real_insert(records)

    monkeypatch.setattr(tokenization, "new_token", next_token)
    monkeypatch.setattr(store, "insert_many", counted_insert)
    first, failed, last = await service.tokenize_many(
        tenant, [card(), card(stuck), card()], token_format="numeric"
    )
    assert isinstance(failed, TesseraError) and failed.code == "token_allocation_failed"
    assert not isinstance(first, TesseraError) and not isinstance(last, TesseraError)
    assert statements == [3] + [1] * (tokenization._INSERT_ATTEMPTS - 1)
    assert await store.count(tenant) == 3
    assert (await service.get(tenant, taken.id)).ciphertext == taken.ciphertext


# -- batches and concurrency ------------------------------------------------------------------


async def test_batch_with_invalid_items_and_duplicates(
    service: TokenizationService, tenant: str
) -> None:
    """The gateway's way: validate each raw item, tokenize the valid ones, keep the order."""
    known = random_pan()
    raw: list[dict[str, object]] = [
        {"number": known, "exp_month": 12, "exp_year": 2031},
        {"number": "4242424242424241", "exp_month": 12, "exp_year": 2031},  # fails Luhn
        {"number": random_pan(), "exp_month": 13, "exp_year": 2031},
        {"number": random_pan(), "exp_month": 1, "exp_year": 2031, "cvc": "12a"},
        {"number": known, "exp_month": 12, "exp_year": 2031},  # the same card again
        {"number": random_pan("5555"), "exp_month": 6, "exp_year": 2032, "cvc": "321"},
    ]
    valid: list[CardData] = []
    invalid = 0
    for item in raw:
        try:
            valid.append(CardData.model_validate(item))
        except ValidationError as exc:
            invalid += 1
            assert str(item["number"]) not in str(exc)
    assert invalid == 3
    results = await service.tokenize_many(tenant, valid, dedup=True)
    assert len(results) == 3
    first, duplicate, mastercard = results
    assert not isinstance(first, TesseraError) and not isinstance(duplicate, TesseraError)
    assert duplicate[0].id == first[0].id  # dedup inside one batch
    assert (first[1], duplicate[1]) == (True, False)
    assert not isinstance(mastercard, TesseraError) and mastercard[0].brand == "mastercard"
    assert await service.tokenize_many(tenant, []) == []


async def test_batch_of_a_thousand(service: TokenizationService, tenant: str) -> None:
    cards = [card(cvc="999") for _ in range(1000)]
    results = await service.tokenize_many(tenant, cards, token_format="numeric", ttl_seconds=600)
    assert all(not isinstance(r, TesseraError) for r in results)
    ids = [r[0].id for r in results if not isinstance(r, TesseraError)]
    assert len(set(ids)) == 1000
    for pan_card, token_id in zip(cards[:20], ids[:20], strict=True):
        revealed = await service.reveal(
            tenant, token_id, purpose="test", actor="test", consume_cvc=True
        )
        assert revealed.number == pan_card.number
        assert revealed.cvc is not None and revealed.cvc.reveal() == "999"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_batch_throughput(
    store: TokenStore, vault_client: VaultClient, audit: AuditLog, tenant: str
) -> None:
    """Not a benchmark (bench/ has those): prints cards/s of both batch paths, and checks the
    direct path is not absurdly slow next to the batcher's, measured in the same run (an
    absolute floor failed whenever the shared 2-core machine was busy). OpenBao runs on the
    same 2 cores."""
    batches = [[card() for _ in range(1000)] for _ in range(4)]
    figures: dict[str, float] = {}
    for name, direct in (("batcher", False), ("direct", True)):
        batcher = TransitBatcher(vault_client)
        service = TokenizationService(
            store, batcher, cvv=CvvHolder(), audit=audit, client=vault_client if direct else None
        )
        await service.tokenize_many(tenant, batches[0])  # warm up connections
        started = time.perf_counter()
        await asyncio.gather(*(service.tokenize_many(tenant, b) for b in batches[1:]))
        figures[name] = 3000 / (time.perf_counter() - started)
        await batcher.close()
    print(f"\ntokenize_many, 3 x 1,000 cards in parallel (SQLite): {figures}")  # noqa: T201
    assert figures["direct"] > figures["batcher"] * 0.5


async def test_fifty_concurrent_identical_tokenizations_make_one_token(
    database_url: str,
    vault_client: VaultClient,
    tenant: str,
) -> None:
    """Two services on two connections/pools (as two gateway processes), 25 callers each."""
    databases = [await open_database(database_url) for _ in range(2)]
    try:
        services = []
        for db in databases:
            store = TokenStore(db)
            await store.migrate()
            audit_log = AuditLog(db)
            await audit_log.migrate()
            services.append(
                TokenizationService(
                    store, TransitBatcher(vault_client), cvv=CvvHolder(), audit=audit_log
                )
            )
        pan = random_pan()
        outcomes = await asyncio.gather(
            *(services[i % 2].tokenize(tenant, card(pan), dedup=True) for i in range(50))
        )
        assert len({record.id for record, _ in outcomes}) == 1
        assert sum(created for _, created in outcomes) == 1
        assert await TokenStore(databases[0]).count(tenant) == 1
    finally:
        for db in databases:
            await db.close()


# -- reveal and the CVV -----------------------------------------------------------------------


async def test_reveal_is_audited_and_the_cvc_goes_once(
    service: TokenizationService, tenant: str, audit: AuditLog
) -> None:
    pan = random_pan()
    while "4321" in mask_pan(pan):  # the repr check below must not trip on the BIN or last 4
        pan = random_pan()
    record, _ = await service.tokenize(tenant, card(pan, cvc="4321", holder_name="Grace Hopper"))
    first = await service.reveal(
        tenant, record.id, purpose="egress:sandbox:authorize", actor="svc:gateway", consume_cvc=True
    )
    assert first.number.reveal() == pan
    assert first.cvc is not None and first.cvc.reveal() == "4321"
    assert first.holder_name == "Grace Hopper"
    assert (first.exp_month, first.exp_year) == (record.exp_month, record.exp_year)
    assert pan not in repr(first) and "4321" not in repr(first)
    second = await service.reveal(
        tenant, record.id, purpose="egress:sandbox:authorize", actor="svc:gateway", consume_cvc=True
    )
    assert second.cvc is None and second.number.reveal() == pan
    entries = await audit.entries()
    assert [(e.action, e.actor, e.target, e.purpose) for e in entries] == [
        ("token.reveal", "svc:gateway", record.id, "egress:sandbox:authorize")
    ] * 2
    assert (await audit.verify()).ok


async def test_a_ciphertext_moved_to_another_token_is_not_revealed(
    service: TokenizationService, store: TokenStore, tenant: str, audit: AuditLog
) -> None:
    """Someone who can write the database but not use Vault copies card B's ciphertext into
    token A's row: a payment with token A used to charge card B. The revealed card must be the
    one the record describes (length, BIN, last four), or nothing is revealed."""
    pan_a, pan_b = random_pan("411111"), random_pan("555555")
    a, _ = await service.tokenize(tenant, card(pan_a, cvc="123"))
    b, _ = await service.tokenize(tenant, card(pan_b))
    moved = await store.update_ciphertexts(
        tenant, [CiphertextUpdate(a.id, a.ciphertext, b.ciphertext)]
    )
    assert moved == 1
    with pytest.raises(TokenIntegrityError) as raised:
        await service.reveal(
            tenant, a.id, purpose="egress:t:authorize", actor="t", consume_cvc=True
        )
    assert raised.value.code == "token_integrity_error"
    assert pan_a not in str(raised.value) and pan_b not in str(raised.value)
    assert (await service.reveal(tenant, b.id, purpose="t", actor="t")).number.reveal() == pan_b
    # The attempt is in the audit log (written before the decrypt), and the CVC was not taken.
    assert [e.target for e in await audit.entries()] == [a.id, b.id]
    await store.update_ciphertexts(tenant, [CiphertextUpdate(a.id, b.ciphertext, a.ciphertext)])
    restored = await service.reveal(tenant, a.id, purpose="t", actor="t", consume_cvc=True)
    assert restored.number.reveal() == pan_a
    assert restored.cvc is not None and restored.cvc.reveal() == "123"


async def test_cvc_expires(
    store: TokenStore, batcher: TransitBatcher, audit: AuditLog, tenant: str
) -> None:
    now = [0.0]
    holder = CvvHolder(ttl_seconds=600, monotonic=lambda: now[0])
    service = TokenizationService(store, batcher, cvv=holder, audit=audit)
    record, _ = await service.tokenize(tenant, card(cvc="555"))
    now[0] += 601
    revealed = await service.reveal(tenant, record.id, purpose="t", actor="t", consume_cvc=True)
    assert revealed.cvc is None


async def test_dedup_hit_holds_the_new_cvc_under_the_existing_token(
    service: TokenizationService, tenant: str, cvv: CvvHolder
) -> None:
    pan = random_pan()
    record, _ = await service.tokenize(tenant, card(pan), dedup=True)
    assert not cvv.holds(tenant, record.id)
    again, _ = await service.tokenize(tenant, card(pan, cvc="777"), dedup=True)
    assert again.id == record.id and cvv.holds(tenant, record.id)


# -- Vault failures: nothing stored -----------------------------------------------------------


async def test_vault_unreachable_fails_fast_and_stores_nothing(
    store: TokenStore, audit: AuditLog, tenant: str
) -> None:
    client = VaultClient(f"http://127.0.0.1:{free_port()}", token="nothing-listens-here")
    batcher = TransitBatcher(client)
    service = TokenizationService(store, batcher, cvv=CvvHolder(), audit=audit)
    try:
        started = time.perf_counter()
        with pytest.raises(VaultUnavailableError) as caught:
            await service.tokenize(tenant, card(cvc="123"))
        assert time.perf_counter() - started < 1.0
        assert caught.value.retry_after is not None
        with pytest.raises(VaultUnavailableError):
            await service.tokenize_many(tenant, [card(), card()])
        direct = TokenizationService(store, batcher, cvv=CvvHolder(), audit=audit, client=client)
        with pytest.raises(VaultUnavailableError):
            await direct.tokenize_many(tenant, [card(), card()])
    finally:
        await batcher.close()
        await client.close()
    assert await store.count(tenant) == 0


@pytest.fixture(params=["batching", "unbatched"])
async def any_batcher(
    request: pytest.FixtureRequest, vault_client: VaultClient
) -> AsyncIterator[TransitBatcher]:
    """A transit batcher with batching on, then off (one Vault call per item)."""
    transit = TransitBatcher(vault_client, enabled=request.param == "batching")
    try:
        yield transit
    finally:
        await transit.close()


async def test_a_failed_item_fails_the_token_and_leaves_no_stray_future(
    store: TokenStore, audit: AuditLog, any_batcher: TransitBatcher
) -> None:
    """Tenant keys missing: the HMAC and the encryption both fail. The first error is raised,
    and the second is consumed, not left for the loop to report as never retrieved."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        service = TokenizationService(store, any_batcher, cvv=CvvHolder(), audit=audit)
        with pytest.raises(VaultError):
            await service.tokenize("vt_without_keys", card(cvc="123"))
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []
    assert await store.count("vt_without_keys") == 0


async def test_a_cancelled_tokenize_drops_its_vault_items(
    store: TokenStore, audit: AuditLog, any_batcher: TransitBatcher, tenant: str
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        service = TokenizationService(store, any_batcher, cvv=CvvHolder(), audit=audit)
        task = asyncio.create_task(service.tokenize(tenant, card()))
        await asyncio.sleep(0)  # queued in both lanes, not sent yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        record, created = await service.tokenize(tenant, card(holder_name="After"))
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert created and await store.count(tenant) == 1
    revealed = await service.reveal(tenant, record.id, purpose="test", actor="test")
    assert revealed.holder_name == "After"
    # The HMAC it was waiting for was cancelled before its call left; at most the encryption,
    # already queued behind it, went (and its result was dropped).
    assert any_batcher.items <= 4  # the second tokenize's 2, its reveal's decrypt, 1 dropped
    assert reported == []


async def test_vault_stopped_or_sealed_mid_run_stores_nothing(
    private_openbao: DevServer, store: TokenStore, audit: AuditLog
) -> None:
    provision(private_openbao.addr, private_openbao.root_token)
    tenant = "stopped"
    ensure_tenant_keys(private_openbao.addr, private_openbao.root_token, tenant)
    client = VaultClient(private_openbao.addr, token=private_openbao.root_token)
    batcher = TransitBatcher(client)
    cvv = CvvHolder()
    service = TokenizationService(store, batcher, cvv=cvv, audit=audit)
    try:
        kept, _ = await service.tokenize(tenant, card())
        private_openbao.seal()
        with pytest.raises(VaultSealedError):
            await service.tokenize(tenant, card(cvc="123"))
        with pytest.raises(VaultError):
            await service.reveal(tenant, kept.id, purpose="egress", actor="svc")
        private_openbao.unseal()
        await service.tokenize(tenant, card())
        private_openbao.stop()
        with pytest.raises(VaultUnavailableError):
            await service.tokenize(tenant, card(cvc="123"), dedup=True)
        with pytest.raises(VaultUnavailableError):
            await service.tokenize_many(tenant, [card(cvc="123") for _ in range(10)])
    finally:
        await batcher.close()
        await client.close()
    assert await store.count(tenant) == 2
    assert len(cvv) == 0


# -- canary sweep -----------------------------------------------------------------------------


async def _every_row_as_text(db: Database) -> list[str]:
    if db.dialect == "sqlite":
        tables = [
            row["name"]
            for row in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
    else:
        tables = [
            row["table_name"]
            for row in await db.fetchall(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        ]
    assert {"vault_tokens", "vault_audit_log"} <= set(tables)
    texts = []
    for table in tables:
        for row in await db.fetchall(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from the catalogue
            texts.append(f"{table}: " + " | ".join(str(value) for value in row.values()))
    return texts


async def test_canary_leaves_no_trace(
    service: TokenizationService,
    database: Database,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = new_canary()
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []

    record, _ = await service.tokenize(
        tenant, card(canary.pan, cvc=canary.cvc, holder_name="Canary"), dedup=True
    )
    numeric, _ = await service.tokenize(tenant, card(canary.pan), token_format="numeric")
    (batch,) = await service.tokenize_many(tenant, [card(canary.pan, cvc=canary.cvc)])
    assert not isinstance(batch, TesseraError)
    batch_record = batch[0]
    revealed = await service.reveal(
        tenant, record.id, purpose="egress:canary", actor="svc:test", consume_cvc=True
    )
    assert revealed.number.reveal() == canary.pan
    assert revealed.cvc is not None and revealed.cvc.reveal() == canary.cvc
    fingerprint = await service.fingerprint(tenant, CardNumber(canary.pan))
    assert fingerprint == record.fingerprint

    # Failure paths whose texts must not carry the canary either.
    for bad in (
        {"number": canary.pan, "exp_month": 13, "exp_year": 2031},
        {"number": canary.pan, "exp_month": 1, "exp_year": 2031, "cvc": canary.cvc + "x"},
        {"number": canary.pan[:-1] + str((int(canary.pan[-1]) + 1) % 10), "exp_month": 1},
    ):
        with pytest.raises(ValidationError) as invalid:
            CardData.model_validate(bad)
        errors += [str(invalid.value), repr(invalid.value)]
    for lookup in (canary.pan, f"tok_{canary.pan}"):
        with pytest.raises(TokenNotFoundError) as missing:
            await service.get(tenant, lookup)
        errors += [str(missing.value), repr(missing.value)]
    with pytest.raises(InvalidRequestError) as refused:
        await service.delete(tenant, record.id, actor=f"admin {canary.pan}")
    errors += [str(refused.value), repr(refused.value)]

    assert await service.get(tenant, record.id) == record  # a refused audit deletes nothing
    for token_id in (record.id, numeric.id, getattr(batch_record, "id", "")):
        await service.delete(tenant, token_id, actor="merchant:canary")
    await service.sweep_expired()

    shown = [
        repr(record),
        repr(revealed),
        str(revealed.number),
        repr(service),
        str(record.public_view()),
    ]
    leaks = find_leaks_in(
        [*await _every_row_as_text(database), caplog.text, *errors, *shown], canary
    )
    assert leaks == []
    # The canary really was there to be found (the helper is not blind).
    assert find_leaks(f"x{canary.pan}x", canary) == ["pan:raw"]
