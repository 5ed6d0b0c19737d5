"""Merchant notifications: a transactional outbox and the dispatcher that delivers it.

``Outbox.enqueue(tx, merchant_id, event_type, payload)`` writes a notification **in the caller's
transaction**: commit the payment's state change and its notification together, or neither
(a rolled-back change notifies nobody; a committed one is never forgotten).

``NotificationDispatcher`` delivers pending notifications to the merchant's webhook endpoint
(``MerchantStore.webhook_endpoint``) as JSON POSTs::

    {"id": "evt_...", "type": "payment.captured", "created": 1718000000, "data": {...}}

signed with ``Tessera-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (see
``signatures``), with ``Tessera-Event-Id`` and ``Tessera-Event-Type`` headers. A 2xx answer
delivers it; anything else (another status, a connection error, a timeout) schedules a retry
with exponential backoff and jitter, until ``max_attempts`` marks it ``dead``. Redirects are
not followed.

Where a delivery may go is decided at the depth where the connection is made. The dispatcher
owns its session: it builds it itself, with ``delivery_session`` and its own
``allow_private_targets``, on first use (on the running loop), and closes it in ``close()``; no
caller can hand it another. That session resolves names through
``sdk.aiohttp_transport.GuardedResolver``: each name is resolved once, the whole answer is
refused if any address is non-public (``sdk.hostpolicy.resolve_checked``: loopback, private,
link-local, metadata and other non-public addresses), and aiohttp connects to the addresses that
were checked, never looking the name up again, so DNS rebinding between the check and the
connect cannot reach an internal host. The request goes to the URL as registered: aiohttp sends
its host as ``Host`` and verifies the certificate against it, and keeps connections alive in a
pool keyed by that host name, so a pooled connection only ever carries requests for the name it
was checked for. aiohttp never asks a resolver about an IP literal, so before each post the
dispatcher checks the URL's form and, for an IP-literal host, the literal itself
(``gateway.merchants.check_webhook_delivery_url``).

aiohttp's DNS cache (``ttl_dns_cache``, 10 s) holds only answers the resolver returned, i.e.
checked ones: a refused answer is raised, never returned, so it is never cached, and the next
delivery to that name resolves and checks again. (A cached answer is reused for up to 10 s;
it was checked, so it cannot point inside.)

A refused or unresolvable target is a failed attempt like any other (``last_error`` says
``target refused: not a public address`` or ``target did not resolve``, never an address, a
name or the URL) and is retried with the same backoff: DNS may be fixed meanwhile.
``allow_private_targets`` admits loopback and private addresses for development and tests only.

All state is in the database, so a restarted dispatcher carries on where the last one stopped.
Each run claims a batch with a lease (``locked_until``, ``lock_token``; ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL): two dispatcher processes never deliver one notification at the same
time, and a dispatcher that dies mid-delivery leaves it to the next run once the lease lapses.
Delivery is at least once (a crash between the merchant's 2xx and the write that records it
means one more delivery), so receivers dedupe on the event id; order is not guaranteed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Self

import aiohttp
import orjson

from gateway.merchants import (
    WEBHOOK_RESOLVE_TIMEOUT,
    MerchantStore,
    WebhookUrlError,
    check_webhook_delivery_url,
)
from gateway.payments.backoff import ExponentialBackoff
from gateway.payments.instants import Clock, SystemClock, from_micros, to_micros
from gateway.payments.records import new_id
from gateway.payments.signatures import SIGNATURE_HEADER, sign_payload, verify_signature
from normalization import NotFoundError
from sdk.aiohttp_transport import GuardedResolver
from sdk.hostpolicy import DestinationRefusedError
from vault.database import Connection, Migration, PostgresDatabase, Row, SqliteDatabase, migrate

__all__ = [
    "DispatchReport",
    "Notification",
    "NotificationDispatcher",
    "NotificationStatus",
    "Outbox",
    "delivery_session",
    "verify_signature",
]

log = logging.getLogger("tessera.gateway.notifications")

_COMPONENT = "gateway.outbox"
_MIGRATIONS = [
    Migration(
        1,
        """
        CREATE TABLE merchant_notifications (
            id TEXT PRIMARY KEY,
            merchant_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL,
            locked_until BIGINT,
            lock_token TEXT,
            last_status INTEGER,
            last_error TEXT,
            created_at BIGINT NOT NULL,
            delivered_at BIGINT
        );
        CREATE INDEX merchant_notifications_due
            ON merchant_notifications (status, next_attempt_at);
        CREATE INDEX merchant_notifications_merchant
            ON merchant_notifications (merchant_id, created_at)
        """,
    )
]
_COLUMNS = (
    "id, merchant_id, event_type, body, status, attempts, next_attempt_at, locked_until, "
    "last_status, last_error, created_at, delivered_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM merchant_notifications"  # noqa: S608 - constant columns
# Claim a batch: due, pending, not leased by anyone else. The lease test is repeated in the
# outer WHERE because PostgreSQL re-checks it on a row another claimer just updated.
_CLAIM = (
    "UPDATE merchant_notifications SET locked_until = $1, lock_token = $2 "  # noqa: S608
    "WHERE status = 'pending' AND (locked_until IS NULL OR locked_until <= $3) AND id IN ("
    "SELECT id FROM merchant_notifications WHERE status = 'pending' AND next_attempt_at <= $3 "
    "AND (locked_until IS NULL OR locked_until <= $3) ORDER BY next_attempt_at, id LIMIT $4"
    "{lock}) "
    f"RETURNING {_COLUMNS}"
)
_MAX_RESPONSE_BYTES = 64 * 1024
#: What ``last_error`` says when the target itself is refused: fixed text, no address or name.
_TARGET_ERRORS = {
    "webhook_target_refused": "target refused: not a public address",
    "webhook_target_unresolved": "target did not resolve",
    "webhook_url_invalid": "target refused: invalid URL",
}


class NotificationStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification for one merchant; ``body`` is exactly the bytes that are posted."""

    id: str
    merchant_id: str
    event_type: str
    body: bytes
    status: NotificationStatus
    attempts: int
    next_attempt_at: datetime
    locked_until: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """What one ``run_once`` did."""

    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0


