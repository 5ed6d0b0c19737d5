"""Prometheus metrics of connector calls: outcomes, latency, retries, breaker and bulkhead.

One ``ConnectorMetrics`` per ``CollectorRegistry``, shared by every connector runtime of a
process (the connector is a label). Tests pass their own registry; ``ConnectorMetrics.default()``
registers once on prometheus-client's global registry, which the gateway's ``/metrics`` serves.

The gauges read the breaker, the bulkhead and the client certificate when scraped (``set_function``). In prometheus
multiprocess mode (several gateway workers) a scrape reads files, not functions: the runtime's
``publish_gauges()`` writes their current values, which the gateway calls every second.

| metric | labels |
| --- | --- |
| ``tessera_connector_calls_total`` | connector, operation, outcome (succeeded, declined, not_sent, unknown, rejected, cancelled) |
| ``tessera_connector_call_duration_seconds`` | connector, operation |
| ``tessera_connector_retries_total`` | connector, operation, reason |
| ``tessera_connector_rejections_total`` | connector, reason (breaker_open, bulkhead_full, deadline) |
| ``tessera_connector_breaker_state`` | connector (0 closed, 1 half-open, 2 open) |
| ``tessera_connector_breaker_transitions_total`` | connector, state |
| ``tessera_connector_bulkhead_in_flight`` / ``_queued`` | connector |
| ``tessera_connector_unmapped_provider_codes_total`` | connector, operation |
| ``tessera_connector_client_certificate_expiry_timestamp_seconds`` | connector (``client_tls`` only) |
"""  # noqa: E501

from __future__ import annotations

import threading
from typing import ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BREAKER_STATE_VALUES", "ConnectorMetrics"]

BREAKER_STATE_VALUES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}


class ConnectorMetrics:
    """The metric families; see the module docstring."""

    _default: ClassVar[ConnectorMetrics | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.calls = Counter(
            "tessera_connector_calls",
            "Connector calls by final outcome.",
            ["connector", "operation", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "tessera_connector_call_duration_seconds",
            "Connector call duration, retries included.",
            ["connector", "operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.retries = Counter(
            "tessera_connector_retries",
            "Retried connector attempts.",
            ["connector", "operation", "reason"],
            registry=registry,
        )
        self.rejections = Counter(
            "tessera_connector_rejections",
            "Calls refused without reaching the provider.",
            ["connector", "reason"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "tessera_connector_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["connector"],
            registry=registry,
            # Several gateway workers (prometheus multiprocess mode): each has its own breaker;
            # the worst live one is reported (a stopped worker's value leaves with it).
            multiprocess_mode="livemax",
        )
        self.breaker_transitions = Counter(
            "tessera_connector_breaker_transitions",
            "Circuit breaker state changes.",
            ["connector", "state"],
            registry=registry,
        )
        self.bulkhead_in_flight = Gauge(
            "tessera_connector_bulkhead_in_flight",
            "Calls holding a bulkhead slot.",
            ["connector"],
            registry=registry,
            multiprocess_mode="livesum",  # summed over the live workers
        )
        self.bulkhead_queued = Gauge(
            "tessera_connector_bulkhead_queued",
            "Calls waiting for a bulkhead slot.",
            ["connector"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.client_certificate_expiry = Gauge(
            "tessera_connector_client_certificate_expiry_timestamp_seconds",
            "When the TLS client certificate a connector presents expires (Unix time; "
            "connectors with client_tls only, NaN while its credentials hold none usable).",
            ["connector"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.unmapped_codes = Counter(
            "tessera_connector_unmapped_provider_codes",
            "Provider error codes missing from the connector's error map.",
            ["connector", "operation"],
            registry=registry,
        )

    @classmethod
    def default(cls) -> ConnectorMetrics:
        """The process-wide instance on prometheus-client's global registry."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls(REGISTRY)
            return cls._default
