"""Merchant webhook URLs never reach internal addresses (SSRF).

At registration ``check_webhook_url`` resolves the host with the SDK's ``resolve_checked``. At
delivery the session the dispatcher builds for itself (``delivery_session``) resolves through
``GuardedResolver``, and aiohttp connects to the addresses it checked (DNS pinning); the
dispatcher itself checks only the URL's form and IP-literal hosts, which aiohttp never asks a
resolver about.

DNS is simulated (``tests.fake_dns``: the event loop's ``getaddrinfo`` answers for chosen names;
IP literals go to the real one). Deliveries go to real servers on 127.0.0.1: an aiohttp receiver
where a delivery should arrive, a bare TCP listener counting accepted connections where nothing
may connect. Nothing leaves this machine: no test lets a delivery aim at a public address.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from gateway.commands.admin import merchants_webhook_set
from gateway.config import DatabaseSettings, Settings
from gateway.merchants import MerchantStore, WebhookUrlError, check_webhook_url
from gateway.payments import (
    ExponentialBackoff,
    NotificationDispatcher,
    NotificationStatus,
    Outbox,
)
from tests.fake_dns import FakeDns
from tests.gateway.payments.conftest import FakeClock
from tests.sdk.loopback import RawServer, raw_server
from vault.database import open_database

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700:4700::1111"
NO_JITTER = ExponentialBackoff(
    first_delay=timedelta(seconds=10), max_delay=timedelta(hours=1), jitter=0
)
REFUSED = "target refused: not a public address"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the database is not what these tests are about."""
    return f"sqlite:///{tmp_path / 'webhooks.db'}"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns.install(monkeypatch)


# -- registration ------------------------------------------------------------------------------

PRIVATE_LITERALS = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata
    "169.254.1.1",
    "0.0.0.0",  # noqa: S104 - a refused target, not a bind address
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "[::1]",
    "[::]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[fd00:ec2::254]",
    "[fe80::1]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:10.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[2001:db8::1]",  # documentation
]


@pytest.mark.parametrize("host", PRIVATE_LITERALS)
async def test_private_ip_literals_are_refused(dns: FakeDns, host: str) -> None:
    with pytest.raises(WebhookUrlError) as refused:
        await check_webhook_url(f"https://{host}:8443/hooks")
    assert refused.value.code == "webhook_target_refused"
    assert "public addresses" in str(refused.value)
    assert host.strip("[]") not in str(refused.value)  # the message names no address
    assert dns.asked == []  # a literal is never resolved


@pytest.mark.parametrize("host", [PUBLIC_V4, f"[{PUBLIC_V6}]"])
async def test_public_ip_literals_are_accepted(dns: FakeDns, host: str) -> None:
    await check_webhook_url(f"https://{host}/hooks")


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.0.0.7"],
        ["169.254.169.254"],
        [PUBLIC_V4, "192.168.0.10"],  # also private: refused too
        [PUBLIC_V6, "::1"],
        ["::ffff:10.0.0.1"],
        ["fd00::5"],
    ],
)
async def test_names_resolving_to_private_addresses_are_refused(
    dns: FakeDns, addresses: list[str]
) -> None:
    dns.answers["hooks.shop.example"] = addresses
    with pytest.raises(WebhookUrlError) as refused:
        await check_webhook_url("https://hooks.shop.example/notify")
    assert refused.value.code == "webhook_target_refused"
    assert all(a not in str(refused.value) for a in addresses)
    assert dns.asked == [("hooks.shop.example", 443)]


async def test_names_resolving_to_public_addresses_are_accepted(dns: FakeDns) -> None:
    dns.answers["hooks.shop.example"] = [PUBLIC_V4, PUBLIC_V6]
    await check_webhook_url("https://hooks.shop.example:8443/notify?shop=1")
    assert dns.asked == [("hooks.shop.example", 8443)]  # any port is fine


async def test_a_name_that_does_not_resolve_yet_is_accepted(dns: FakeDns) -> None:
    # Its DNS may not be published yet; every delivery resolves and checks it again.
    await check_webhook_url("https://not-yet.shop.example/hooks")


async def test_localhost_is_refused_in_production_and_allowed_with_the_switch() -> None:
    # The real resolver (/etc/hosts): localhost is loopback.
    with pytest.raises(WebhookUrlError, match="public addresses"):
        await check_webhook_url("https://localhost:8443/hooks")
    await check_webhook_url("https://localhost:8443/hooks", allow_private=True)
    await check_webhook_url("http://localhost:8443/hooks", allow_http=True, allow_private=True)


