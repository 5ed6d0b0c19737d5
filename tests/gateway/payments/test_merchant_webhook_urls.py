"""Merchant webhook URLs never reach internal addresses (SSRF): checked at registration and
before every delivery, where the connection goes to the address that was checked (DNS pinning).

DNS is simulated by replacing ``gateway.merchants.resolve_host``, the one function webhook code
resolves names with; deliveries go to a real aiohttp receiver on loopback, or to a recording
fake session where the checked address would be public (nothing leaves this machine).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

import gateway.merchants
import gateway.payments.outbox
from gateway.commands.admin import merchants_webhook_set
from gateway.config import DatabaseSettings, Settings
from gateway.merchants import (
    IPAddress,
    MerchantStore,
    WebhookUrlError,
    check_webhook_url,
    resolve_webhook_target,
)
from gateway.payments import ExponentialBackoff, NotificationDispatcher, NotificationStatus, Outbox
from tests.gateway.payments.conftest import FakeClock
from vault.database import open_database

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700:4700::1111"
NO_JITTER = ExponentialBackoff(
    first_delay=timedelta(seconds=10), max_delay=timedelta(hours=1), jitter=0
)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the database is not what these tests are about."""
    return f"sqlite:///{tmp_path / 'webhooks.db'}"


@dataclass
class FakeDns:
    """Answers for ``resolve_host``: name -> addresses (or an exception); records every ask."""

    answers: dict[str, list[str] | Exception] = field(default_factory=dict)
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append((host, port))
        answer = self.answers.get(host, socket.gaierror(socket.EAI_NONAME, "unknown name"))
        if isinstance(answer, Exception):
            raise answer
        return [ipaddress.ip_address(a) for a in answer]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(gateway.merchants, "resolve_host", fake.resolve)
    return fake


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


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1", "0177.0.0.1"])
async def test_numeric_host_spellings_resolve_and_are_refused(host: str) -> None:
    # Not IP literals to ``ipaddress``, but getaddrinfo reads them as 127.0.0.1 (no DNS query).
    with pytest.raises(WebhookUrlError) as refused:
        await check_webhook_url(f"https://{host}/hooks")
    assert refused.value.code == "webhook_target_refused"


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
    url: str = ""
    port: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append(dict(request.headers))
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername"))
        return web.Response(status=204)


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Awaitable[Any]]) -> Receiver:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    recv.url, recv.port = str(server.make_url("/hook")), server.port
    return recv


