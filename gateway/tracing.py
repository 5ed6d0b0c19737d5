"""Optional OpenTelemetry tracing.

With ``opentelemetry-api`` installed (the ``otel`` extra) the gateway opens a server span per
HTTP request (route, method, status, request id) and a child span per connector call
(connector, operation, outcome). Spans go wherever the process's tracer provider sends them:
configure it with the OpenTelemetry SDK or ``opentelemetry-instrument``. Without the package,
or without a configured provider, no span is opened at all. Span attributes never carry card
data: only ids, routes and outcomes; the method in a span's name is a standard one or ``other``
(``observability.method_label``). A span that ends in an exception records its type and its
redacted message, never the traceback (OpenTelemetry's own recording would export both raw).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from gateway.observability import redact_text

__all__ = ["current_tracer", "span"]

#: Set only by tests (or code that wants its own tracer); otherwise resolved from the provider.
_TRACER: Any = None

try:  # pragma: no cover - exercised when the optional dependency is (not) installed
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover
    _trace = None  # type: ignore[assignment]


#: The tracer of the configured provider, once there is one. OpenTelemetry sets the global
#: provider once per process (it refuses to replace it), so the tracer is resolved once.
_PROVIDER_TRACER: Any = None
_UNKNOWN: Any = object()
#: OpenTelemetry builds the global provider from this variable on first use, if it is set.
_PROVIDER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"


def current_tracer() -> Any:
    """The tracer to use, or None while no tracer provider is configured.

    With only the API installed the global provider is a proxy whose spans do nothing; skipping
    them keeps the request path free of that cost until someone configures tracing. Asked on
    every request, so the common answers are cheap: the cached tracer, or None as long as
    OpenTelemetry holds no provider and none is named in the environment (``os.environ`` is
    not searched on each request: that lookup cost more than the rest of this function).
    """
    global _PROVIDER_TRACER
    if _TRACER is not None or _trace is None:
        return _TRACER
    if _PROVIDER_TRACER is not None:
        return _PROVIDER_TRACER
    if getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _ENV_NAMES_PROVIDER:
        return None
    provider = _trace.get_tracer_provider()
    if isinstance(provider, _trace.ProxyTracerProvider):
        return None
    _PROVIDER_TRACER = provider.get_tracer("tessera.gateway")
    return _PROVIDER_TRACER


_ENV_NAMES_PROVIDER = _PROVIDER_ENV in os.environ


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool | None) -> Iterator[Any]:
    """A span named ``name`` (or nothing, without a configured tracer); yields it."""
    tracer = current_tracer()
    if tracer is None:
        yield None
        return
    # OpenTelemetry's own exception recording would export ``str(exc)`` and the traceback as
    # they are; an error is recorded here instead, by type and redacted message.
    with tracer.start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    ) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)
        try:
            yield current
        except BaseException as exc:
            kind = type(exc).__name__
            current.set_status(_trace.Status(_trace.StatusCode.ERROR, kind))
            current.add_event(
                "exception",
                {"exception.type": kind, "exception.message": redact_text(str(exc))},
            )
            raise
