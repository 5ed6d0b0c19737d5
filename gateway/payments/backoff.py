"""Exponential backoff with jitter, for everything the gateway retries later rather than now.

Reconciliation (``ReconcilePolicy``) and merchant notifications (``NotificationDispatcher``)
both wait ``first_delay * 2**n``, capped at ``max_delay``, spread by ±``jitter`` so that a
provider or merchant outage does not end in a synchronized stampede.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["ExponentialBackoff", "ReconcilePolicy"]


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    first_delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(hours=1)
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1).")
        if self.first_delay <= timedelta(0) or self.max_delay < self.first_delay:
            raise ValueError("Need 0 < first_delay <= max_delay.")

    def delay(self, retry: int, rng: random.Random | None = None) -> timedelta:
        """The wait before retry number ``retry`` (0 for the first retry)."""
        backoff = min(self.first_delay * (1 << min(max(retry, 0), 32)), self.max_delay)
        if not self.jitter:
            return backoff
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return backoff * (1.0 + spread)


_RECONCILE_BACKOFF = ExponentialBackoff(
    first_delay=timedelta(seconds=5), max_delay=timedelta(hours=1), jitter=0.1
)


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """When open attempts are synced.

    ``backoff.delay(n)`` is the wait after the n-th sync that left the attempt open (and after
    the first answer, for n = 0). ``in_flight_grace`` is how long an attempt may stay unfinished
    before it is presumed abandoned (its process died) and reconciled: keep it above every
    connector deadline.
    """

    backoff: ExponentialBackoff = _RECONCILE_BACKOFF
    in_flight_grace: timedelta = timedelta(seconds=60)
