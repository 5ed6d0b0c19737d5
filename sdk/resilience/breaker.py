"""A circuit breaker for coroutines, built on pybreaker's state machine.

pybreaker has no asyncio support: decorating an ``async def`` only times the creation of the
coroutine (it never fails, so the breaker never opens), and its half-open state lets every
concurrent caller through. ``AsyncCircuitBreaker`` keeps pybreaker for what it does well (states,
failure counting, listeners, configuration) and drives it around the awaited call:

- ``admit()`` runs before the call, synchronously (so atomically on the event loop): closed
  admits; open fails fast with ``ConnectorUnavailableError`` (no await, no network) until the
  reset timeout has passed, then moves to half-open; half-open admits exactly **one** trial and
  fails everyone else fast until the trial's verdict.
- After the await, the caller reports ``record_success`` or ``record_failure`` with the ticket
  ``admit`` returned, and the verdict is fed through ``pybreaker.CircuitBreaker.call`` so
  pybreaker counts, trips and notifies listeners as it normally would. A ticket issued before a
  state change is stale and ignored: a slow call that started while closed cannot close a breaker
  that has opened since.
- ``release`` gives a ticket back without a verdict: for cancellations (``CancelledError`` is
  never counted and always re-raised by the caller) and for calls that never reached the network.

Which failures count is the caller's decision (the runtime counts transport faults, 5xx and
deadline expiry; never declines or 4xx).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pybreaker

from normalization import ConnectorUnavailableError

__all__ = ["AsyncCircuitBreaker", "BreakerSettings", "BreakerTicket"]

STATE_CLOSED: str = pybreaker.STATE_CLOSED
STATE_OPEN: str = pybreaker.STATE_OPEN
STATE_HALF_OPEN: str = pybreaker.STATE_HALF_OPEN


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    fail_max: int = 5
    reset_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class BreakerTicket:
    """Proof of admission: the state generation it was issued in, and whether it is the trial."""

    generation: int
    trial: bool


class _CountedFailure(Exception):
    """Stands in for the real failure inside pybreaker (the real exception is not re-raised
    through pybreaker, so its traceback is left alone)."""


def _fail() -> None:
    raise _CountedFailure


def _succeed() -> None:
    return None


class _StateTracker(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: AsyncCircuitBreaker) -> None:
        self._owner = owner

    def state_change(self, cb: object, old_state: object, new_state: object) -> None:
        self._owner._on_state_change(getattr(new_state, "name", ""))


class AsyncCircuitBreaker:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        listeners: tuple[pybreaker.CircuitBreakerListener, ...] = (),
    ) -> None:
        settings = settings or BreakerSettings()
        self._generation = 0
        self._trial_in_flight = False
        self._opened_at: float | None = None
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout,
            name=name,
            listeners=[_StateTracker(self), *listeners],
            throw_new_error_on_trip=True,
        )

    @property
    def name(self) -> str:
        return str(self._breaker.name)

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (pybreaker's names)."""
        return str(self._breaker.current_state)

    @property
    def fail_counter(self) -> int:
        return int(self._breaker.fail_counter)

    @property
    def pybreaker(self) -> pybreaker.CircuitBreaker:
        """The underlying pybreaker breaker (listeners, manual ``open()``/``close()``)."""
        return self._breaker

    def _on_state_change(self, new_state: str) -> None:
        self._generation += 1
        self._trial_in_flight = False
        self._opened_at = time.monotonic() if new_state == STATE_OPEN else None

    def retry_after(self) -> float:
        """Seconds until an open breaker admits a trial (0 when it would now)."""
        if self.state != STATE_OPEN or self._opened_at is None:
            return 0.0
        return max(self._opened_at + self._breaker.reset_timeout - time.monotonic(), 0.0)

    def admit(self) -> BreakerTicket:
        """Admit one call or raise ``ConnectorUnavailableError``; never awaits."""
        state = self.state
        if state == STATE_OPEN:
            if self._opened_at is None:  # opened elsewhere (shared storage): start the clock
                self._opened_at = time.monotonic()
            wait = self.retry_after()
            if wait > 0:
                raise ConnectorUnavailableError(
                    f"Connector {self.name!r} is unavailable (circuit open).", retry_after=wait
                )
            self._breaker.half_open()
            state = self.state
        if state == STATE_HALF_OPEN:
            if self._trial_in_flight:
                raise ConnectorUnavailableError(
                    f"Connector {self.name!r} is being probed (circuit half-open).",
                    retry_after=1.0,
                )
            self._trial_in_flight = True
            return BreakerTicket(self._generation, trial=True)
        return BreakerTicket(self._generation, trial=False)

    def record_success(self, ticket: BreakerTicket) -> None:
        if ticket.generation != self._generation:
            return
        self._breaker.call(_succeed)
        if ticket.trial and ticket.generation == self._generation:
            self._trial_in_flight = False

    def record_failure(self, ticket: BreakerTicket) -> None:
        if ticket.generation != self._generation:
            return
        with contextlib.suppress(_CountedFailure, pybreaker.CircuitBreakerError):
            self._breaker.call(_fail)
        if ticket.trial and ticket.generation == self._generation:
            self._trial_in_flight = False

    def release(self, ticket: BreakerTicket) -> None:
        """Return a ticket without a verdict (cancelled, or nothing reached the network)."""
        if ticket.trial and ticket.generation == self._generation:
            self._trial_in_flight = False
