"""Retry policy for connector attempts, on tenacity, with every knob set explicitly.

tenacity retries forever by default and, under broad predicates, retries ``CancelledError``.
Here the predicate matches one exception type only (``RetrySignal``, raised by the runtime when
an attempt's outcome is worth retrying), the stop condition combines an attempt limit with the
caller's deadline (no attempt starts if the wait plus a minimal attempt would pass it), and the
wait is exponential with full jitter, never shorter than the provider's ``Retry-After``.

*Whether* an outcome is worth retrying is decided by the runtime: ``not_sent`` always; ``unknown``,
5xx, 429 and retryable provider codes only for operations the manifest declares safe to retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from normalization import PaymentResult
from sdk.deadline import Deadline

__all__ = ["RetrySettings", "RetrySignal", "StopBeforeDeadline", "build_retrying"]


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    #: An attempt is not started with less time than this left before the deadline.
    min_attempt_seconds: float = 0.05


class RetrySignal(Exception):
    """An attempt ended in an outcome the runtime wants retried. Carries that outcome, which the
    call returns if no retry follows."""

    def __init__(self, result: PaymentResult, reason: str, retry_after: float | None) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason
        self.retry_after = retry_after


class StopBeforeDeadline(stop_base):
    """Stop when the next wait plus a minimal attempt would not fit before the deadline."""

    def __init__(self, deadline: Deadline, min_attempt_seconds: float) -> None:
        self.deadline = deadline
        self.min_attempt_seconds = min_attempt_seconds

    def __call__(self, retry_state: RetryCallState) -> bool:
        needed = retry_state.upcoming_sleep + self.min_attempt_seconds
        return needed >= self.deadline.remaining()


def build_retrying(
    settings: RetrySettings,
    deadline: Deadline,
    *,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
) -> AsyncRetrying:
    """A tenacity ``AsyncRetrying`` for one call (the deadline is the call's)."""
    jitter = wait_random_exponential(multiplier=settings.initial_backoff, max=settings.max_backoff)

    def wait(state: RetryCallState) -> float:
        delay = float(jitter(state))
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetrySignal) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    return AsyncRetrying(
        stop=stop_after_attempt(settings.max_attempts)
        | StopBeforeDeadline(deadline, settings.min_attempt_seconds),
        wait=wait,
        retry=retry_if_exception_type(RetrySignal),
        reraise=True,
        before_sleep=before_sleep,
    )
