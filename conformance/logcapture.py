"""Log capture for the leak scan: every structlog event and stdlib log record of a run.

``LogCapture`` installs three taps while it is active and removes them after:

- a structlog processor put *first* in the configured chain, so it sees each event dict before
  any renderer or filter changes it (loggers cached with ``cache_logger_on_first_use`` before the
  capture started are not reached; the SDK does not cache);
- a handler on the stdlib root logger, with the root's level lowered to ``DEBUG`` so that a
  connector's ``logger.info(...)``/``debug(...)`` reaches it (the root's default, ``WARNING``,
  dropped them before any handler saw them). The handlers already on the root get a filter at
  their old level, so what they print does not change;
- ``sys.stdout`` and ``sys.stderr`` wrapped so that what goes through them (a ``print()`` in a
  connector) is kept too, line by line, and still written.

Each line is kept with the id of the scenario that was running (``current``), so a leak is
reported where it happened. The lines are only held in memory, for the scanner: they are never
written out, since they may contain exactly what the scanner is looking for.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import structlog

__all__ = ["CapturedLine", "LogCapture"]


@dataclass(frozen=True, slots=True)
class CapturedLine:
    scenario: str
    source: str  # "structlog" | "logging" | "stdout" | "stderr"
    text: str
    #: Where it came from, safe to show: the logger's name and level (never the message).
    origin: str = ""


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
        origin = f"logger {record.name!r} at {record.levelname}"
        self._capture.lines.append(CapturedLine(self._capture.current, "logging", text, origin))


class _AtLeast(logging.Filter):
    """Keeps a handler that was on the root at what it printed before the root was lowered."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _Tee:
    """A text stream that writes through to ``stream`` and keeps each line for the scan."""

    def __init__(self, stream: Any, capture: LogCapture, source: str) -> None:
        self._stream = stream
        self._capture = capture
        self._source = source
        self._partial = ""

    def write(self, text: str) -> int:
        written: int = self._stream.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self._keep(line)
        return written

    def flush_partial(self) -> None:
        if self._partial:
            self._keep(self._partial)
            self._partial = ""

    def _keep(self, line: str) -> None:
        if line:
            self._capture.lines.append(
                CapturedLine(self._capture.current, self._source, line, f"sys.{self._source}")
            )

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self._stream, name)


@dataclass
class LogCapture:
    """Collects log lines while entered; see the module docstring."""

    current: str = "-"
    lines: list[CapturedLine] = field(default_factory=list)
    _handler: _Handler | None = None
    _previous_processors: list[Any] | None = None
    _root_level: int | None = None
    _filters: list[tuple[logging.Handler, _AtLeast]] = field(default_factory=list)
    _tees: list[_Tee] = field(default_factory=list)

    def _tap(self, logger: object, method: str, event: MutableMapping[str, Any]) -> Any:
        origin = f"structlog {method}"
        name = event.get("logger") or getattr(logger, "name", None)
        if isinstance(name, str):
            origin += f" on logger {name!r}"
        self.lines.append(
            CapturedLine(self.current, "structlog", f"{method} {dict(event)!r}", origin)
        )
        return event

    def start(self) -> None:
        if self._handler is not None:
            return
        root = logging.getLogger()
        self._root_level = root.level
        previous = root.getEffectiveLevel()
        for handler in root.handlers:
            at_least = _AtLeast(previous)
            handler.addFilter(at_least)
            self._filters.append((handler, at_least))
        self._handler = _Handler(self)
        root.addHandler(self._handler)
        root.setLevel(logging.DEBUG)
        processors = list(structlog.get_config()["processors"])
        self._previous_processors = processors
        structlog.configure(processors=[self._tap, *processors])
        self._tees = [_Tee(sys.stdout, self, "stdout"), _Tee(sys.stderr, self, "stderr")]
        sys.stdout, sys.stderr = self._tees

    def stop(self) -> None:
        if self._handler is None:
            return
        for tee, name in zip(self._tees, ("stdout", "stderr"), strict=True):
            tee.flush_partial()
            if getattr(sys, name) is tee:  # someone may have replaced it meanwhile
                setattr(sys, name, tee._stream)
        self._tees = []
        root = logging.getLogger()
        root.removeHandler(self._handler)
        self._handler = None
        if self._root_level is not None:
            root.setLevel(self._root_level)
            self._root_level = None
        for handler, at_least in self._filters:
            handler.removeFilter(at_least)
        self._filters = []
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
            (
                f"{line.scenario} ({line.origin or line.source}, captured line {index + 1})",
                line.text,
            )
            for index, line in enumerate(self.lines)
        ]
