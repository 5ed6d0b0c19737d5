"""Log capture for the leak scan: every structlog event and stdlib log record of a run.

``LogCapture`` installs two taps while it is active and removes them after:

- a structlog processor put *first* in the configured chain, so it sees each event dict before
  any renderer or filter changes it (loggers cached with ``cache_logger_on_first_use`` before the
  capture started are not reached; the SDK does not cache);
- a handler on the stdlib root logger.

Each line is kept with the id of the scenario that was running (``current``), so a leak is
reported where it happened. The lines are only held in memory, for the scanner: they are never
written out, since they may contain exactly what the scanner is looking for.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import structlog

__all__ = ["CapturedLine", "LogCapture"]


@dataclass(frozen=True, slots=True)
class CapturedLine:
    scenario: str
    source: str  # "structlog" | "logging"
    text: str


class _Handler(logging.Handler):
    def __init__(self, capture: LogCapture) -> None:
        super().__init__(logging.DEBUG)
        self._capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name} {record.levelname} {record.getMessage()}"
        except Exception:  # noqa: BLE001 - a malformed record must not break the run
            text = f"{record.name} {record.levelname} {record.msg!r} {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        self._capture.lines.append(CapturedLine(self._capture.current, "logging", text))


@dataclass
class LogCapture:
    """Collects log lines while entered; see the module docstring."""

    current: str = "-"
    lines: list[CapturedLine] = field(default_factory=list)
    _handler: _Handler | None = None
    _previous_processors: list[Any] | None = None

    def _tap(self, logger: object, method: str, event: MutableMapping[str, Any]) -> Any:
        self.lines.append(CapturedLine(self.current, "structlog", f"{method} {dict(event)!r}"))
        return event

    def start(self) -> None:
        if self._handler is not None:
            return
        self._handler = _Handler(self)
        logging.getLogger().addHandler(self._handler)
        processors = list(structlog.get_config()["processors"])
        self._previous_processors = processors
        structlog.configure(processors=[self._tap, *processors])

    def stop(self) -> None:
        if self._handler is None:
            return
        logging.getLogger().removeHandler(self._handler)
        self._handler = None
        if self._previous_processors is not None:
            current = list(structlog.get_config()["processors"])
            # Only undo our own change: someone may have reconfigured structlog meanwhile.
            if current and current[0] == self._tap:
                structlog.configure(processors=self._previous_processors)
            self._previous_processors = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def items(self) -> list[tuple[str, str]]:
        """``(location, text)`` pairs for the scanner."""
        return [
            (f"{line.scenario} ({line.source} line {index + 1})", line.text)
            for index, line in enumerate(self.lines)
        ]
