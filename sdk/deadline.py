"""Deadlines: a point in monotonic time by which a call must be over, passed down, never reset.

The gateway creates one per incoming request (``Deadline.after(seconds)``); the resilience
runtime stops retrying, waiting in the bulkhead queue and the call itself at it; ``CallContext``
derives each request's httpx timeouts from what is left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Deadline"]


@dataclass(frozen=True, slots=True)
class Deadline:
    """``expires_at`` is a ``time.monotonic()`` value (the clock asyncio's loop uses)."""

    expires_at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self.expires_at - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def capped(self, seconds: float) -> Deadline:
        """This deadline or one ``seconds`` from now, whichever comes first."""
        return Deadline(min(self.expires_at, time.monotonic() + seconds))
