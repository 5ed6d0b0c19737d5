"""Group commit for token inserts: concurrent tokenizations share one ``INSERT`` statement.

The transit batcher already coalesces concurrent tokenize requests into one Vault call; without
this, each of them would then still pay one database round trip (and, on SQLite, queue for the
single connection one by one). Here the same group-commit rule applies to the insert: a request
that finds nothing in flight is inserted at once (at the end of the current loop iteration, so
requests that became ready together leave together); while ``max_in_flight`` inserts are out,
new requests accumulate and go in the next statement as soon as one returns.

A request's rows are never split across statements (its batch goes whole, so a 1,000-card batch
is one insert), and a statement holds at most ``max_rows`` rows unless one request alone is
bigger. Requests whose token ids clash go in different statements, so ``RETURNING`` tells each
whether its rows went in. A failing statement fails every request in it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from vault.token_store import TokenRecord, TokenStore

__all__ = ["InsertBatcher"]

_Pending = tuple[Sequence[TokenRecord], "asyncio.Future[set[tuple[str, str]]]"]


class InsertBatcher:
    """Coalesces concurrent ``TokenStore.insert_many`` calls (see the module docstring)."""

    def __init__(
        self, store: TokenStore, *, max_rows: int = 1000, max_in_flight: int | None = None
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be positive.")
        self._store = store
        self._max_rows = max_rows
        # SQLite has one connection and one writer: a second statement in flight only queues.
        default = 1 if store.database.dialect == "sqlite" else 2
        self._max_in_flight = max_in_flight or default
        self._pending: deque[_Pending] = deque()
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def insert(self, records: Sequence[TokenRecord]) -> set[tuple[str, str]]:
        """Insert ``records`` with whatever else is waiting; return the ``(tenant, id)`` pairs
        of the statement that made it in (a superset of the caller's own)."""
        if not records:
            return set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[set[tuple[str, str]]] = loop.create_future()
        self._pending.append((records, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            group: list[_Pending] = []
            keys: set[tuple[str, str]] = set()
            rows = 0
            while self._pending:
                records, future = self._pending[0]
                if future.done():  # its caller was cancelled before the insert left
                    self._pending.popleft()
                    continue
                if group:
                    if rows + len(records) > self._max_rows:
                        break
                    if not keys:  # the first request's ids, needed only once a second joins
                        keys = {(record.tenant, record.id) for record in group[0][0]}
                    own = {(record.tenant, record.id) for record in records}
                    # Two requests holding one id (numeric tokens) could not tell whose row
                    # went in: the second waits for the next statement.
                    if own & keys:
                        break
                    keys |= own
                self._pending.popleft()
                group.append((records, future))
                rows += len(records)
            if not group:
                break
            self._in_flight += 1
            task = asyncio.create_task(self._insert(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _insert(self, group: list[_Pending]) -> None:
        try:
            inserted = await self._store.insert_many(
                [record for records, _ in group for record in records]
            )
        except asyncio.CancelledError:
            for _, future in group:
                if not future.done():
                    future.set_exception(RuntimeError("The token insert was cancelled."))
            raise
        except Exception as error:  # noqa: BLE001 - every waiter gets the failure
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
        else:
            for _, future in group:
                if not future.done():
                    future.set_result(inserted)
        finally:
            self._in_flight -= 1
            self._flush()

    async def close(self) -> None:
        """Wait for inserts in flight and queued to finish."""
        while self._tasks or self._pending:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            else:
                await asyncio.sleep(0)
