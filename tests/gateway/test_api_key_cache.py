"""``ApiKeyCache``: the synchronous hit the request path takes, and the asking path on a miss.

The gateway fixture runs with ``key_cache_seconds = 0`` (every request asks the store), so the
cached path is exercised here: unit tests with a counting store and a controlled clock, and the
app with caching on.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway.merchants import ApiKeyCache, Merchant, MerchantStore

from .conftest import MakeGateway

KEY = "tsk_" + "A" * 40
ACME = Merchant(id="mer_1", name="acme", token_dedup=False, created_at="2026-11-21T00:00:00Z")


class _Store:
    """Stands in for ``MerchantStore``: answers from a dict and counts the questions."""

    def __init__(self, answers: dict[str, Merchant | None]) -> None:
        self.answers = answers
        self.asked = 0

    async def authenticate(self, key: str) -> Merchant | None:
        self.asked += 1
        return self.answers.get(key)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    # The module's own ``time`` only: the event loop keeps the real clock.
    monkeypatch.setattr("gateway.merchants.time", SimpleNamespace(monotonic=fake))
    return fake


def _cache(store: _Store, ttl: float) -> ApiKeyCache:
    return ApiKeyCache(store, ttl)  # type: ignore[arg-type]


async def test_cached_is_none_until_authenticate_has_asked(clock: _Clock) -> None:
    store = _Store({KEY: ACME})
    cache = _cache(store, 30)
    assert cache.cached(KEY) is None
    assert store.asked == 0  # looking in the cache never asks the store
    assert await cache.authenticate(KEY) == ACME
    assert store.asked == 1
    hit = cache.cached(KEY)
    assert hit is not None and hit[1] == ACME
    assert store.asked == 1


async def test_a_refused_key_is_cached_as_none(clock: _Clock) -> None:
    store = _Store({})
    cache = _cache(store, 30)
    assert await cache.authenticate(KEY) is None
    hit = cache.cached(KEY)
    assert hit is not None and hit[1] is None  # known and refused, not unknown
    assert store.asked == 1


async def test_cached_answers_expire_after_the_ttl(clock: _Clock) -> None:
    store = _Store({KEY: ACME})
    cache = _cache(store, 30)
    await cache.authenticate(KEY)
    clock.now += 29.9
    assert cache.cached(KEY) is not None
    clock.now += 0.1
    assert cache.cached(KEY) is None  # expired: the caller must ask again
    store.answers.clear()  # meanwhile the key was revoked
    assert await cache.authenticate(KEY) is None
    assert store.asked == 2
    hit = cache.cached(KEY)
    assert hit is not None and hit[1] is None


async def test_invalidate_forgets_every_answer(clock: _Clock) -> None:
    store = _Store({KEY: ACME})
    cache = _cache(store, 30)
    await cache.authenticate(KEY)
    cache.invalidate()
    assert cache.cached(KEY) is None


async def test_a_zero_ttl_caches_nothing(clock: _Clock) -> None:
    store = _Store({KEY: ACME})
    cache = _cache(store, 0)
    await cache.authenticate(KEY)
    assert cache.cached(KEY) is None
    await cache.authenticate(KEY)
    assert store.asked == 2


async def test_other_keys_are_not_answered_from_one_keys_entry(clock: _Clock) -> None:
    other = "tsk_" + "B" * 40
    store = _Store({KEY: ACME})
    cache = _cache(store, 30)
    await cache.authenticate(KEY)
    assert cache.cached(other) is None
    assert cache.cached(KEY + " ") is None


async def test_the_gateway_answers_from_the_cache_and_asks_again_after_expiry(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await make_gateway(auth={"key_cache_seconds": 60})
    asked = 0
    real = MerchantStore.authenticate

    async def counting(self: MerchantStore, key: str) -> Merchant | None:
        nonlocal asked
        asked += 1
        return await real(self, key)

    monkeypatch.setattr(MerchantStore, "authenticate", counting)

    async def status() -> int:
        resp = await gw.client.get("/v1/tokens", params={"fingerprint": "fp"}, headers=gw.auth)
        await resp.read()
        return resp.status

    assert await status() == 200
    assert await status() == 200
    assert asked == 1  # the second request was answered from the cache

    # A revoked key keeps working until its cached answer expires (the documented TTL) ...
    assert await gw.resources.merchants.revoke_key(gw.api_key)
    assert await status() == 200
    assert asked == 1
    # ... and is refused once it has (here: the cache is emptied, as an expiry would).
    gw.resources.api_keys.invalidate()
    assert await status() == 401
    assert asked == 2
    # The refusal is cached too: a wrong key does not reach the store on every try.
    assert await status() == 401
    assert asked == 2


async def test_the_gateway_refuses_an_empty_bearer_without_asking_the_store(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await make_gateway(auth={"key_cache_seconds": 60})
    asked = 0

    async def counting(self: MerchantStore, key: str) -> Merchant | None:
        nonlocal asked
        asked += 1
        return None

    monkeypatch.setattr(MerchantStore, "authenticate", counting)
    for header in ("Bearer ", "Bearer    ", "Basic abc", "bearer"):
        headers: dict[str, Any] = {"Authorization": header}
        resp = await gw.client.get("/v1/tokens", params={"fingerprint": "fp"}, headers=headers)
        assert resp.status == 401, header
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tessera"'
        assert (await resp.json())["code"] == "unauthorized"
    assert asked == 0
