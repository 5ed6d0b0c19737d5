"""Optional OpenTelemetry tracing.

With ``opentelemetry-api`` installed (the ``otel`` extra) the gateway opens a server span per
HTTP request (route, method, status, request id) and a child span per connector call
(connector, operation, outcome). Spans go wherever the process's tracer provider sends them:
configure it with the OpenTelemetry SDK or ``opentelemetry-instrument``. Without the package,
or without a configured provider, no span is opened at all. Span attributes never carry card
data: only ids, routes and outcomes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["span"]

#: Set only by tests (or code that wants its own tracer); otherwise resolved per span.
_TRACER: Any = None

try:  # pragma: no cover - exercised when the optional dependency is (not) installed
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover
    _trace = None  # type: ignore[assignment]


def _tracer() -> Any:
    """The tracer to use, or None while no tracer provider is configured.

    With only the API installed the global provider is a proxy whose spans do nothing; skipping
    them keeps the request path free of that cost until someone configures tracing.
    """
    if _TRACER is not None or _trace is None:
        return _TRACER
    provider = _trace.get_tracer_provider()
    if isinstance(provider, _trace.ProxyTracerProvider):
        return None
    return provider.get_tracer("tessera.gateway")


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[Any]:
    """A span named ``name`` (or nothing, without a configured tracer); yields it."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        yield current
