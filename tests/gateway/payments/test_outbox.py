"""The merchant-notification outbox and dispatcher, on SQLite and PostgreSQL, delivering to a
real aiohttp receiver on loopback: transactional enqueue, signatures, retries with backoff,
dead letters, restarts, leases and two dispatchers racing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.merchants import MerchantStore
from gateway.payments import (
    SIGNATURE_HEADER,
    ExponentialBackoff,
    InvalidSignatureError,
    NotificationDispatcher,
    NotificationStatus,
    Outbox,
    sign_payload,
    verify_signature,
)
from tests.conftest import free_port
from tests.fake_dns import FakeDns
from tests.gateway.payments.conftest import FakeClock
from vault.database import open_database

NO_JITTER = ExponentialBackoff(
    first_delay=timedelta(seconds=10), max_delay=timedelta(hours=1), jitter=0
)


@dataclass
class Receiver:
    """A merchant's webhook endpoint: records every request, answers from a script."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    other_path_hits: int = 0
    expected: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if self.expected and len(self.requests) >= self.expected:
            self.enough.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 302:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=status, text="ok")

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.other_path_hits += 1
        return web.Response(text="followed")

    def delivered_ids(self) -> Counter[str]:
        return Counter(headers["Tessera-Event-Id"] for headers, _ in self.requests)


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Awaitable[Any]]) -> Receiver:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    app.router.add_route("*", "/elsewhere", recv.elsewhere)
    server = await aiohttp_server(app)
    recv.url = str(server.make_url("/hook"))
    return recv


MakeDispatcher = Callable[..., NotificationDispatcher]


@pytest.fixture
async def make_dispatcher(clock: FakeClock) -> AsyncIterator[MakeDispatcher]:
    """Builds dispatchers reading ``clock``; each builds its own delivery session, and every
    one is closed (with its session) after the test."""
    made: list[NotificationDispatcher] = []

    def make(outbox: Outbox, merchants: MerchantStore, **kwargs: Any) -> NotificationDispatcher:
        kwargs.setdefault("backoff", NO_JITTER)
        kwargs.setdefault("request_timeout", 2.0)
        kwargs.setdefault("lease_seconds", 30.0)
        kwargs.setdefault("allow_private_targets", True)  # the receiver is on loopback
        dispatcher = NotificationDispatcher(outbox, merchants, clock=clock, **kwargs)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await dispatcher.close()


@dataclass
class Shop:
    merchant_id: str
    secret: str


@pytest.fixture
async def shop(merchants: MerchantStore, receiver: Receiver) -> Shop:
    merchant, _ = await merchants.create("shop")
    endpoint = await merchants.set_webhook_endpoint(
        merchant.id, receiver.url, allow_http=True, allow_private=True
    )
    return Shop(merchant.id, endpoint.secret)


async def _enqueue(outbox: Outbox, merchant_id: str, n: int = 1) -> list[str]:
    ids = []
    async with outbox.db.transaction() as tx:
        for i in range(n):
            ids.append(
                await outbox.enqueue(tx, merchant_id, "payment.captured", {"id": f"pay_{i}"})
            )
    return ids