class NoResolver(AbstractResolver):
    """The session's own resolver: the dispatcher must never need it (it connects to IPs)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        raise OSError("the session's resolver was asked")

    async def close(self) -> None:
        pass


@pytest.fixture
async def session_resolver() -> NoResolver:
    return NoResolver()


@pytest.fixture
async def session(session_resolver: NoResolver) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(resolver=session_resolver)
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


async def _setup(
    merchants: MerchantStore, outbox: Outbox, dns: FakeDns, url: str, answer: list[str]
) -> tuple[str, str]:
    """A merchant whose webhook ``url`` resolves to ``answer``, and one pending notification."""
    host = URL(url).raw_host
    assert host is not None
    dns.answers[host] = answer
    merchant, _ = await merchants.create("shop")
    await merchants.set_webhook_endpoint(merchant.id, url, allow_http=True, allow_private=True)
    async with outbox.db.transaction() as tx:
        event_id = await outbox.enqueue(tx, merchant.id, "payment.captured", {"id": "pay_1"})
    dns.asked.clear()
    return merchant.id, event_id


def _dispatcher(
    outbox: Outbox,
    merchants: MerchantStore,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    *,
    allow_private: bool,
) -> NotificationDispatcher:
    return NotificationDispatcher(
        outbox,
        merchants,
        session=session,
        clock=clock,
        backoff=NO_JITTER,
        request_timeout=2.0,
        lease_seconds=30.0,
        allow_private_targets=allow_private,
    )


async def test_delivery_connects_to_the_checked_address(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    session: aiohttp.ClientSession,
    session_resolver: NoResolver,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    # The name exists only in the simulated DNS: only the pinned address can reach the receiver.
    url = f"http://hooks.merchant.test:{receiver.port}/hook"
    _, event_id = await _setup(merchants, outbox, dns, url, ["127.0.0.1"])
    report = await _dispatcher(outbox, merchants, session, clock, allow_private=True).run_once()
    assert report.delivered == 1
    assert dns.asked == [("hooks.merchant.test", receiver.port)]  # resolved once, then pinned
    assert session_resolver.asked == []  # aiohttp never resolved the name itself
    [headers] = receiver.requests
    assert headers["Host"] == f"hooks.merchant.test:{receiver.port}"
    assert (await outbox.get(event_id)).status is NotificationStatus.DELIVERED


async def test_delivery_tries_the_next_checked_address_when_a_connect_fails(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    receiver: Receiver,
) -> None:
    url = f"http://hooks.merchant.test:{receiver.port}/hook"
    await _setup(merchants, outbox, dns, url, ["127.0.0.2", "127.0.0.1"])  # nothing on .2
    report = await _dispatcher(outbox, merchants, session, clock, allow_private=True).run_once()
    assert report.delivered == 1 and len(receiver.requests) == 1


@pytest.mark.parametrize("pool_keyed_by_tls_name", [True, False])
async def test_connections_are_not_pooled_where_aiohttp_ignores_the_tls_name(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    pool_keyed_by_tls_name: bool,
) -> None:
    monkeypatch.setattr(gateway.payments.outbox, "_POOL_KEYED_BY_TLS_NAME", pool_keyed_by_tls_name)
    url = f"http://hooks.merchant.test:{receiver.port}/hook"
    merchant_id, _ = await _setup(merchants, outbox, dns, url, ["127.0.0.1"])
    dispatcher = _dispatcher(outbox, merchants, session, clock, allow_private=True)
    assert (await dispatcher.run_once()).delivered == 1
    async with outbox.db.transaction() as tx:
        await outbox.enqueue(tx, merchant_id, "payment.captured", {"id": "pay_2"})
    assert (await dispatcher.run_once()).delivered == 1
    # One pooled connection reused, or a fresh connection (a new client port) per delivery.
    assert len(set(receiver.peers)) == (1 if pool_keyed_by_tls_name else 2)


@pytest.mark.parametrize(
    "answer", [["127.0.0.1"], ["10.0.0.5"], [PUBLIC_V4, "169.254.169.254"], ["::ffff:127.0.0.1"]]
)
async def test_a_name_rebound_to_a_private_address_is_blocked_and_retried(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    session: aiohttp.ClientSession,
    clock: FakeClock,
    receiver: Receiver,
    answer: list[str],
) -> None:
    url = f"https://hooks.merchant.example:{receiver.port}/hook"
    _, event_id = await _setup(merchants, outbox, dns, url, [PUBLIC_V4])
    dns.answers["hooks.merchant.example"] = answer  # DNS changed after registration
    dispatcher = _dispatcher(outbox, merchants, session, clock, allow_private=False)
    report = await dispatcher.run_once()
    assert report.retrying == 1 and receiver.requests == []
    failed = await outbox.get(event_id)
    assert failed.status is NotificationStatus.PENDING and failed.attempts == 1
    assert failed.last_error == "target refused: not a public address"
    assert failed.last_status is None
    assert failed.next_attempt_at == clock.now() + NO_JITTER.delay(0, random.Random())

    # Retried on the outbox's backoff; still blocked while DNS points inside.
    clock.advance(10)
    assert (await dispatcher.run_once()).retrying == 1
    assert (await outbox.get(event_id)).attempts == 2 and receiver.requests == []


async def test_the_switch_never_admits_metadata_addresses_at_delivery(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    session: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    _, event_id = await _setup(merchants, outbox, dns, "https://hooks.merchant.test/h", [PUBLIC_V4])
    dns.answers["hooks.merchant.test"] = ["169.254.169.254"]
    report = await _dispatcher(outbox, merchants, session, clock, allow_private=True).run_once()
    assert report.retrying == 1
    assert (await outbox.get(event_id)).last_error == "target refused: not a public address"


async def test_a_name_that_stops_resolving_is_a_failed_attempt(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    session: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    _, event_id = await _setup(merchants, outbox, dns, "https://gone.merchant.test/h", [PUBLIC_V4])
    dns.answers["gone.merchant.test"] = socket.gaierror(socket.EAI_NONAME, "gone")
    report = await _dispatcher(outbox, merchants, session, clock, allow_private=False).run_once()
    assert report.retrying == 1
    assert (await outbox.get(event_id)).last_error == "target did not resolve"


@dataclass
class Posted:
    url: URL
    headers: dict[str, str]
    server_hostname: str | None


class RecordingSession:
    """Stands in for ``aiohttp.ClientSession`` where the checked address is public: records the
    request the dispatcher would send and answers 204 without touching the network."""

    def __init__(self) -> None:
        self.posted: list[Posted] = []

    @asynccontextmanager
    async def _answer(self) -> AsyncIterator[Any]:
        class Content:
            async def read(self, n: int) -> bytes:
                return b""

        class Response:
            status = 204
            content = Content()

        yield Response()

    def post(self, url: URL, **kwargs: Any) -> Any:
        self.posted.append(Posted(url, dict(kwargs["headers"]), kwargs.get("server_hostname")))
        return self._answer()


@pytest.mark.parametrize(
    ("url", "answer", "pinned", "host_header"),
    [
        (
            "https://hooks.merchant.example/notify?shop=1",
            [PUBLIC_V4],
            f"https://{PUBLIC_V4}/notify?shop=1",
            "hooks.merchant.example",
        ),
        (
            "https://hooks.merchant.example:8443/notify",
            [PUBLIC_V6],
            f"https://[{PUBLIC_V6}]:8443/notify",
            "hooks.merchant.example:8443",
        ),
    ],
)
async def test_production_delivery_is_pinned_with_host_and_tls_name(
    dns: FakeDns,
    merchants: MerchantStore,
    outbox: Outbox,
    clock: FakeClock,
    url: str,
    answer: list[str],
    pinned: str,
    host_header: str,
) -> None:
    await _setup(merchants, outbox, dns, url, answer)
    fake = RecordingSession()
    dispatcher = _dispatcher(
        outbox, merchants, cast(aiohttp.ClientSession, fake), clock, allow_private=False
    )
    assert (await dispatcher.run_once()).delivered == 1
    [posted] = fake.posted
    assert str(posted.url) == pinned
    assert posted.headers["Host"] == host_header
    assert posted.server_hostname == "hooks.merchant.example"  # SNI + certificate check


async def test_resolve_webhook_target_reports_every_checked_address(dns: FakeDns) -> None:
    dns.answers["hooks.merchant.example"] = [PUBLIC_V4, PUBLIC_V6]
    target = await resolve_webhook_target("https://hooks.merchant.example/h")
    assert [str(a) for a in target.addresses] == [PUBLIC_V4, PUBLIC_V6]
    assert target.host_header == "hooks.merchant.example" and not target.literal
    literal = await resolve_webhook_target(f"https://[{PUBLIC_V6}]:8443/h")
    assert literal.literal and literal.host_header == f"[{PUBLIC_V6}]:8443"
