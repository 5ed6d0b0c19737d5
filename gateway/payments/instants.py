"""Instants as the payment tables store them: integer microseconds since the epoch, UTC.

Both backends compare and sort integers the same way (text timestamps would not), and a test
injects a ``Clock`` (``vault.clock``) to move time instead of sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime

from vault.clock import Clock, SystemClock

__all__ = ["Clock", "SystemClock", "from_micros", "to_micros"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("Instants must be timezone-aware.")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    seconds, rest = divmod(int(micros), 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)