class Outbox:
    """The ``merchant_notifications`` table."""

    def __init__(
        self, db: SqliteDatabase | PostgresDatabase, *, clock: Clock | None = None
    ) -> None:
        self.db = db
        self._clock = clock or SystemClock()

    async def migrate(self) -> None:
        await migrate(self.db, _COMPONENT, _MIGRATIONS)

    async def enqueue(
        self,
        tx: Connection,
        merchant_id: str,
        event_type: str,
        payload: Mapping[str, object],
    ) -> str:
        """Add a notification inside ``tx`` (from ``db.transaction()``); return its event id.

        ``payload`` becomes the envelope's ``data``; it is serialized now, so every retry
        posts the same bytes. It is the gateway's own view of a resource: never card data.
        """
        now = self._clock.now()
        event_id = new_id("evt")
        body = orjson.dumps(
            {
                "id": event_id,
                "type": event_type,
                "created": int(now.timestamp()),
                "data": payload,
            }
        )
        await tx.execute(
            "INSERT INTO merchant_notifications (id, merchant_id, event_type, body, status, "
            "attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
            event_id,
            merchant_id,
            event_type,
            body.decode(),
            NotificationStatus.PENDING.value,
            to_micros(now),
        )
        return event_id

    async def get(self, notification_id: str) -> Notification:
        row = await self.db.fetchone(_SELECT + " WHERE id = $1", notification_id)
        if row is None:
            raise NotFoundError("No such notification.")
        return _notification(row)

    async def for_merchant(self, merchant_id: str, *, limit: int = 100) -> list[Notification]:
        """The merchant's most recent notifications, newest first."""
        rows = await self.db.fetchall(
            _SELECT + " WHERE merchant_id = $1 ORDER BY created_at DESC, id LIMIT $2",
            merchant_id,
            limit,
        )
        return [_notification(row) for row in rows]

    async def claim_due(
        self, now: datetime, limit: int, lease: timedelta
    ) -> tuple[str, list[Notification]]:
        """Lease up to ``limit`` due notifications; return the lease token and them."""
        token = secrets.token_hex(16)
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        at = to_micros(now)
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                _CLAIM.format(lock=lock), to_micros(now + lease), token, at, limit
            )
        return token, sorted((_notification(r) for r in rows), key=lambda n: n.next_attempt_at)

    async def record_delivery(
        self, notification: Notification, token: str, *, http_status: int, now: datetime
    ) -> bool:
        """Mark delivered, if this lease still holds it."""
        updated = await self.db.fetchval(
            "UPDATE merchant_notifications SET status = $1, attempts = attempts + 1, "
            "last_status = $2, last_error = NULL, delivered_at = $3, locked_until = NULL, "
            "lock_token = NULL WHERE id = $4 AND lock_token = $5 RETURNING id",
            NotificationStatus.DELIVERED.value,
            http_status,
            to_micros(now),
            notification.id,
            token,
        )
        return updated is not None

    async def record_failure(
        self,
        notification: Notification,
        token: str,
        *,
        http_status: int | None,
        error: str,
        retry_at: datetime | None,
    ) -> bool:
        """Count a failed try: due again at ``retry_at``, or ``dead`` when it is None."""
        status = NotificationStatus.PENDING if retry_at is not None else NotificationStatus.DEAD
        next_at = notification.next_attempt_at if retry_at is None else retry_at
        updated = await self.db.fetchval(
            "UPDATE merchant_notifications SET status = $1, attempts = attempts + 1, "
            "last_status = $2, last_error = $3, next_attempt_at = $4, locked_until = NULL, "
            "lock_token = NULL WHERE id = $5 AND lock_token = $6 RETURNING id",
            status.value,
            http_status,
            error[:500],
            to_micros(next_at),
            notification.id,
            token,
        )
        return updated is not None

    async def purge_delivered(self, before: datetime) -> int:
        """Delete delivered notifications older than ``before``; dead ones stay for inspection."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "DELETE FROM merchant_notifications WHERE status = $1 AND delivered_at < $2 "
                "RETURNING id",
                NotificationStatus.DELIVERED.value,
                to_micros(before),
            )
        return len(rows)


def delivery_session(
    *,
    allow_private_targets: bool = False,
    timeout: float = 15.0,
    resolve_timeout: float = WEBHOOK_RESOLVE_TIMEOUT,
) -> aiohttp.ClientSession:
    """The aiohttp session a ``NotificationDispatcher`` builds for itself (on the running loop).

    Its connector resolves through ``GuardedResolver`` (see the module docstring) in the test
    mode ``allow_private_targets``. No cookie jar (one merchant's cookies never reach another),
    no proxies or netrc from the environment, no decompression (the body is not read beyond a
    few KiB). The caller closes it.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(test_mode=allow_private_targets, timeout=resolve_timeout)
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


class NotificationDispatcher:
    """Delivers the outbox: ``run_once()`` for one batch, ``run_forever(stop)`` in the app.

    It posts with a session of its own (``delivery_session(allow_private_targets=...,
    resolve_timeout=...)``), built on the first delivery, so every delivery resolves through
    ``GuardedResolver`` in the dispatcher's own test mode. ``close()`` (or leaving
    ``async with``) closes it; a closed dispatcher delivers nothing more.
    """

    def __init__(
        self,
        outbox: Outbox,
        merchants: MerchantStore,
        *,
        clock: Clock | None = None,
        max_attempts: int = 12,
        backoff: ExponentialBackoff | None = None,
        request_timeout: float = 10.0,
        lease_seconds: float = 60.0,
        batch_size: int = 50,
        concurrency: int = 8,
        rng: random.Random | None = None,
        allow_private_targets: bool = False,
        resolve_timeout: float = WEBHOOK_RESOLVE_TIMEOUT,
    ) -> None:
        if max_attempts < 1 or batch_size < 1 or concurrency < 1:
            raise ValueError("max_attempts, batch_size and concurrency must be positive.")
        if lease_seconds <= request_timeout:
            # A lease shorter than a delivery would let a second dispatcher post it meanwhile.
            raise ValueError("lease_seconds must exceed request_timeout.")
        self._outbox = outbox
        self._merchants = merchants
        # Built on the running loop by the first delivery (``_delivery_session``).
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._resolve_timeout = resolve_timeout
        self._clock = clock or SystemClock()
        self._max_attempts = max_attempts
        self._backoff = backoff or ExponentialBackoff(
            first_delay=timedelta(seconds=10), max_delay=timedelta(hours=6), jitter=0.2
        )
        self._timeout = request_timeout
        self._lease = timedelta(seconds=lease_seconds)
        self._batch = batch_size
        self._concurrency = asyncio.Semaphore(concurrency)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._allow_private = allow_private_targets

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the delivery session; the dispatcher delivers nothing afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("The notification dispatcher is closed.")

    def _delivery_session(self) -> aiohttp.ClientSession:
        """The dispatcher's own session, built on first use: its resolver is what keeps
        deliveries off internal addresses, so no delivery goes through any other."""
        self._ensure_open()
        if self._session is None:
            self._session = delivery_session(
                allow_private_targets=self._allow_private,
                timeout=self._timeout,
                resolve_timeout=self._resolve_timeout,
            )
        return self._session

    async def run_once(self) -> DispatchReport:
        """Claim one batch of due notifications and try each once (``RuntimeError`` once
        closed: nothing is claimed then)."""
        self._ensure_open()
        token, batch = await self._outbox.claim_due(self._clock.now(), self._batch, self._lease)
        if not batch:
            return DispatchReport()
        results = await asyncio.gather(
            *(self._deliver(n, token) for n in batch), return_exceptions=True
        )
        outcomes = []
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation and friends are never swallowed
                # Recording the attempt failed (database trouble): the lease lapses and the
                # notification is tried again; the batch's other deliveries stand.
                log.error("notification bookkeeping failed", exc_info=result)
            else:
                outcomes.append(result)
        return DispatchReport(
            claimed=len(batch),
            delivered=outcomes.count(NotificationStatus.DELIVERED),
            retrying=outcomes.count(NotificationStatus.PENDING),
            dead=outcomes.count(NotificationStatus.DEAD),
        )

    async def run_forever(self, stop: asyncio.Event, *, idle_interval: float = 1.0) -> None:
        """Deliver until ``stop`` is set: batch after batch, then poll every ``idle_interval``."""
        while not stop.is_set():
            self._ensure_open()  # closed under it: a bug to surface, not a hiccup to retry
            try:
                report = await self.run_once()
            except Exception:
                # The database or the network hiccuped: the state is durable, try again later.
                log.exception("notification dispatch failed")
                report = DispatchReport()
            if report.claimed == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle_interval)

    async def _deliver(self, notification: Notification, token: str) -> NotificationStatus:
        async with self._concurrency:
            endpoint = await self._merchants.webhook_endpoint(notification.merchant_id)
            if endpoint is None:
                await self._outbox.record_failure(
                    notification,
                    token,
                    http_status=None,
                    error="no webhook endpoint configured",
                    retry_at=None,
                )
                return NotificationStatus.DEAD
            http_status: int | None = None
            error = ""
            target_code: str | None = None
            try:
                check_webhook_delivery_url(endpoint.url, allow_private=self._allow_private)
                async with asyncio.timeout(self._timeout):
                    http_status = await self._post(endpoint.url, endpoint.secret, notification)
            except WebhookUrlError as exc:
                target_code = exc.code
            except DestinationRefusedError:  # from GuardedResolver: a name resolving inside
                target_code = "webhook_target_refused"
            except aiohttp.ClientConnectorDNSError:  # GuardedResolver's HostResolutionError
                target_code = "webhook_target_unresolved"
            except aiohttp.InvalidURL:  # e.g. a numeric host spelling like 2130706433
                target_code = "webhook_url_invalid"
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The class name only: a message may echo the URL or part of a response.
                error = type(exc).__name__
            if target_code is not None:
                error = _TARGET_ERRORS.get(target_code, "target refused")
                log.warning(
                    "notification target refused",
                    extra={
                        "event_id": notification.id,
                        "merchant_id": notification.merchant_id,
                        "code": target_code,
                    },
                )
            now = self._clock.now()
            if http_status is not None and 200 <= http_status < 300:
                await self._outbox.record_delivery(
                    notification, token, http_status=http_status, now=now
                )
                log.info("notification delivered", extra={"event_id": notification.id})
                return NotificationStatus.DELIVERED
            attempts = notification.attempts + 1
            retry_at = None
            if attempts < self._max_attempts:
                retry_at = now + self._backoff.delay(attempts - 1, self._rng)
            await self._outbox.record_failure(
                notification,
                token,
                http_status=http_status,
                error=error or f"HTTP {http_status}",
                retry_at=retry_at,
            )
            log.warning(
                "notification delivery failed",
                extra={"event_id": notification.id, "attempts": attempts, "status": http_status},
            )
            return NotificationStatus.PENDING if retry_at else NotificationStatus.DEAD

    async def _post(self, url: str, secret: str, notification: Notification) -> int:
        """POST the notification to ``url`` as registered; the status it answers.

        The dispatcher's session's ``GuardedResolver`` checks and pins the host's addresses;
        aiohttp tries the next checked address only when connecting failed, i.e. nothing was
        sent.
        """
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Tessera-Notifications/1",
            SIGNATURE_HEADER: sign_payload(secret, notification.body, timestamp=timestamp),
            "Tessera-Event-Id": notification.id,
            "Tessera-Event-Type": notification.event_type,
        }
        async with self._delivery_session().post(
            url, data=notification.body, headers=headers, allow_redirects=False
        ) as response:
            # Read a little so the connection can be reused; the content is ignored.
            await response.content.read(_MAX_RESPONSE_BYTES)
            return response.status


def _notification(row: Row) -> Notification:
    return Notification(
        id=row["id"],
        merchant_id=row["merchant_id"],
        event_type=row["event_type"],
        body=str(row["body"]).encode(),
        status=NotificationStatus(row["status"]),
        attempts=int(row["attempts"]),
        next_attempt_at=from_micros(row["next_attempt_at"]),
        locked_until=None if row["locked_until"] is None else from_micros(row["locked_until"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        created_at=from_micros(row["created_at"]),
        delivered_at=None if row["delivered_at"] is None else from_micros(row["delivered_at"]),
    )
