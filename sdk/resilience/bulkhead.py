"""A bulkhead: a bound on one connector's concurrent calls, and on the queue in front of it.

``max_concurrent`` calls run; up to ``max_queued`` more wait (bounded by the caller's deadline,
which the runtime enforces around the wait); anyone beyond that is refused at once with
``ConnectorBusyError``. One connector that hangs therefore holds at most its own slots and
queue, and the memory they need, and never the event loop or another connector's capacity.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from normalization import ConnectorBusyError

__all__ = ["Bulkhead", "BulkheadSettings"]


@dataclass(frozen=True, slots=True)
class BulkheadSettings:
    max_concurrent: int = 64
    max_queued: int = 128


class Bulkhead:
    """See the module docstring."""

    def __init__(self, name: str, settings: BulkheadSettings | None = None) -> None:
        self.name = name
        self.settings = settings or BulkheadSettings()
        self._semaphore = asyncio.Semaphore(self.settings.max_concurrent)
        self._in_flight = 0
        self._queued = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return self._queued

    def _track(self, in_flight: int = 0, queued: int = 0) -> None:
        self._in_flight += in_flight
        self._queued += queued
        if self._in_flight or self._queued:
            self._idle.clear()
        else:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call holds or waits for a slot (for draining at shutdown)."""
        while self._in_flight or self._queued:
            await self._idle.wait()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block; raises ``ConnectorBusyError`` when the queue is full."""
        if self._semaphore.locked():
            if self._queued >= self.settings.max_queued:
                raise ConnectorBusyError(
                    f"Connector {self.name!r} has too many calls in flight.", retry_after=1.0
                )
            self._track(queued=1)
            try:
                await self._semaphore.acquire()
            except BaseException:
                self._track(queued=-1)
                raise
            self._track(in_flight=1, queued=-1)
        else:
            await self._semaphore.acquire()
            self._track(in_flight=1)
        try:
            yield
        finally:
            self._semaphore.release()
            self._track(in_flight=-1)
