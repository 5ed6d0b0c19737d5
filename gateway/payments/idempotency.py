"""Idempotency keys with Stripe's semantics, durable and shared by every gateway process.

``IdempotencyStore.run(merchant_id, key, method, path, body, handler)`` guards one POST:

- The first request with a key **claims** it: a row ``(merchant_id, key)`` in state
  ``in_progress``; the primary key makes the claim atomic across processes. ``handler`` runs and
  its response (status, headers, body bytes) is stored; the row becomes ``done``.
- The same key with the same request (method, path, body) **replays** the stored status and
  body byte for byte; ``handler`` is not called. Replays carry ``Idempotent-Replayed: true``.
- The same key with a different request → ``HttpProblem(422, "idempotency_key_reused")``.
- A request while the first still runs → ``HttpProblem(409, "idempotency_key_in_use")`` with
  ``Retry-After``.
- Keys are per merchant; the same key from two merchants is two requests.
- After ``retention_seconds`` a key is forgotten: treated as new, and deleted by
  ``purge_expired()``.

Requests are compared by a fingerprint: HMAC-SHA256 under ``fingerprint_key`` of (merchant,
method, path, body). It is keyed on purpose: a body may carry an inline card number, and an
unkeyed hash of it would be a PAN hash anyone could brute-force (PCI DSS 3.5.1.1). Neither the
body nor the request's CVV is ever stored; every process must use the same ``fingerprint_key``.

**Failures and crashes.** If ``handler`` raises, or returns a result marked not storable (a 503
before anything was attempted, say), the claim is released so a retry runs. A claim is a lease
(``locked_until``), renewed while the handler runs: a process killed mid-request leaves a claim
that another process may take over once the lease lapses. The handler then gets an
``IdempotencyClaim`` whose ``resource_id`` is what the dead run bound with ``bind_resource``
(the payment it created), so the retry continues that payment (and its attempts' provider
idempotency keys) instead of charging again. Leases compare the processes' wall clocks: keep
them synchronized (NTP); skew must stay well below ``claim_lease_seconds``.

Handlers return business answers (a 402 decline, a 409 the payment's state refuses) as
storable results, so that a retry sees the same answer; they raise, or return
``storable=False``, for what running again may change: a request that failed validation (422,
before anything ran), a conflict with a concurrent operation (409 ``operation_in_progress``),
a transient failure (5xx).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import orjson

from gateway.payments.instants import Clock, SystemClock, to_micros
from gateway.problems import HttpProblem
from vault.database import Connection, Migration, PostgresDatabase, Row, SqliteDatabase, migrate

__all__ = [
    "HandlerResult",
    "IdempotencyClaim",
    "IdempotencyStore",
    "IdempotentResponse",
    "validate_idempotency_key",
]

log = logging.getLogger("tessera.gateway.idempotency")

_COMPONENT = "gateway.idempotency"
_TABLE_SQL = """
CREATE TABLE idempotency_keys (
    merchant_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    claim_token TEXT NOT NULL,
    locked_until BIGINT,
    resource_id TEXT,
    response_status INTEGER,
    response_headers TEXT,
    response_body {blob},
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at)
"""
_MIGRATIONS = [
    Migration(1, _TABLE_SQL.format(blob="BLOB"), _TABLE_SQL.format(blob="BYTEA")),
]

_KEY_RE = re.compile(r"[\x20-\x7e]{1,255}", re.ASCII)
_IN_PROGRESS = "in_progress"
_DONE = "done"
_MAX_CLAIM_ROUNDS = 5
_MIN_FINGERPRINT_KEY_BYTES = 16


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """What the guarded handler produced. ``storable=False``: release the key, store nothing."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    storable: bool = True


@dataclass(frozen=True, slots=True)
class IdempotentResponse:
    """The response to send: fresh from the handler, or ``replayed`` from the store."""

    status: int
    body: bytes
    headers: dict[str, str]
    replayed: bool


