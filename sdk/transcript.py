"""The transcript recorder: every provider exchange, as it went over the wire, scrubbed.

The egress transport records one ``Exchange`` per request when a recorder is configured (tests,
conformance runs, debugging). Card placeholders appear as masks, credentials and sensitive headers
as ``[REDACTED]``, and every body passes through the ``Scrubber``: a transcript can be written to
a file, attached to a report or committed as a fixture without leaking card data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["Exchange", "TranscriptRecorder"]

_MAX_BODY_CHARS = 64 * 1024


def clip_body(text: str) -> str:
    if len(text) <= _MAX_BODY_CHARS:
        return text
    return text[:_MAX_BODY_CHARS] + f"...[{len(text) - _MAX_BODY_CHARS} more characters]"


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its response (or the error that ended it), already scrubbed."""

    connector: str
    operation: str
    method: str
    url: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: str
    status_code: int | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    response_body: str = ""
    error: str | None = None
    elapsed_ms: float = 0.0


@dataclass
class TranscriptRecorder:
    """Collects exchanges in memory, in order."""

    exchanges: list[Exchange] = field(default_factory=list)

    def record(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)

    def clear(self) -> None:
        self.exchanges.clear()

    def to_json(self) -> str:
        return json.dumps([asdict(e) for e in self.exchanges], indent=2)

    def text(self) -> str:
        """Everything recorded as one string, for leak scans and assertions."""
        return self.to_json()