async def test_rolled_back_enqueue_delivers_nothing(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    with pytest.raises(RuntimeError):
        async with outbox.db.transaction() as tx:
            await outbox.enqueue(tx, shop.merchant_id, "payment.captured", {"id": "pay_1"})
            raise RuntimeError("the payment update failed")
    report = await make_dispatcher(outbox, merchants).run_once()
    assert report.claimed == 0 and receiver.requests == []
    assert await outbox.for_merchant(shop.merchant_id) == []


async def test_delivery_is_signed_and_verifiable(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    [event_id] = await _enqueue(outbox, shop.merchant_id)
    report = await make_dispatcher(outbox, merchants).run_once()
    assert (report.claimed, report.delivered) == (1, 1)
    [(headers, body)] = receiver.requests
    now = clock.now().timestamp()
    signed_at = verify_signature(shop.secret, headers[SIGNATURE_HEADER], body, now=now)
    assert signed_at == int(now)
    envelope = orjson.loads(body)
    assert envelope == {
        "id": event_id,
        "type": "payment.captured",
        "created": int(now),
        "data": {"id": "pay_0"},
    }
    assert headers["Tessera-Event-Id"] == event_id
    assert headers["Content-Type"] == "application/json"
    with pytest.raises(InvalidSignatureError):
        verify_signature(shop.secret, headers[SIGNATURE_HEADER], body + b" ", now=now)
    with pytest.raises(InvalidSignatureError):
        verify_signature("whsec_other", headers[SIGNATURE_HEADER], body, now=now)
    stored = await outbox.get(event_id)
    assert (stored.status, stored.attempts, stored.last_status) == (
        NotificationStatus.DELIVERED,
        1,
        200,
    )
    assert stored.delivered_at == clock.now()


async def test_failures_are_retried_with_exponential_backoff(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    receiver.statuses = [500, 503, 429]
    [event_id] = await _enqueue(outbox, shop.merchant_id)
    dispatcher = make_dispatcher(outbox, merchants)
    waits = []
    for _ in range(3):
        report = await dispatcher.run_once()
        assert report.retrying == 1
        pending = await outbox.get(event_id)
        waits.append((pending.next_attempt_at - clock.now()).total_seconds())
        assert (await dispatcher.run_once()).claimed == 0  # not due yet
        clock.advance(waits[-1])
    assert waits == [10, 20, 40]
    assert pending.last_status == 429 and pending.last_error == "HTTP 429"
    assert (await dispatcher.run_once()).delivered == 1
    bodies = {body for _, body in receiver.requests}
    assert len(receiver.requests) == 4 and len(bodies) == 1  # the same bytes every time
    assert (await outbox.get(event_id)).attempts == 4


async def test_jittered_backoff_stays_in_its_band() -> None:
    backoff = ExponentialBackoff(
        first_delay=timedelta(seconds=10), max_delay=timedelta(seconds=100), jitter=0.2
    )
    for retry, base in [(0, 10), (1, 20), (3, 80), (9, 100)]:
        delays = {backoff.delay(retry).total_seconds() for _ in range(50)}
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays) and len(delays) > 1


async def test_dead_after_max_attempts(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    receiver.statuses = [500] * 10
    [event_id] = await _enqueue(outbox, shop.merchant_id)
    dispatcher = make_dispatcher(outbox, merchants, max_attempts=3)
    reports = []
    for _ in range(5):
        reports.append(await dispatcher.run_once())
        clock.advance(3600)
    assert [r.dead for r in reports] == [0, 0, 1, 0, 0]
    dead = await outbox.get(event_id)
    assert (dead.status, dead.attempts) == (NotificationStatus.DEAD, 3)
    assert len(receiver.requests) == 3


async def test_unreachable_endpoint_and_timeouts_are_retried(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    await merchants.set_webhook_endpoint(
        shop.merchant_id,
        f"http://127.0.0.1:{free_port()}/hook",
        allow_http=True,
        allow_private=True,
    )
    [refused] = await _enqueue(outbox, shop.merchant_id)
    dispatcher = make_dispatcher(outbox, merchants, request_timeout=0.2)
    assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(refused)).last_error == "ClientConnectorError"

    await merchants.set_webhook_endpoint(
        shop.merchant_id, receiver.url, allow_http=True, allow_private=True
    )
    receiver.delay = 1.0  # slower than the request timeout
    clock.advance(3600)
    assert (await dispatcher.run_once()).retrying == 1
    slow = await outbox.get(refused)
    assert slow.last_error == "TimeoutError" and slow.attempts == 2


async def test_redirects_are_not_followed(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    receiver.statuses = [302]
    [event_id] = await _enqueue(outbox, shop.merchant_id)
    assert (await make_dispatcher(outbox, merchants).run_once()).retrying == 1
    assert receiver.other_path_hits == 0
    assert (await outbox.get(event_id)).last_status == 302


async def test_no_endpoint_means_dead_letter(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    await merchants.clear_webhook_endpoint(shop.merchant_id)
    [event_id] = await _enqueue(outbox, shop.merchant_id)
    assert (await make_dispatcher(outbox, merchants).run_once()).dead == 1
    dead = await outbox.get(event_id)
    assert dead.status is NotificationStatus.DEAD and dead.last_error is not None
    assert receiver.requests == []


async def test_restart_delivers_exactly_once(
    database_url: str,
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    receiver.statuses = [500]
    ids = await _enqueue(outbox, shop.merchant_id, 3)
    first = make_dispatcher(outbox, merchants)
    assert (await first.run_once()).delivered == 2
    del first  # the process goes away; only the database remembers
    clock.advance(3600)
    restarted_db = await open_database(database_url)
    try:
        restarted = make_dispatcher(Outbox(restarted_db, clock=clock), MerchantStore(restarted_db))
        assert (await restarted.run_once()).delivered == 1
        clock.advance(3600 * 24)
        assert (await restarted.run_once()).claimed == 0
    finally:
        await restarted_db.close()
    delivered = Counter(
        headers["Tessera-Event-Id"]
        for (headers, _), status in zip(receiver.requests, [500, 200, 200, 200], strict=True)
        if status == 200
    )
    assert sorted(delivered) == sorted(ids) and set(delivered.values()) == {1}


async def test_a_dead_dispatchers_lease_lapses(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    [event_id] = await _enqueue(outbox, shop.merchant_id)
    # A dispatcher claimed it, then its process died before posting anything.
    _, claimed = await outbox.claim_due(clock.now(), 10, timedelta(seconds=30))
    assert [n.id for n in claimed] == [event_id]
    survivor = make_dispatcher(outbox, merchants)
    assert (await survivor.run_once()).claimed == 0
    clock.advance(31)
    assert (await survivor.run_once()).delivered == 1
    assert receiver.delivered_ids() == Counter({event_id: 1})


async def test_two_dispatchers_never_deliver_twice(
    database_url: str,
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    receiver.delay = 0.01
    ids = await _enqueue(outbox, shop.merchant_id, 30)
    other_db = await open_database(database_url)
    try:
        one = make_dispatcher(outbox, merchants, batch_size=7)
        two = make_dispatcher(Outbox(other_db, clock=clock), MerchantStore(other_db), batch_size=7)
        for _ in range(10):
            reports = await asyncio.gather(one.run_once(), two.run_once(), one.run_once())
            if not any(r.claimed for r in reports):
                break
    finally:
        await other_db.close()
    assert receiver.delivered_ids() == Counter(dict.fromkeys(ids, 1))


async def test_run_forever_delivers_then_stops(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
    receiver: Receiver,
) -> None:
    stop = asyncio.Event()
    receiver.expected = 2
    dispatcher = make_dispatcher(outbox, merchants)
    task = asyncio.create_task(dispatcher.run_forever(stop, idle_interval=0.01))
    await _enqueue(outbox, shop.merchant_id, 2)
    async with asyncio.timeout(5):
        await receiver.enough.wait()
    stop.set()
    async with asyncio.timeout(5):
        await task
    assert len(receiver.delivered_ids()) == 2


async def test_delivered_notifications_are_purged(
    outbox: Outbox,
    merchants: MerchantStore,
    make_dispatcher: MakeDispatcher,
    clock: FakeClock,
    shop: Shop,
) -> None:
    await _enqueue(outbox, shop.merchant_id, 2)
    await make_dispatcher(outbox, merchants).run_once()
    clock.advance(1)
    assert await outbox.purge_delivered(clock.now()) == 2
    assert await outbox.for_merchant(shop.merchant_id) == []


# -- signatures (what merchants run) ------------------------------------------------------------


def test_verify_signature_accepts_fresh_and_rotated_signatures() -> None:
    body = b'{"id":"evt_1"}'
    header = sign_payload("whsec_new", body, timestamp=1_000)
    assert verify_signature("whsec_new", header, body, now=1_100) == 1_000
    old = sign_payload("whsec_old", body, timestamp=1_000).split(",")[1]
    rotated = f"{header},{old}"  # both secrets sign during a rotation
    assert verify_signature("whsec_old", rotated, body, now=1_000) == 1_000
    assert verify_signature(b"whsec_new", rotated, body, now=1_000) == 1_000


@pytest.mark.parametrize(
    ("header", "now", "message"),
    [
        (None, 1_000, "missing"),
        ("", 1_000, "missing"),
        ("v1=abc", 1_000, "timestamp"),
        ("t=abc,v1=abc", 1_000, "timestamp"),
        ("t=" + "1" * 5000 + ",v1=ab", 1_000, "timestamp"),  # int() would raise ValueError
        ("t=1000", 1_000, "v1"),
        ("SIGNED", 1_401, "tolerance"),  # stale: replayed after the window
        ("SIGNED", 599, "tolerance"),  # from the future
        ("t=1000,v1=00", 1_000, "does not match"),
    ],
)
def test_verify_signature_refuses(header: str | None, now: int, message: str) -> None:
    body = b'{"id":"evt_1"}'
    if header == "SIGNED":
        header = sign_payload("whsec_a", body, timestamp=1_000)
    with pytest.raises(InvalidSignatureError, match=message) as caught:
        verify_signature("whsec_a", header, body, now=now)
    assert "whsec_a" not in str(caught.value)


# -- merchant webhook endpoints -----------------------------------------------------------------


async def test_webhook_endpoint_settings(
    merchants: MerchantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeDns.install(monkeypatch).answers["shop.example"] = ["93.184.215.14"]  # no real DNS
    merchant, _ = await merchants.create("shop")
    assert await merchants.webhook_endpoint(merchant.id) is None
    endpoint = await merchants.set_webhook_endpoint(merchant.id, "https://shop.example/hooks")
    assert endpoint.secret.startswith("whsec_") and endpoint.secret not in repr(endpoint)
    moved = await merchants.set_webhook_endpoint(merchant.id, "https://shop.example/v2")
    assert moved.secret == endpoint.secret  # changing the URL keeps the secret
    rotated = await merchants.rotate_webhook_secret(merchant.id)
    assert rotated != endpoint.secret
    assert await merchants.webhook_endpoint(merchant.id) == type(endpoint)(
        "https://shop.example/v2", rotated
    )
    await merchants.clear_webhook_endpoint(merchant.id)
    assert await merchants.webhook_endpoint(merchant.id) is None
    for bad in ("http://shop.example/h", "ftp://x/", "https://user:pw@shop.example/", "/rel"):
        with pytest.raises(ValueError, match="https"):
            await merchants.set_webhook_endpoint(merchant.id, bad)
    with pytest.raises(LookupError):
        await merchants.set_webhook_endpoint("mer_missing", "https://shop.example/")
