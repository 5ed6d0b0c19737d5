"""The token store on both backends, without Vault: batched inserts, conflicts, dedup index,
expiry, rewrap bookkeeping. (Ciphertexts here are stand-ins shaped like transit output.)"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from tests.vault.conftest import random_pan
from vault.insert_batcher import InsertBatcher
from vault.token_store import CiphertextUpdate, TokenRecord, TokenStore, key_version_of
from vault.tokens import new_opaque_token

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def record(
    tenant: str = "acme",
    *,
    token_id: str | None = None,
    fingerprint: str | None = None,
    dedup: bool = False,
    expires_at: datetime | None = None,
    version: int = 1,
) -> TokenRecord:
    return TokenRecord(
        id=token_id or new_opaque_token(),
        tenant=tenant,
        fingerprint=fingerprint or f"fp_v1_{secrets.token_urlsafe(32)}",
        ciphertext=f"vault:v{version}:{secrets.token_urlsafe(40)}",
        bin="424242",
        last4="4242",
        brand="visa",
        exp_month=12,
        exp_year=2031,
        format="opaque",
        created_at=NOW,
        expires_at=expires_at,
        key_version=version,
        pan_length=16,
        dedup=dedup,
    )


async def test_insert_and_get_round_trip(store: TokenStore) -> None:
    original = dataclasses.replace(record(), expires_at=NOW + timedelta(seconds=90))
    assert await store.insert_many([original]) == {("acme", original.id)}
    assert await store.get("acme", original.id) == original
    assert await store.get("other", original.id) is None  # tenants never see each other


async def test_batch_insert_of_a_thousand(store: TokenStore) -> None:
    records = [record() for _ in range(1000)]
    inserted = await store.insert_many(records)
    assert len(inserted) == 1000
    assert await store.count("acme") == 1000


async def test_conflicting_ids_are_skipped_not_raised(store: TokenStore) -> None:
    first = record(token_id="4242420000004241")
    await store.insert_many([first])
    clash = record(token_id="4242420000004241")
    fresh = record()
    inserted = await store.insert_many([clash, fresh])
    assert inserted == {("acme", fresh.id)}
    stored = await store.get("acme", first.id)
    assert stored is not None and stored.ciphertext == first.ciphertext
    # Same id, other tenant: no conflict (numeric tokens are unique per tenant).
    assert await store.insert_many([record("globex", token_id=first.id)]) == {("globex", first.id)}


async def test_dedup_index_allows_one_live_token_per_card(store: TokenStore) -> None:
    fingerprint = "fp_v1_same-card"
    first = record(fingerprint=fingerprint, dedup=True)
    second = record(fingerprint=fingerprint, dedup=True)
    plain = record(fingerprint=fingerprint, dedup=False)
    inserted = await store.insert_many([first, second, plain])
    assert inserted == {("acme", first.id), ("acme", plain.id)}
    holders = await store.find_by_dedup_keys("acme", [f"opaque:{fingerprint}"])
    assert holders[f"opaque:{fingerprint}"].id == first.id
    found = await store.find_by_fingerprint("acme", fingerprint)
    assert {r.id for r in found} == {first.id, plain.id}


async def test_concurrent_dedup_inserts_yield_one_row(store: TokenStore) -> None:
    fingerprint = "fp_v1_raced"
    candidates = [record(fingerprint=fingerprint, dedup=True) for _ in range(20)]
    results = await asyncio.gather(*(store.insert_many([c]) for c in candidates))
    assert sum(len(r) for r in results) == 1
    assert await store.count("acme") == 1


async def test_delete(store: TokenStore) -> None:
    token = record()
    await store.insert_many([token])
    assert await store.delete("acme", token.id)
    assert not await store.delete("acme", token.id)
    assert await store.get("acme", token.id) is None


async def test_delete_expired_in_chunks(store: TokenStore) -> None:
    expired = [record(expires_at=NOW - timedelta(seconds=1)) for _ in range(25)]
    live = [record(expires_at=NOW + timedelta(seconds=60)), record()]
    await store.insert_many([*expired, *live])
    assert await store.delete_expired(NOW, chunk_size=10) == 25
    assert await store.count("acme") == 2
    assert await store.delete_expired(NOW) == 0


async def test_expired_dedup_holder_can_be_purged(store: TokenStore) -> None:
    old = record(fingerprint="fp_v1_x", dedup=True, expires_at=NOW - timedelta(seconds=1))
    await store.insert_many([old])
    assert await store.delete_expired_dedup("acme", ["opaque:fp_v1_x"], NOW) == 1
    new = record(fingerprint="fp_v1_x", dedup=True)
    assert await store.insert_many([new]) == {("acme", new.id)}
    # A live holder is never purged.
    assert await store.delete_expired_dedup("acme", ["opaque:fp_v1_x"], NOW) == 0


async def test_rewrap_iteration_and_update(store: TokenStore) -> None:
    old = [record(version=1) for _ in range(7)]
    current = [record(version=2) for _ in range(3)]
    await store.insert_many([*old, *current])
    batches = [batch async for batch in store.iter_for_rewrap("acme", 3, below_version=2)]
    assert [len(b) for b in batches] == [3, 3, 1]
    seen = [item.id for batch in batches for item in batch]
    assert sorted(seen) == sorted(r.id for r in old)
    assert await store.count_below_version("acme", 2) == 7

    updates = [
        CiphertextUpdate(item.id, item.ciphertext, f"vault:v2:{secrets.token_urlsafe(40)}")
        for batch in batches
        for item in batch
    ]
    # One row changed since it was read: its update must not apply.
    stale = updates[0]
    await store.refresh_card(
        dataclasses.replace(
            old[[r.id for r in old].index(stale.id)], ciphertext="vault:v1:changed"
        ),
        payload=True,
    )
    assert await store.update_ciphertexts("acme", updates) == 6
    assert await store.count_below_version("acme", 2) == 1
    reread = await store.get("acme", updates[1].id)
    assert reread is not None and reread.key_version == 2
    assert reread.ciphertext == updates[1].new


async def test_tenants_listing(store: TokenStore) -> None:
    await store.insert_many([record("b_tenant"), record("a_tenant"), record("a_tenant")])
    assert await store.tenants() == ["a_tenant", "b_tenant"]


async def test_migrate_is_idempotent(store: TokenStore) -> None:
    await store.migrate()
    await store.insert_many([record()])
    await store.migrate()
    assert await store.count("acme") == 1


def test_record_views_hide_the_ciphertext() -> None:
    token = record()
    assert token.ciphertext not in repr(token)
    view = token.public_view()
    assert "ciphertext" not in str(view)
    assert view["card"] == {
        "brand": "visa",
        "bin": "424242",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2031,
    }
    assert token.masked() == "424242******4242"
    short = dataclasses.replace(token, bin="", pan_length=13, last4="1234")
    assert short.masked() == "*********1234"


def test_key_version_of() -> None:
    assert key_version_of("vault:v12:abc") == 12
    assert key_version_of("fp_v3_abc") == 3
    with pytest.raises(ValueError):
        key_version_of(random_pan())


# -- group commit -----------------------------------------------------------------------------


class CountingStore(TokenStore):
    """The real store, counting the INSERT statements it runs."""

    statements = 0

    async def insert_many(self, records: Sequence[TokenRecord]) -> set[tuple[str, str]]:
        self.statements += 1
        return await super().insert_many(records)


async def test_concurrent_inserts_share_statements(store: TokenStore) -> None:
    counting = CountingStore(store.database)
    inserts = InsertBatcher(counting, max_rows=1000)
    requests = [[record()] for _ in range(60)]
    results = await asyncio.gather(*(inserts.insert(r) for r in requests))
    for request, inserted in zip(requests, results, strict=True):
        assert ("acme", request[0].id) in inserted
    assert await store.count("acme") == 60
    # The first leaves alone (nothing was in flight), the rest wait and go together.
    assert counting.statements <= 3


async def test_grouped_requests_with_one_id_learn_their_own_outcome(store: TokenStore) -> None:
    counting = CountingStore(store.database)
    inserts = InsertBatcher(counting, max_in_flight=1)
    first, second = record(token_id="4242420000004241"), record(token_id="4242420000004241")
    results = await asyncio.gather(inserts.insert([first]), inserts.insert([second]))
    # They went in separate statements: exactly one of them sees its row inserted.
    assert counting.statements == 2
    assert [("acme", first.id) in r for r in results] == [True, False]
    stored = await store.get("acme", first.id)
    assert stored is not None and stored.ciphertext == first.ciphertext


async def test_a_failed_statement_fails_each_waiter(store: TokenStore) -> None:
    inserts = InsertBatcher(store)
    await store.database.execute("DROP TABLE vault_tokens")
    outcomes = await asyncio.gather(
        *(inserts.insert([record()]) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, Exception) for o in outcomes)
    await inserts.close()


async def test_refresh_card_takes_only_what_is_newer_than_the_row_as_it_stands(
    store: TokenStore,
) -> None:
    # Two dedup hits for one card read the same row; the one that writes second carries an
    # older expiry and a shorter lifetime. Compared with the row as it stands when the update
    # runs, it cannot undo the first (it used to overwrite every column).
    held = dataclasses.replace(
        record(), exp_year=2030, exp_month=6, expires_at=NOW + timedelta(hours=1)
    )
    await store.insert_many([held])
    renewed = dataclasses.replace(
        held, ciphertext="vault:v1:renewed", exp_year=2033, exp_month=1,
        expires_at=NOW + timedelta(hours=5),
    )  # fmt: skip
    stale = dataclasses.replace(
        held, ciphertext="vault:v1:stale", exp_year=2031, exp_month=3,
        expires_at=NOW + timedelta(hours=2),
    )  # fmt: skip
    first = await store.refresh_card(renewed, payload=True)
    second = await store.refresh_card(stale, payload=True)
    assert first is not None and second is not None
    stored = await store.get("acme", held.id)
    assert stored == second
    assert stored is not None
    assert (stored.exp_year, stored.exp_month) == (2033, 1)
    assert stored.ciphertext == "vault:v1:renewed"
    assert stored.expires_at == NOW + timedelta(hours=5)

    # Same expiry: the payload (a holder name) is taken only when asked for.
    named = dataclasses.replace(renewed, ciphertext="vault:v1:named")
    assert (await store.refresh_card(named, payload=False)).ciphertext == "vault:v1:renewed"  # type: ignore[union-attr]
    assert (await store.refresh_card(named, payload=True)).ciphertext == "vault:v1:named"  # type: ignore[union-attr]
    # A permanent ask makes it permanent; nothing makes a permanent token expire again.
    forever = await store.refresh_card(dataclasses.replace(renewed, expires_at=None), payload=False)
    assert forever is not None and forever.expires_at is None
    again = await store.refresh_card(renewed, payload=False)
    assert again is not None and again.expires_at is None
    gone = dataclasses.replace(renewed, id=new_opaque_token())
    assert await store.refresh_card(gone, payload=True) is None


async def test_fingerprint_pages_follow_created_at_then_id_and_skip_expired(
    store: TokenStore,
) -> None:
    fingerprint = "fp_v1_paged"
    # Three tokens share one instant (the id breaks the tie); one expired, one expires later.
    same = [record(fingerprint=fingerprint) for _ in range(3)]
    later = dataclasses.replace(
        record(fingerprint=fingerprint),
        created_at=NOW + timedelta(microseconds=1),
        expires_at=NOW + timedelta(hours=1),
    )
    expired = dataclasses.replace(
        record(fingerprint=fingerprint), expires_at=NOW - timedelta(seconds=1)
    )
    await store.insert_many([later, *same, expired, record()])
    everything = await store.find_by_fingerprint("acme", fingerprint)
    assert len(everything) == 5  # without live_at, expired tokens too (the sweeper's view)
    live = await store.find_by_fingerprint("acme", fingerprint, live_at=NOW)
    # Ties in the database's own id order (its collation), the later token last.
    order = [r.id for r in live]
    assert set(order[:3]) == {r.id for r in same} and order[3:] == [later.id]

    seen: list[str] = []
    after: tuple[datetime, str] | None = None
    while True:
        page = await store.find_by_fingerprint(
            "acme", fingerprint, live_at=NOW, after=after, limit=2
        )
        if not page:
            break
        assert len(page) <= 2
        seen += [r.id for r in page]
        after = (page[-1].created_at, page[-1].id)
    assert seen == order