@pytest.mark.parametrize(
    "host", ["2130706433", "127.1", "0x7f.0.0.1", "0177.0.0.1", "134744072", "shop.example.123"]
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_numeric_host_spellings_are_invalid(host: str, allow_private: bool) -> None:
    # Not IP literals to ``ipaddress``, not DNS names either (no top-level domain is a number):
    # getaddrinfo reads most as IPv4 shorthands (127.0.0.1, 8.8.8.8) and aiohttp refuses the
    # URL outright, so none could ever be delivered to, wherever it points.
    with pytest.raises(WebhookUrlError) as refused:
        await check_webhook_url(f"https://{host}/hooks", allow_private=allow_private)
    assert refused.value.code == "webhook_url_invalid"


async def test_the_switch_still_refuses_link_local_and_metadata(dns: FakeDns) -> None:
    dns.answers["meta.shop.example"] = ["169.254.169.254"]
    for url in ("https://meta.shop.example/", "https://169.254.169.254/", "https://[fe80::1]/"):
        with pytest.raises(WebhookUrlError):
            await check_webhook_url(url, allow_http=True, allow_private=True)
    await check_webhook_url("https://10.0.0.1/", allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.shop.example/h",
        "ftp://hooks.shop.example/",
        "https://user:pw@hooks.shop.example/",
        "https://user@hooks.shop.example/",
        "https:///nohost",
        "/relative",
        "https://hooks.shop.example:99999/",
        "https://hooks.shop.example:0/",
        "https://hooks.shop.example:port/",
        "https://bücher.example/",  # IDNs in their xn-- form, please
        "https://hooks.shop.example/\nInjected: header",
        "https://hooks_shop.example%2f@evil/",
        "https://[fe80::1%25eth0]/",
        "https://" + "a" * 2100 + ".example/",
    ],
)
async def test_malformed_urls_are_refused(dns: FakeDns, url: str) -> None:
    with pytest.raises(WebhookUrlError) as refused:
        await check_webhook_url(url)
    assert refused.value.code == "webhook_url_invalid"
    assert isinstance(refused.value, ValueError)  # callers catching ValueError still do


async def test_the_store_refuses_and_keeps_the_previous_endpoint(
    dns: FakeDns, merchants: MerchantStore
) -> None:
    dns.answers["hooks.shop.example"] = [PUBLIC_V4]
    dns.answers["rebound.shop.example"] = ["127.0.0.1"]
    merchant, _ = await merchants.create("shop")
    endpoint = await merchants.set_webhook_endpoint(merchant.id, "https://hooks.shop.example/h")
    with pytest.raises(WebhookUrlError):
        await merchants.set_webhook_endpoint(merchant.id, "https://rebound.shop.example/h")
    assert await merchants.webhook_endpoint(merchant.id) == endpoint


def test_cli_prints_the_refusal_and_exits_non_zero(
    dns: FakeDns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"

    async def create() -> str:
        db = await open_database(db_url)
        try:
            store = MerchantStore(db)
            await store.migrate()
            merchant, _ = await store.create("shop")
            return merchant.id
        finally:
            await db.close()

    merchant_id = asyncio.run(create())
    settings = Settings(database=DatabaseSettings(url=db_url))
    dns.answers["hooks.shop.example"] = ["10.0.0.9"]
    assert merchants_webhook_set(settings, merchant_id, "https://hooks.shop.example/h") == 2
    out, err = capsys.readouterr()
    assert "webhook_target_refused" in err and "whsec_" not in out
    assert "10.0.0.9" not in err
    assert merchants_webhook_set(settings, merchant_id, "https://[::1]/h") == 2
    assert merchants_webhook_set(settings, "mer_missing", f"https://{PUBLIC_V4}/h") == 1
    dns.answers["hooks.shop.example"] = [PUBLIC_V4]
    assert merchants_webhook_set(settings, merchant_id, "https://hooks.shop.example/h") == 0
    assert "whsec_" in capsys.readouterr().out


# -- delivery ----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A merchant's endpoint on 127.0.0.1: records each request, the client port it came from
    (one port per TCP connection) and the server's end of that connection."""

    port: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append(dict(request.headers))
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername"))
        self.transports.append(request.transport)
        return web.Response(status=204)


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Awaitable[Any]]) -> Receiver:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    recv.port = server.port
    return recv


async def _hang_up(server: RawServer, reader: asyncio.StreamReader, writer: Any) -> None:
    """Accept and hang up: ``raw_server`` counts the connection."""


@pytest.fixture
async def internal() -> AsyncIterator[RawServer]:
    """An internal service on 127.0.0.1 that must never be reached (counts connections)."""
    server = await raw_server(_hang_up)
    yield server
    await server.close()