class IdempotencyClaim:
    """The handler's hold on a key: what an abandoned earlier run left, and a place to leave it.

    ``resource_id`` is None on a first run. After a takeover (the previous holder's process
    died) it is whatever that run passed to ``bind_resource``, and ``recovered`` is True.
    """

    def __init__(
        self,
        store: IdempotencyStore | None,
        merchant_id: str,
        key: str | None,
        token: str,
        *,
        resource_id: str | None = None,
        recovered: bool = False,
    ) -> None:
        self._store = store
        self.merchant_id = merchant_id
        self.key = key
        self.token = token
        self.resource_id = resource_id
        self.recovered = recovered

    async def bind_resource(self, resource_id: str, *, tx: Connection | None = None) -> None:
        """Remember the resource this request created (call it in the creating transaction)."""
        self.resource_id = resource_id
        if self._store is not None:
            await self._store._bind(self, resource_id, tx)


Handler = Callable[[IdempotencyClaim], Awaitable[HandlerResult]]


def validate_idempotency_key(key: str) -> str:
    """``key`` if it is 1-255 printable ASCII characters, else 400 ``invalid_idempotency_key``."""
    if _KEY_RE.fullmatch(key) is None or not key.strip():
        raise HttpProblem(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
        )
    return key


class IdempotencyStore:
    """Durable idempotency records on the gateway's database (SQLite or PostgreSQL)."""

    def __init__(
        self,
        db: SqliteDatabase | PostgresDatabase,
        *,
        fingerprint_key: bytes,
        retention_seconds: int = 86_400,
        claim_lease_seconds: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        if len(fingerprint_key) < _MIN_FINGERPRINT_KEY_BYTES:
            raise ValueError("fingerprint_key must be at least 16 random bytes.")
        if retention_seconds <= 0 or claim_lease_seconds <= 0:
            raise ValueError("retention_seconds and claim_lease_seconds must be positive.")
        self._db = db
        self._fingerprint_key = fingerprint_key
        self._retention = timedelta(seconds=retention_seconds)
        self._lease = timedelta(seconds=claim_lease_seconds)
        self._clock = clock or SystemClock()

    async def migrate(self) -> None:
        await migrate(self._db, _COMPONENT, _MIGRATIONS)

    def stored_key(self, key: str) -> str:
        """What the database holds for an Idempotency-Key: HMAC-SHA256 under the fingerprint key."""
        return "k_" + hmac.new(self._fingerprint_key, key.encode(), hashlib.sha256).hexdigest()

    def fingerprint(self, merchant_id: str, method: str, path: str, body: bytes) -> str:
        """HMAC-SHA256 of the request under the fingerprint key (never a bare hash)."""
        mac = hmac.new(self._fingerprint_key, digestmod=hashlib.sha256)
        for part in (merchant_id.encode(), method.upper().encode(), path.encode()):
            # Length-prefixed, so no two different requests encode to the same bytes.
            mac.update(len(part).to_bytes(4, "big") + part)
        mac.update(body)
        return mac.hexdigest()

    async def run(
        self,
        merchant_id: str,
        key: str | None,
        method: str,
        path: str,
        body: bytes,
        handler: Handler,
    ) -> IdempotentResponse:
        """Run ``handler`` at most once per (merchant, key); see the module docstring.

        ``key=None`` (no ``Idempotency-Key`` header) runs the handler unguarded.
        """
        if key is None:
            result = await handler(IdempotencyClaim(None, merchant_id, None, ""))
            return IdempotentResponse(result.status, result.body, dict(result.headers), False)
        validate_idempotency_key(key)
        fingerprint = self.fingerprint(merchant_id, method, path, body)
        # Only a keyed digest of the key is stored: it is client text, and could be anything.
        key = self.stored_key(key)
        claimed = await self._claim(merchant_id, key, fingerprint)
        if isinstance(claimed, IdempotentResponse):
            return claimed
        keep_alive = _LeaseRenewal(self, claimed)
        try:
            result = await handler(claimed)
        except BaseException:
            await keep_alive.stop()
            # Shielded: a cancelled request must still give its key back, or every retry
            # would get 409 until the lease ran out.
            await asyncio.shield(self._release(claimed))
            raise
        await keep_alive.stop()
        if result.storable:
            await self._complete(claimed, result)
        else:
            await self._release(claimed)
        return IdempotentResponse(result.status, result.body, dict(result.headers), False)

    async def purge_expired(self) -> int:
        """Delete records past their retention (except a claim still being worked on)."""
        now = self._now()
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "DELETE FROM idempotency_keys WHERE expires_at <= $1 "
                "AND NOT (state = $2 AND locked_until > $1) RETURNING key",
                now,
                _IN_PROGRESS,
            )
        return len(rows)

    # -- claim lifecycle ------------------------------------------------------------------------

    def _now(self) -> int:
        return to_micros(self._clock.now())

    async def _claim(
        self, merchant_id: str, key: str, fingerprint: str
    ) -> IdempotencyClaim | IdempotentResponse:
        lease_us = int(self._lease.total_seconds() * 1_000_000)
        retention_us = int(self._retention.total_seconds() * 1_000_000)
        for _ in range(_MAX_CLAIM_ROUNDS):
            now = self._now()
            token = secrets.token_hex(16)
            inserted = await self._db.fetchval(
                "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, claim_token, "
                "locked_until, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (merchant_id, key) DO NOTHING RETURNING key",
                merchant_id,
                key,
                fingerprint,
                _IN_PROGRESS,
                token,
                now + lease_us,
                now,
                now + retention_us,
            )
            if inserted is not None:
                return IdempotencyClaim(self, merchant_id, key, token)
            row = await self._db.fetchone(
                "SELECT fingerprint, state, claim_token, locked_until, resource_id, "
                "response_status, response_headers, response_body, expires_at "
                "FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
                merchant_id,
                key,
            )
            if row is None:
                continue  # released or purged in between: claim it afresh
            locked = row["state"] == _IN_PROGRESS and (row["locked_until"] or 0) > now
            if row["expires_at"] <= now and not locked:
                # Past retention: a new request that happens to reuse an old key.
                if await self._take_over(
                    merchant_id, key, row, token, fingerprint, now, reset=True
                ):
                    return IdempotencyClaim(self, merchant_id, key, token)
                continue
            if not hmac.compare_digest(row["fingerprint"], fingerprint):
                raise HttpProblem(
                    422,
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request; use a new key.",
                )
            if row["state"] == _DONE:
                return _replay(row)
            if locked:
                # The lease says nothing about when the request ends (it is renewed while it
                # runs, and most requests take well under a second): ask for a short wait.
                raise _in_use()
            # The holder's lease lapsed: its process died mid-request. Continue its work.
            if await self._take_over(merchant_id, key, row, token, fingerprint, now, reset=False):
                return IdempotencyClaim(
                    self,
                    merchant_id,
                    key,
                    token,
                    resource_id=row["resource_id"],
                    recovered=row["resource_id"] is not None,
                )
        raise _in_use()

    async def _take_over(
        self,
        merchant_id: str,
        key: str,
        row: Row,
        token: str,
        fingerprint: str,
        now: int,
        *,
        reset: bool,
    ) -> bool:
        """Compare-and-set on the previous claim token: of racing takers, one wins."""
        lease_us = int(self._lease.total_seconds() * 1_000_000)
        merchant_key = await self._db.fetchval(
            "UPDATE idempotency_keys SET claim_token = $1, state = $2, locked_until = $3, "
            "fingerprint = $4, "
            "resource_id = CASE WHEN $5 THEN NULL ELSE resource_id END, "
            "response_status = CASE WHEN $5 THEN NULL ELSE response_status END, "
            "response_headers = CASE WHEN $5 THEN NULL ELSE response_headers END, "
            "response_body = CASE WHEN $5 THEN NULL ELSE response_body END, "
            "created_at = CASE WHEN $5 THEN $6 ELSE created_at END, "
            "expires_at = CASE WHEN $5 THEN $7 ELSE expires_at END "
            "WHERE merchant_id = $8 AND key = $9 AND claim_token = $10 RETURNING key",
            token,
            _IN_PROGRESS,
            now + lease_us,
            fingerprint,
            reset,
            now,
            now + int(self._retention.total_seconds() * 1_000_000),
            merchant_id,
            key,
            row["claim_token"],
        )
        return merchant_key is not None

    async def _keep_alive(self, claim: IdempotencyClaim) -> None:
        """Renew the lease every ``lease / 3`` while the handler runs, so only a dead process
        loses its claim. Started by ``_LeaseRenewal`` one interval after the claim."""
        interval = self._lease.total_seconds() / 3
        lease_us = int(self._lease.total_seconds() * 1_000_000)
        while True:
            try:
                await self._db.execute(
                    "UPDATE idempotency_keys SET locked_until = $5 WHERE "
                    "merchant_id = $1 AND key = $2 AND claim_token = $3 AND state = $4",
                    *_owner(claim),
                    self._now() + lease_us,
                )
            except Exception:
                # A missed renewal only shortens the lease; the request itself goes on.
                log.warning("idempotency lease renewal failed", exc_info=True)
            await asyncio.sleep(interval)

    async def _bind(self, claim: IdempotencyClaim, resource_id: str, tx: Connection | None) -> None:
        await (tx or self._db).execute(
            "UPDATE idempotency_keys SET resource_id = $5 WHERE "
            "merchant_id = $1 AND key = $2 AND claim_token = $3 AND state = $4",
            *_owner(claim),
            resource_id,
        )

    async def _complete(self, claim: IdempotencyClaim, result: HandlerResult) -> None:
        stored = await self._db.fetchval(
            "UPDATE idempotency_keys SET state = $5, locked_until = NULL, response_status = $6, "
            "response_headers = $7, response_body = $8 WHERE "
            "merchant_id = $1 AND key = $2 AND claim_token = $3 AND state = $4 RETURNING key",
            *_owner(claim),
            _DONE,
            result.status,
            orjson.dumps(dict(result.headers)).decode(),
            result.body,
        )
        if stored is None:
            # Only after this process stalled past its lease and another took the key over.
            log.warning("idempotency claim lost before its response was stored")

    async def _release(self, claim: IdempotencyClaim) -> None:
        if claim.resource_id is None:
            # Nothing was created: forget the key entirely, a retry starts from scratch.
            await self._db.execute(
                "DELETE FROM idempotency_keys WHERE "
                "merchant_id = $1 AND key = $2 AND claim_token = $3 AND state = $4",
                *_owner(claim),
            )
        else:
            # Something was created: keep the binding, end the lease now, so a retry of the
            # same request resumes it at once.
            await self._db.execute(
                "UPDATE idempotency_keys SET locked_until = 0, resource_id = $5 WHERE "
                "merchant_id = $1 AND key = $2 AND claim_token = $3 AND state = $4",
                *_owner(claim),
                claim.resource_id,
            )


