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

What goes *on* to the console is redacted with each capture's ``redact`` (the run's
``LeakScanner.redact``): the text a tee writes through, the event structlog's next processors
render, and a log record's message as the root's handlers (pytest's report among them) format
it. A connector that prints or logs the canary card fails the leak scan, and its output shows
``[CANARY]`` where the number was, as the reports do.

``ConsoleHandler`` prints standard-library records on a console (the CLI's ``--verbose``, next to
structlog's lines), redacted the same way. It is meant to see every record the lowered root lets
through, so it is not given the filter that keeps the other handlers at their old level.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TextIO

import structlog

from conformance.leaks import safe_name

__all__ = ["CapturedLine", "ConsoleHandler", "LogCapture"]


@dataclass(frozen=True, slots=True)
class CapturedLine:
    scenario: str
    source: str  # "structlog" | "logging" | "stdout" | "stderr"
    text: str
    #: Where it came from, safe to show: the logger's name and level (never the message).
    origin: str = ""
    #: A structlog event's fields: ``(key, "'key': <repr of value>")``, in order; the text is
    #: these joined as the event dict's ``repr``. The leak scan names the field a leak is in.
    fields: tuple[tuple[str, str], ...] = ()
    #: The structlog event when it is a name (``connector_call``), not a message; else "".
    event: str = ""


#: An event that is a name, not a message: letters, ``_`` and ``.``, no digits.
_EVENT_NAME = re.compile(r"[a-z][a-z_.]{0,60}")


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
        # Handlers that format the record later (pytest's report) see the redacted message.
        _redact_record(record)


def _redact(text: str) -> str:
    """``text`` through every active capture's ``redact``."""
    for capture in _ACTIVE:
        if capture.redact is not None:
            text = capture.redact(text)
    return text


def _redact_record(record: logging.LogRecord) -> None:
    if not any(capture.redact is not None for capture in _ACTIVE):
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record: leave it as it is
        return
    redacted = _redact(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[1] is not None:
        exception = repr(record.exc_info[1])
        if _redact(exception) != exception:  # the traceback's text would quote it
            record.exc_info, record.exc_text = None, _redact(exception)


class ConsoleHandler(logging.Handler):
    """Writes each standard-library log record to ``stream`` as one line (a traceback after
    it), through ``redact``, in the layout of structlog's console lines::

        2026-01-31 12:00:00 [info     ] tessera_acme: authorizing 1050 EUR

    ``stream`` should be the console itself, not a capture's tee: the capture keeps the record
    already (a tee would keep it twice, as printed output)."""

    def __init__(self, stream: TextIO, redact: Callable[[str], str]) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self.redact = redact
        self.setFormatter(_ConsoleFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self.stream.write(self.redact(text) + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a handler never raises
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record, self.datefmt)} [{record.levelname.lower():<9}] "
            f"{record.name}: {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:  # a record redacted by ``_redact_record``: the exception's repr
            line += "\n" + record.exc_text
        return line


class _AtLeast(logging.Filter):
    """Keeps a handler that was on the root printing what it printed before the root was
    lowered: a record passes if its logger's effective level *then* let it through (a logger
    with a level of its own, ``acme`` at DEBUG, still does; one that inherited the root's old
    WARNING does not)."""

    def __init__(self, root_level: int) -> None:
        super().__init__()
        self.root_level = root_level

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger.level == logging.NOTSET and logger.parent:
            logger = logger.parent
        own = logger.level if logger is not None and logger.parent is not None else 0
        passes = record.levelno >= (own or self.root_level)
        if passes:
            _redact_record(record)  # this handler may print it before the capture's sees it
        return passes


class _Tee:
    """A text stream that writes through to ``stream`` and keeps each line for every active
    capture's scan."""

    def __init__(self, stream: Any, source: str) -> None:
        self._stream = stream
        self._source = source
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        self._stream.write(_redact(text))
        with self._lock:
            *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self._keep(line)
        return len(text)

    def flush_partial(self) -> None:
        with self._lock:
            partial, self._partial = self._partial, ""
        self._keep(partial)

    def _keep(self, line: str) -> None:
        if not line:
            return
        for capture in list(_ACTIVE):
            capture.lines.append(
                CapturedLine(capture.current, self._source, line, f"sys.{self._source}")
            )

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, buffer, ...
        return getattr(self._stream, name)


#: Captures started and not stopped, in start order. The taps every capture shares (the root
#: logger's level and the filters on its handlers, the stream tees) are installed when the
#: first starts and removed when the last stops, whatever the order they stop in.
_ACTIVE: list[LogCapture] = []
_SHARED: dict[str, Any] = {}


def _install_shared() -> None:
    root = logging.getLogger()
    _SHARED["root_level"] = root.level
    previous = root.getEffectiveLevel()
    filters = []
    for handler in root.handlers:
        if isinstance(handler, ConsoleHandler):
            continue  # it asks for every record (see ConsoleHandler)
        at_least = _AtLeast(previous)
        handler.addFilter(at_least)
        filters.append((handler, at_least))
    _SHARED["filters"] = filters
    root.setLevel(logging.DEBUG)
    _SHARED["tees"] = []
    _wrap_streams()


def _wrap_streams() -> None:
    """Tee ``sys.stdout``/``sys.stderr`` unless they are tees already (pytest's capture puts
    its own streams back at each test item: the next scenario wraps them again)."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, _Tee):
            tee = _Tee(current, name)
            _SHARED["tees"].append((name, tee))
            setattr(sys, name, tee)


def _remove_shared() -> None:
    for name, tee in reversed(_SHARED.pop("tees", [])):
        tee.flush_partial()
        if getattr(sys, name) is tee:  # else replaced meanwhile (pytest's capture): leave it
            setattr(sys, name, tee._stream)
    root = logging.getLogger()
    root.setLevel(_SHARED.pop("root_level", logging.WARNING))
    for handler, at_least in _SHARED.pop("filters", []):
        handler.removeFilter(at_least)


@dataclass
class LogCapture:
    """Collects log lines while entered; see the module docstring."""

    lines: list[CapturedLine] = field(default_factory=list)
    #: What the console gets instead of what was written or logged (see the module docstring).
    redact: Callable[[str], str] | None = None
    _current: str = "-"
    _handler: _Handler | None = None
    _previous_processors: list[Any] | None = None

    @property
    def current(self) -> str:
        """The scenario running now: its lines are kept under its id."""
        return self._current

    @current.setter
    def current(self, scenario: str) -> None:
        self._current = scenario
        if self in _ACTIVE:
            _wrap_streams()

    def _tap(self, logger: object, method: str, event: MutableMapping[str, Any]) -> Any:
        origin = f"structlog {method}"
        name = event.get("logger") or getattr(logger, "name", None)
        if isinstance(name, str):
            origin += f" on logger {name!r}"
        fields = tuple((str(key), f"{key!r}: {value!r}") for key, value in event.items())
        text = f"{method} {{{', '.join(part for _, part in fields)}}}"
        named = event.get("event")
        named = named if isinstance(named, str) and _EVENT_NAME.fullmatch(named) else ""
        self.lines.append(CapturedLine(self.current, "structlog", text, origin, fields, named))
        if self.redact is None or self.redact(text) == text:
            return event
        # The renderer prints what the next processors get: the values, redacted.
        return {
            key: self.redact(value) if isinstance(value, str) else self.redact(repr(value))
            for key, value in event.items()
        }

    def start(self) -> None:
        if self._handler is not None:
            return
        if not _ACTIVE:
            _install_shared()
        _ACTIVE.append(self)
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
        _ACTIVE.remove(self)
        if not _ACTIVE:
            _remove_shared()
        if self._previous_processors is not None:
            current = list(structlog.get_config()["processors"])
            # Only undo our own change: someone may have reconfigured structlog meanwhile.
            if current and current[0] == self._tap:
                structlog.configure(processors=self._previous_processors)
            else:  # stopped out of order: take our tap out wherever it is
                structlog.configure(processors=[p for p in current if p != self._tap])
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
        """``(location, text)`` pairs for the scanner: a structlog event's field by field, so a
        finding names its event (when the event is a name, not a message) and field."""
        found: list[tuple[str, str]] = []
        for index, line in enumerate(self.lines):
            where = f"{line.scenario} ({line.origin or line.source}, captured line {index + 1}"
            if not line.fields:
                found.append((where + ")", line.text))
                continue
            if line.event:
                where += f", event {line.event!r}"
            found.extend((f"{where}, field {safe_name(key)})", text) for key, text in line.fields)
        return found