@pytest.fixture
def allow_private() -> bool:
    """The dispatcher's switch (its session's too: it builds that itself); tests override it
    by parametrizing."""
    return False


@pytest.fixture
async def dispatcher(
    outbox: Outbox, merchants: MerchantStore, clock: FakeClock, allow_private: bool
) -> AsyncIterator[NotificationDispatcher]:
    async with NotificationDispatcher(
        outbox,
        merchants,
        clock=clock,
        backoff=NO_JITTER,
        request_timeout=2.0,
        lease_seconds=30.0,
        allow_private_targets=allow_private,
    ) as dispatcher:
        yield dispatcher


async def _setup(
    merchants: MerchantStore, outbox: Outbox, dns: FakeDns, url: str, answer: list[str]
) -> tuple[str, str]:
    """A merchant whose webhook ``url`` resolved to ``answer`` when it was registered (with the
    development switch, so loopback receivers are accepted), and one pending notification."""
    host = URL(url).raw_host
    assert host is not None
    dns.answers[host] = answer
    merchant, _ = await merchants.create("shop")
    await merchants.set_webhook_endpoint(merchant.id, url, allow_http=True, allow_private=True)
    event_id = await _enqueue(outbox, merchant.id)
    dns.asked.clear()
    return merchant.id, event_id


async def _enqueue(outbox: Outbox, merchant_id: str) -> str:
    async with outbox.db.transaction() as tx:
        return await outbox.enqueue(tx, merchant_id, "payment.captured", {"id": "pay_1"})


@pytest.mark.parametrize("allow_private", [True])
async def test_delivery_posts_to_the_registered_url_and_reuses_the_pooled_connection(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    receiver: Receiver,
) -> None:
    # The name exists only in the simulated DNS: the resolver's answer is the only way there.
    url = f"http://hooks.merchant.test:{receiver.port}/hook"
    merchant_id, first = await _setup(merchants, outbox, dns, url, ["127.0.0.1"])
    assert (await dispatcher.run_once()).delivered == 1
    second = await _enqueue(outbox, merchant_id)
    assert (await dispatcher.run_once()).delivered == 1
    assert [h["Tessera-Event-Id"] for h in receiver.requests] == [first, second]
    # The URL as registered: its name in Host, no forced close, and one kept-alive connection
    # (one client port) for both posts, so the name was resolved and checked once.
    assert {h["Host"] for h in receiver.requests} == {f"hooks.merchant.test:{receiver.port}"}
    assert all(h.get("Connection", "").lower() != "close" for h in receiver.requests)
    assert len(receiver.peers) == 2 and len(set(receiver.peers)) == 1
    assert dns.asked == [("hooks.merchant.test", receiver.port)]


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.1"],
        ["10.0.0.5"],
        ["::ffff:127.0.0.1"],
        ["127.0.0.1", PUBLIC_V4],  # one internal address refuses the whole answer
    ],
)
async def test_a_name_rebound_to_an_internal_address_after_registration_is_refused(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    internal: RawServer,
    clock: FakeClock,
    answer: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"https://hooks.merchant.example:{internal.port}/hook"
    merchant_id = (await merchants.create("shop"))[0].id
    dns.answers["hooks.merchant.example"] = [PUBLIC_V4]
    await merchants.set_webhook_endpoint(merchant_id, url)  # production rules: public
    event_id = await _enqueue(outbox, merchant_id)
    dns.answers["hooks.merchant.example"] = answer  # DNS changed after registration
    caplog.set_level(logging.INFO, logger="tessera.gateway.notifications")
    report = await dispatcher.run_once()
    assert report.retrying == 1 and internal.connections == 0
    failed = await outbox.get(event_id)
    assert failed.status is NotificationStatus.PENDING and failed.attempts == 1
    assert failed.last_error == REFUSED and failed.last_status is None
    assert failed.next_attempt_at == clock.now() + NO_JITTER.delay(0, random.Random())
    [warning] = [r for r in caplog.records if r.getMessage() == "notification target refused"]
    assert warning.__dict__["code"] == "webhook_target_refused"
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert all(a not in logged for a in answer) and "hooks.merchant.example" not in logged

    # Retried on the outbox's backoff; still refused while DNS points inside.
    clock.advance(10)
    assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(event_id)).attempts == 2 and internal.connections == 0


