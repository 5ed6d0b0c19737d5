"""Polling with a deadline: how the kit waits for asynchronous outcomes, never by sleeping.

Adyen captures, ACH settlement and open-banking consents finish later. A scenario states what it
waits for and for how long, declaratively::

    settled = await poll(lambda: sync_once(), until=lambda r: r.status != "pending",
                         policy=PollPolicy(within=30.0))

``poll`` calls ``fetch`` at once, then again with exponential backoff (``initial`` doubling up to
``maximum``) until ``until`` holds or ``within`` seconds have passed, when it raises
``PollTimeoutError`` carrying the last value seen. The wait between calls is the only sleep, and it
is never longer than what is left of the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["PollPolicy", "PollTimeoutError", "poll"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PollPolicy:
    within: float = 10.0
    initial: float = 0.02
    maximum: float = 1.0


class PollTimeoutError(Exception, Generic[T]):
    """The condition did not hold before the deadline; ``last`` is the final value fetched."""

    def __init__(self, message: str, last: T | None, attempts: int) -> None:
        super().__init__(message)
        self.last = last
        self.attempts = attempts


async def poll(
    fetch: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool],
    policy: PollPolicy | None = None,
    what: str = "the condition",
) -> T:
    """Fetch until ``until(value)`` or the deadline; see the module docstring."""
    policy = policy or PollPolicy()
    deadline = time.monotonic() + policy.within
    interval = policy.initial
    attempts = 0
    last: T | None = None
    while True:
        attempts += 1
        last = await fetch()
        if until(last):
            return last
        left = deadline - time.monotonic()
        if left <= 0:
            raise PollTimeoutError(
                f"{what} did not hold within {policy.within:g}s ({attempts} polls)",
                last,
                attempts,
            )
        await asyncio.sleep(min(interval, left))
        interval = min(interval * 2, policy.maximum)
