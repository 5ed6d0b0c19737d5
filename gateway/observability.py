"""Structured logs with a redaction layer, and the gateway's Prometheus metrics.

Logs are JSON lines (structlog). Before anything is rendered, ``redact_card_data`` masks every
run of 12-19 digits (plain, spaced or dashed, any script) that passes Luhn, hides a security code
written next to its name (``'cvc': '123'``, ``card[cvc]=123``, ``CVC 123 does not match``) and
the input a pydantic error quotes (``input_value=...``), and blanks values whose key names a
secret (``cvc``, ``card_cvv``, ``number``, ``authorization``, ``api_key``, ...). Values of every
type go through it: bytes, floats, sets, dict keys and arbitrary objects (rendered as their
``repr``, as the JSON renderer would) included.

Records of the standard library's loggers (aiohttp, asyncio, this project's stdlib loggers) go
through the same chain, their ``extra=`` fields and exception tracebacks (``exc_info``, chained
causes included) added first and then redacted; ``warnings`` are routed to logging, so a warning
quoting a value is redacted too instead of being printed to stderr. Code should never log card
data in the first place; this layer is the safety net, and it is tested
(``tests/test_leaks_logging.py``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from structlog.typing import EventDict

from normalization.redaction import redact_card_text

__all__ = [
    "GatewayMetrics",
    "RedactingAccessLogger",
    "configure_logging",
    "method_label",
    "multiprocess_metrics",
    "redact_card_data",
    "redact_text",
    "render_metrics",
]

#: Keys naming a secret, once lower-cased and their separators dropped (``X-Vault-Token``,
#: ``api_key``, ``apiKey``) ...
_SECRET_KEYS = frozenset(
    {
        "number",
        "pan",
        "authorization",
        "apikey",
        "secret",
        "secretid",
        "tokenvalue",
        "xvaulttoken",
    }
)
#: ... and keys holding one of these anywhere (``cvc2``, ``card_cvv``, ``security_code``).
_SECRET_KEY_PARTS = ("cvc", "cvv", "securitycode", "cardnumber", "password")
_KEY_SEPARATORS_RE = re.compile(r"[^a-z0-9]")
#: pydantic's error text quotes the rejected input: ``[type=..., input_value='...', ...]``.
_PYDANTIC_INPUT_RE = re.compile(r"input_value=.*?(?=, input_type=)")
#: Keys ``structlog.stdlib.ProcessorFormatter`` adds for itself (and removes before rendering).
_FORMATTER_KEYS = frozenset({"_record", "_from_structlog"})
#: Containers nested deeper than this are rendered as text (and redacted as such).
_MAX_DEPTH = 16
_BIG_NUMBER = 10**11


def redact_text(text: str) -> str:
    """Mask every Luhn-valid 12-19 digit run in ``text`` (separators allowed, any script), hide
    security codes written next to their name and the inputs pydantic errors quote."""
    if "input_value=" in text:
        text = _PYDANTIC_INPUT_RE.sub("input_value=[hidden]", text)
    return redact_card_text(text)


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    name = _KEY_SEPARATORS_RE.sub("", key.lower())
    return name in _SECRET_KEYS or any(part in name for part in _SECRET_KEY_PARTS)


def _redact(value: Any, depth: int = 0) -> Any:
    """``value`` with card data redacted, in a shape the JSON renderer takes as it is."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, int | float):
        return value if -_BIG_NUMBER < value < _BIG_NUMBER else redact_text(str(value))
    if depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return {
                redact_text(str(k)): _redact_value(str(k), v, depth + 1) for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [_redact(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return redact_text(repr(bytes(value)))
    structlog_repr = getattr(value, "__structlog__", None)
    return redact_text(structlog_repr() if callable(structlog_repr) else repr(value))


def _redact_value(key: str, value: Any, depth: int = 0) -> Any:
    if _is_secret_key(key):
        return "[redacted]"
    return _redact(value, depth)


def redact_card_data(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the redaction layer."""
    for key in list(event_dict):
        if key not in _FORMATTER_KEYS:
            event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", *, stream: Any = None) -> None:
    """JSON logs to ``stream`` (stderr), stdlib logging routed through the same redaction. Each
    line carries the process id (``pid``): with several workers, which one wrote it."""
    pid = os.getpid()  # workers are spawned, each configures its own logging

    def add_pid(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("pid", pid)
        return event_dict

    unredacted: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_pid,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    shared = [*unredacted, redact_card_data]
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            # The whole chain, ``format_exc_info`` included: a record's ``exc_info`` is rendered
            # as a traceback and then redacted (left to the renderer, it came out as the raw
            # ``repr`` of the exception, whatever its message held). ``ExtraAdder`` copies a
            # record's ``extra=`` fields into the line (they were dropped: a failed delivery
            # logged no event id); it runs before the redaction, which covers them too.
            foreign_pre_chain=[*unredacted, structlog.stdlib.ExtraAdder(), redact_card_data],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # ``warnings.warn`` text (pydantic's serializer quotes the value it did not expect) goes to
    # the ``py.warnings`` logger, through the redaction, instead of straight to stderr.
    logging.captureWarnings(True)
    # One line per provider request is the SDK's job (connector_call); httpx's own is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp access log without query strings (they can carry anything a client typed, a CVV
    included) and with the path through the redaction layer: one JSON line per request."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        structlog.get_logger("tessera.access").info(
            "http_access",
            method=request.method,
            path=redact_text(request.path),
            status=response.status,
            duration_ms=round(time * 1000, 3),
            remote=request.remote,
            # The id the gateway answered with (its middleware sets the header), so an access
            # line joins the request's other lines; absent when aiohttp refused the request.
            request_id=response.headers.get("X-Request-Id"),
        )


#: Label combinations kept at hand per metric; past that (odd methods, say) ``labels()`` is
#: asked each time, as before.
_MAX_CACHED_CHILDREN = 512
#: HTTP methods that get a label (and a span name) of their own.
_LABELLED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """``method`` if it is a standard one, else ``other``: a method is any token the client
    chose (with aiohttp's pure-Python parser, even a card number), so only the standard ones
    may name a metric series or a span."""
    return method if method in _LABELLED_METHODS else "other"


class GatewayMetrics:
    """The gateway's own metrics, on a registry of its own (tests get a fresh one each)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "tessera_http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tessera_http_request_seconds",
            "HTTP request latency by route.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.tokens_created = Counter(
            "tessera_tokens_created", "Tokens created.", ["format"], registry=self.registry
        )
        self.vault_errors = Counter(
            "tessera_vault_errors",
            "Vault failures seen by the gateway.",
            ["code"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "tessera_auth_failures", "Failed API-key authentications.", registry=self.registry
        )
        # Label children by (route, method[, status]): ``labels()`` validates and looks its
        # arguments up under a lock on every call, which the request path should not pay.
        # One look-up per request: (latency child, request counter child) by route and status.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._token_children: dict[str, Any] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and record its latency (``tessera_http_*``).

        ``method`` is labelled as it is only when it is a standard one: a method is any token
        the client likes (``4000056655665556 /v1/tokens HTTP/1.1`` parses), and a label is
        served to whoever scrapes ``/metrics``; the rest share ``other``.
        """
        method = method_label(method)
        children = self._request_children.get((route, method, status))
        if children is None:
            children = (
                self.latency.labels(route, method),
                self.requests.labels(route, method, str(status)),
            )
            if len(self._request_children) < _MAX_CACHED_CHILDREN:
                self._request_children[(route, method, status)] = children
        children[0].observe(seconds)
        children[1].inc()

    def count_tokens(self, token_format: str, created: int = 1) -> None:
        """Add ``created`` to ``tessera_tokens_created{format=...}``."""
        counter = self._token_children.get(token_format)
        if counter is None:
            counter = self.tokens_created.labels(token_format)
            if len(self._token_children) < _MAX_CACHED_CHILDREN:
                self._token_children[token_format] = counter
        counter.inc(created)


def multiprocess_metrics() -> bool:
    """True when prometheus-client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` was
    set when it was imported: ``tessera serve`` with ``workers > 1``): metric values live in
    files every worker writes, and a scrape merges them."""
    return values.ValueClass is not values.MutexValue


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus exposition for ``/metrics``: ``registry`` (this process), or in
    multiprocess mode every worker's values merged (counters and histograms summed)."""
    if not multiprocess_metrics():
        return bytes(generate_latest(registry))
    merged = CollectorRegistry()
    MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(merged))