@pytest.mark.parametrize("allow_private", [True])
async def test_a_refused_answer_is_not_cached_and_fixed_dns_delivers_on_the_retry(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    # The switch admits loopback, never metadata addresses.
    url = f"http://hooks.merchant.test:{receiver.port}/hook"
    _, event_id = await _setup(merchants, outbox, dns, url, ["127.0.0.1"])
    dns.answers["hooks.merchant.test"] = ["169.254.169.254"]
    assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(event_id)).last_error == REFUSED
    dns.answers["hooks.merchant.test"] = ["127.0.0.1"]
    clock.advance(10)  # well within aiohttp's 10 s DNS cache, had the refusal been cached
    assert (await dispatcher.run_once()).delivered == 1
    assert len(receiver.requests) == 1 and len(dns.asked) == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_an_ip_literal_internal_url_is_refused_without_connecting(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    internal: RawServer,
    host: str,
) -> None:
    _, event_id = await _setup(
        merchants, outbox, dns, f"http://{host}:{internal.port}/hook", ["127.0.0.1"]
    )
    assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(event_id)).last_error == REFUSED
    assert internal.connections == 0 and dns.asked == []


@pytest.mark.parametrize("allow_private", [True])
async def test_an_ip_literal_url_is_delivered_with_the_switch(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    receiver: Receiver,
) -> None:
    await _setup(merchants, outbox, dns, f"http://127.0.0.1:{receiver.port}/hook", [])
    assert (await dispatcher.run_once()).delivered == 1
    assert len(receiver.requests) == 1 and dns.asked == []


@pytest.mark.parametrize("allow_private", [True])
async def test_a_numeric_host_spelling_is_refused_at_delivery(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    internal: RawServer,
) -> None:
    # 2130706433 is 127.0.0.1 to getaddrinfo. Registration refuses it now; a row stored before
    # it did is refused at delivery, without connecting (aiohttp would refuse it too).
    merchant_id, event_id = await _setup(
        merchants, outbox, dns, f"http://127.0.0.1:{internal.port}/hook", []
    )
    await merchants._db.execute(
        "UPDATE merchants SET webhook_url = $1 WHERE id = $2",
        f"http://2130706433:{internal.port}/hook",
        merchant_id,
    )
    assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(event_id)).last_error == "target refused: invalid URL"
    assert internal.connections == 0


@pytest.mark.parametrize(
    "answer", [socket.gaierror(socket.EAI_NONAME, "gone"), []], ids=["nxdomain", "no-address"]
)
async def test_a_name_that_stops_resolving_is_retried(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    clock: FakeClock,
    answer: list[str] | BaseException,
) -> None:
    merchant_id = (await merchants.create("shop"))[0].id
    dns.answers["gone.merchant.example"] = [PUBLIC_V4]
    await merchants.set_webhook_endpoint(merchant_id, "https://gone.merchant.example/h")
    event_id = await _enqueue(outbox, merchant_id)
    dns.answers["gone.merchant.example"] = answer
    assert (await dispatcher.run_once()).retrying == 1
    failed = await outbox.get(event_id)
    assert failed.last_error == "target did not resolve" and failed.attempts == 1
    clock.advance(10)
    assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(event_id)).attempts == 2


async def test_a_lookup_that_outlasts_the_resolve_timeout_is_a_connection_timeout(
    dns: FakeDns, merchants: MerchantStore, outbox: Outbox, clock: FakeClock
) -> None:
    _, event_id = await _setup(merchants, outbox, dns, "https://slow.merchant.example/h", [])
    dns.hanging.add("slow.merchant.example")
    async with NotificationDispatcher(
        outbox, merchants, clock=clock, request_timeout=2.0, resolve_timeout=0.05
    ) as dispatcher:
        assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(event_id)).last_error == "ConnectionTimeoutError"


@pytest.mark.parametrize("allow_private", [True])
async def test_close_closes_the_dispatchers_own_session_and_it_delivers_nothing_more(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    dispatcher: NotificationDispatcher,
    receiver: Receiver,
) -> None:
    url = f"http://hooks.merchant.test:{receiver.port}/hook"
    merchant_id, _ = await _setup(merchants, outbox, dns, url, ["127.0.0.1"])
    assert (await dispatcher.run_once()).delivered == 1
    [connection] = receiver.transports
    assert not connection.is_closing()  # kept alive in the dispatcher's pool
    await dispatcher.close()
    async with asyncio.timeout(5):  # the client end closed: the receiver sees it go
        while not connection.is_closing():  # noqa: ASYNC110 - a transport has no event
            await asyncio.sleep(0.01)
    # Closed for good: nothing is claimed (no lease taken), no new session is built.
    event_id = await _enqueue(outbox, merchant_id)
    with pytest.raises(RuntimeError, match="closed"):
        await dispatcher.run_once()
    assert (await outbox.get(event_id)).locked_until is None
    assert len(receiver.requests) == 1
    await dispatcher.close()  # closing twice is harmless (the fixture closes it again)