def _in_use() -> HttpProblem:
    return HttpProblem(
        409,
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is in progress; retry shortly.",
        retry_after=1.0,
    )


def _replay(row: Row) -> IdempotentResponse:
    headers: dict[str, str] = orjson.loads(row["response_headers"] or "{}")
    headers["Idempotent-Replayed"] = "true"
    return IdempotentResponse(
        status=int(row["response_status"]),
        body=bytes(row["response_body"] or b""),
        headers=headers,
        replayed=True,
    )


def _owner(claim: IdempotencyClaim) -> tuple[str, str | None, str, str]:
    """$1-$4 of every statement on a claim's own row: its row, only while this claim holds it."""
    return claim.merchant_id, claim.key, claim.token, _IN_PROGRESS


class _LeaseRenewal:
    """Keeps a claim's lease alive while its handler runs.

    Most handlers finish in milliseconds, long before the first renewal is due (``lease / 3``),
    so no task is made up front: a timer starts the renewal task when the first renewal is due,
    and ``stop`` cancels the timer (and the task, if it started).
    """

    __slots__ = ("_handle", "_task")

    def __init__(self, store: IdempotencyStore, claim: IdempotencyClaim) -> None:
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()

        def start() -> None:
            self._task = loop.create_task(store._keep_alive(claim))

        self._handle = loop.call_later(store._lease.total_seconds() / 3, start)

    async def stop(self) -> None:
        self._handle.cancel()
        task = self._task
        if task is not None:
            task.cancel()
            # wait() rather than awaiting the task: a cancellation of the caller itself must
            # propagate, not be swallowed along with the task's own CancelledError.
            await asyncio.wait({task})
