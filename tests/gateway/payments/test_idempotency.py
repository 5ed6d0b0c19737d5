"""Idempotency keys (RELIABILITY 5-8, 10, 27) on SQLite and PostgreSQL, including two gateway
"processes" (two pools on one database) and the takeover of a dead process's claim."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import orjson
import pytest

from gateway.payments import (
    HandlerResult,
    IdempotencyClaim,
    IdempotencyStore,
    IdempotentResponse,
)
from gateway.problems import HttpProblem
from tests.gateway.payments.conftest import Database, FakeClock
from vault.database import open_database

FINGERPRINT_KEY = b"k" * 32
BODY = (
    b'{"amount":{"value":1050,"currency":"EUR"},"payment_method":{"type":"card","token":"tok_x"}}'
)
PATH = "/v1/payments"


class CountingHandler:
    """A handler that counts its runs and answers a fixed 201 (after an optional delay)."""

    def __init__(self, *, delay: float = 0.0, status: int = 201, storable: bool = True) -> None:
        self.calls = 0
        self.delay = delay
        self.status = status
        self.storable = storable

    async def __call__(self, claim: IdempotencyClaim) -> HandlerResult:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = orjson.dumps({"id": f"pay_{self.calls}", "status": "authorized", "n": self.calls})
        return HandlerResult(self.status, body, {"Content-Type": "application/json"}, self.storable)


@pytest.fixture
async def guard(db: Database, clock: FakeClock) -> IdempotencyStore:
    store = IdempotencyStore(db, fingerprint_key=FINGERPRINT_KEY, clock=clock)
    await store.migrate()
    return store


async def _run(
    guard: IdempotencyStore,
    handler: Callable[[IdempotencyClaim], Awaitable[HandlerResult]],
    *,
    merchant: str = "mer_a",
    key: str | None = "key-1",
    body: bytes = BODY,
    path: str = PATH,
) -> IdempotentResponse:
    return await guard.run(merchant, key, "POST", path, body, handler)


async def test_same_key_same_request_is_replayed(guard: IdempotencyStore) -> None:
    handler = CountingHandler()
    first = await _run(guard, handler)
    second = await _run(guard, handler)
    assert handler.calls == 1
    assert first.replayed is False and second.replayed is True
    assert (second.status, second.body) == (first.status, first.body)
    assert second.headers["Content-Type"] == "application/json"
    assert second.headers["Idempotent-Replayed"] == "true"


async def test_error_responses_are_replayed_too(guard: IdempotencyStore) -> None:
    handler = CountingHandler(status=402)
    first = await _run(guard, handler)
    second = await _run(guard, handler)
    assert handler.calls == 1 and second.status == 402 and second.body == first.body


@pytest.mark.parametrize(
    ("body", "path"),
    [(BODY.replace(b"1050", b"1051"), PATH), (BODY, "/v1/payments/pay_1/capture")],
)
async def test_same_key_different_request_is_422(
    guard: IdempotencyStore, body: bytes, path: str
) -> None:
    handler = CountingHandler()
    await _run(guard, handler)
    with pytest.raises(HttpProblem) as caught:
        await _run(guard, handler, body=body, path=path)
    assert (caught.value.status, caught.value.code) == (422, "idempotency_key_reused")
    assert handler.calls == 1


async def test_fifty_concurrent_requests_one_execution(guard: IdempotencyStore) -> None:
    handler = CountingHandler(delay=0.05)
    results = await asyncio.gather(
        *(_run(guard, handler) for _ in range(50)), return_exceptions=True
    )
    assert handler.calls == 1
    fresh = [r for r in results if isinstance(r, IdempotentResponse) and not r.replayed]
    replays = [r for r in results if isinstance(r, IdempotentResponse) and r.replayed]
    conflicts = [r for r in results if isinstance(r, HttpProblem)]
    assert len(fresh) == 1 and len(fresh) + len(replays) + len(conflicts) == 50
    assert all(r.body == fresh[0].body for r in replays)
    for problem in conflicts:
        assert (problem.status, problem.code) == (409, "idempotency_key_in_use")
        assert problem.retry_after is not None and problem.retry_after >= 1
    assert (await _run(guard, handler)).body == fresh[0].body


async def test_keys_are_scoped_per_merchant(guard: IdempotencyStore) -> None:
    handler = CountingHandler()
    a = await _run(guard, handler, merchant="mer_a")
    b = await _run(guard, handler, merchant="mer_b")
    assert handler.calls == 2 and not a.replayed and not b.replayed and a.body != b.body
    assert (await _run(guard, handler, merchant="mer_b")).body == b.body


async def test_retention_replays_inside_and_forgets_after(db: Database, clock: FakeClock) -> None:
    guard = IdempotencyStore(
        db, fingerprint_key=FINGERPRINT_KEY, retention_seconds=100, clock=clock
    )
    await guard.migrate()
    handler = CountingHandler()
    first = await _run(guard, handler)
    clock.advance(99.999)
    assert (await _run(guard, handler)).replayed is True
    clock.advance(0.001)
    again = await _run(guard, handler)
    assert again.replayed is False and handler.calls == 2 and again.body != first.body
    # Expired records go even with a different body: the key is simply new again.
    clock.advance(100)
    assert (await _run(guard, handler, body=b"{}")).replayed is False
    await _run(guard, handler, key="key-2")
    clock.advance(100)
    assert await guard.purge_expired() == 2
    assert await db.fetchval("SELECT COUNT(*) FROM idempotency_keys") == 0


async def test_request_while_first_runs_is_409(guard: IdempotencyStore) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(claim: IdempotencyClaim) -> HandlerResult:
        started.set()
        await release.wait()
        return HandlerResult(201, b'{"id":"pay_1"}')

    first = asyncio.create_task(_run(guard, slow))
    await started.wait()
    with pytest.raises(HttpProblem) as caught:
        await _run(guard, CountingHandler())
    assert (caught.value.status, caught.value.code) == (409, "idempotency_key_in_use")
    release.set()
    assert (await first).body == b'{"id":"pay_1"}'


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "clé", "a\nb", "tab\there", "\x00"])
async def test_invalid_keys_are_400(guard: IdempotencyStore, key: str) -> None:
    handler = CountingHandler()
    with pytest.raises(HttpProblem) as caught:
        await _run(guard, handler, key=key)
    assert (caught.value.status, caught.value.code) == (400, "invalid_idempotency_key")
    assert handler.calls == 0


async def test_longest_printable_key_is_fine(guard: IdempotencyStore) -> None:
    key = "".join(chr(33 + i % 94) for i in range(255))
    assert (await _run(guard, CountingHandler(), key=key)).status == 201


async def test_no_key_runs_unguarded(guard: IdempotencyStore, db: Database) -> None:
    handler = CountingHandler()
    await _run(guard, handler, key=None)
    await _run(guard, handler, key=None)
    assert handler.calls == 2
    assert await db.fetchval("SELECT COUNT(*) FROM idempotency_keys") == 0


async def test_handler_failure_releases_the_key(guard: IdempotencyStore) -> None:
    async def broken(claim: IdempotencyClaim) -> HandlerResult:
        raise RuntimeError("vault down")

    with pytest.raises(RuntimeError):
        await _run(guard, broken)
    handler = CountingHandler()
    assert (await _run(guard, handler)).replayed is False and handler.calls == 1
    # A different body is fine too: nothing was done under the key.
    with pytest.raises(RuntimeError):
        await _run(guard, broken, key="key-2")
    assert (await _run(guard, handler, key="key-2", body=b"{}")).replayed is False


async def test_unstorable_result_is_not_replayed(guard: IdempotencyStore) -> None:
    handler = CountingHandler(status=503, storable=False)
    assert (await _run(guard, handler)).status == 503
    assert (await _run(guard, handler)).replayed is False and handler.calls == 2


async def test_cancelled_request_releases_the_key(guard: IdempotencyStore) -> None:
    started = asyncio.Event()

    async def hangs(claim: IdempotencyClaim) -> HandlerResult:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.create_task(_run(guard, hangs))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    handler = CountingHandler()
    assert (await _run(guard, handler)).replayed is False and handler.calls == 1


async def test_released_claim_keeps_its_resource_for_the_retry(guard: IdempotencyStore) -> None:
    async def fails_after_creating(claim: IdempotencyClaim) -> HandlerResult:
        assert claim.resource_id is None and not claim.recovered
        await claim.bind_resource("pay_created")
        raise RuntimeError("the database write after the provider call failed")

    with pytest.raises(RuntimeError):
        await _run(guard, fails_after_creating)
    seen: list[tuple[str | None, bool]] = []

    async def retry(claim: IdempotencyClaim) -> HandlerResult:
        seen.append((claim.resource_id, claim.recovered))
        return HandlerResult(201, b'{"id":"pay_created"}')

    assert (await _run(guard, retry)).body == b'{"id":"pay_created"}'
    assert seen == [("pay_created", True)]
    # Bound to a resource, the key no longer accepts a different request.
    with pytest.raises(HttpProblem):
        await _run(guard, retry, body=b"{}")


async def test_dead_holder_is_taken_over_and_its_resource_recovered(
    db: Database, clock: FakeClock
) -> None:
    guard = IdempotencyStore(
        db, fingerprint_key=FINGERPRINT_KEY, claim_lease_seconds=5, clock=clock
    )
    await guard.migrate()
    bound = asyncio.Event()

    async def dies_mid_call(claim: IdempotencyClaim) -> HandlerResult:
        async with db.transaction() as tx:  # the payment and its binding commit together
            await claim.bind_resource("pay_half_done", tx=tx)
        bound.set()
        await asyncio.Event().wait()  # the provider call that never returns
        raise AssertionError("unreachable")

    zombie = asyncio.create_task(_run(guard, dies_mid_call))
    await bound.wait()
    with pytest.raises(HttpProblem):  # still leased
        await _run(guard, CountingHandler())
    clock.advance(6)  # the lease lapses: no renewal arrives from a dead process
    seen: list[tuple[str | None, bool]] = []

    async def resumes(claim: IdempotencyClaim) -> HandlerResult:
        seen.append((claim.resource_id, claim.recovered))
        return HandlerResult(201, b'{"id":"pay_half_done","status":"authorized"}')

    resumed = await _run(guard, resumes)
    assert seen == [("pay_half_done", True)] and not resumed.replayed
    # The zombie's cleanup must not touch the new holder's stored response.
    zombie.cancel()
    with pytest.raises(asyncio.CancelledError):
        await zombie
    replay = await _run(guard, CountingHandler())
    assert replay.replayed and replay.body == resumed.body


async def test_two_processes_honour_one_key(
    database_url: str, guard: IdempotencyStore, clock: FakeClock
) -> None:
    other_db = await open_database(database_url)
    try:
        # Same clock: leases compare the processes' clocks (NTP keeps real ones together).
        other = IdempotencyStore(other_db, fingerprint_key=FINGERPRINT_KEY, clock=clock)
        handler = CountingHandler(delay=0.05)
        stores = [guard, other] * 10
        results = await asyncio.gather(
            *(_run(store, handler) for store in stores), return_exceptions=True
        )
        assert handler.calls == 1
        assert all(isinstance(r, IdempotentResponse | HttpProblem) for r in results)
        assert (await _run(other, handler)).replayed is True
        assert (await _run(guard, handler)).replayed is True
    finally:
        await other_db.close()


async def test_fingerprint_is_keyed_not_a_bare_hash(db: Database) -> None:
    a = IdempotencyStore(db, fingerprint_key=b"a" * 32)
    b = IdempotencyStore(db, fingerprint_key=b"b" * 32)
    fingerprint = a.fingerprint("mer_a", "POST", PATH, BODY)
    assert fingerprint != b.fingerprint("mer_a", "POST", PATH, BODY)
    assert fingerprint != hashlib.sha256(BODY).hexdigest()
    assert fingerprint == a.fingerprint("mer_a", "post", PATH, BODY)
    assert fingerprint != a.fingerprint("mer_b", "POST", PATH, BODY)
    with pytest.raises(ValueError, match="16"):
        IdempotencyStore(db, fingerprint_key=b"short")


async def test_stored_record_holds_neither_body_nor_card_data(
    guard: IdempotencyStore, db: Database
) -> None:
    pan, cvc = "4000056655665556", "7391"
    body = orjson.dumps(
        {
            "amount": {"value": 1050, "currency": "EUR"},
            "payment_method": {
                "type": "card",
                "card": {"number": pan, "exp_month": 12, "exp_year": 2031, "cvc": cvc},
            },
        }
    )
    response = orjson.dumps({"id": "pay_1", "status": "authorized", "last4": pan[-4:]})

    async def handler(claim: IdempotencyClaim) -> HandlerResult:
        return HandlerResult(201, response, {"Content-Type": "application/json"})

    await _run(guard, handler, body=body)
    rows = await db.fetchall("SELECT * FROM idempotency_keys")
    assert len(rows) == 1
    dump = repr(rows[0]).encode() + bytes(rows[0]["response_body"])
    for secret in (pan, cvc, hashlib.sha256(pan.encode()).hexdigest(), '"cvc"', "number"):
        assert secret.encode() not in dump
    assert rows[0]["fingerprint"] != hashlib.sha256(body).hexdigest()
    assert (await _run(guard, handler, body=body)).body == response


async def test_a_live_holder_keeps_its_claim_past_the_lease(db: Database) -> None:
    # Real time here: the lease (1 s) is renewed every third of it while the handler runs, so
    # only a renewal more than 0.67 s late (a stalled event loop or database) lets it lapse.
    lease = 1.0
    guard = IdempotencyStore(db, fingerprint_key=FINGERPRINT_KEY, claim_lease_seconds=lease)
    await guard.migrate()
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def holds_until_released(claim: IdempotencyClaim) -> HandlerResult:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()  # runs for as long as the test needs, however slow the machine
        return HandlerResult(201, b'{"id":"pay_1"}')

    first = asyncio.create_task(_run(guard, holds_until_released))
    try:
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(2.2 * lease)  # more than two leases after the claim: renewed or lost
        # A handler that answers at once: if the claim had lapsed, this would take it over.
        other = CountingHandler()
        with pytest.raises(HttpProblem) as caught:
            await _run(guard, other)
        assert caught.value.code == "idempotency_key_in_use"
        assert other.calls == 0
    finally:
        release.set()
    assert (await first).body == b'{"id":"pay_1"}'
    replay = await _run(guard, CountingHandler())
    assert calls == 1 and replay.replayed and replay.body == b'{"id":"pay_1"}'
