"""Optional OpenTelemetry tracing.

With ``opentelemetry-api`` installed (the ``otel`` extra) the gateway opens a server span per
HTTP request (route, method, status, request id) and a child span per connector call
(connector, operation, outcome). Spans go wherever the process's tracer provider sends them:
configure it with the OpenTelemetry SDK or ``opentelemetry-instrument``. Without the package,
or without a configured provider, tracing costs nothing (the API's no-op tracer, or a null
context here). Span attributes never carry card data: only ids, routes and outcomes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["span"]

_TRACER: Any
try:  # pragma: no cover - exercised when the optional dependency is (not) installed
    from opentelemetry import trace as _trace

    _TRACER = _trace.get_tracer("tessera.gateway")
except ImportError:  # pragma: no cover
    _TRACER = None


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[Any]:
    """A span named ``name`` (or nothing, without OpenTelemetry); yields it for more attributes."""
    if _TRACER is None:
        yield None
        return
    with _TRACER.start_as_current_span(name) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        yield current
