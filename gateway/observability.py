"""Structured logs with a redaction layer, and the gateway's Prometheus metrics.

Logs are JSON lines (structlog). Before anything is rendered, ``redact_card_data`` masks every
run of 12-19 digits (plain, spaced or dashed) that passes Luhn, and blanks values whose key names
a secret (``cvc``, ``number``, ``authorization``, ``api_key``, ...). Code should never log card
data in the first place; this layer is the safety net, and it is tested.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from prometheus_client import CollectorRegistry, Counter, Histogram

from normalization.cards import luhn_valid, mask_pan

__all__ = [
    "GatewayMetrics",
    "RedactingAccessLogger",
    "configure_logging",
    "redact_card_data",
    "redact_text",
]

_CANDIDATE_RE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){11,18}(?![0-9])")
_SECRET_KEYS = frozenset(
    {
        "number",
        "pan",
        "card_number",
        "cvc",
        "cvv",
        "cvc2",
        "security_code",
        "authorization",
        "api_key",
        "secret",
        "secret_id",
        "password",
        "token_value",
        "x-vault-token",
    }
)


def redact_text(text: str) -> str:
    """Mask every Luhn-valid 12-19 digit run in ``text`` (separators allowed)."""

    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        return mask_pan(digits) if luhn_valid(digits) else match.group(0)

    return _CANDIDATE_RE.sub(mask, text)


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in _SECRET_KEYS:
        return "[redacted]"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10**11:
        return redact_text(str(value))
    return value


def redact_card_data(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the redaction layer."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", *, stream: Any = None) -> None:
    """JSON logs to ``stream`` (stderr), stdlib logging routed through the same redaction."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_card_data,
    ]
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
            foreign_pre_chain=[*shared[:2], shared[2], redact_card_data],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
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
        )


#: Label combinations kept at hand per metric; past that (odd methods, say) ``labels()`` is
#: asked each time, as before.
_MAX_CACHED_CHILDREN = 512


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
        """Count one HTTP request and record its latency (``tessera_http_*``)."""
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
