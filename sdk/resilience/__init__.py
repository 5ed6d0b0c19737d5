"""The resilience runtime: what runs around every connector verb, so connectors do not have to.

The gateway keeps one ``ConnectorRuntime`` per connector (opened and closed by its cleanup
context) and calls every provider operation through it::

    runtime = ConnectorRuntime(connector, settings=RuntimeSettings(...), revealer=vault_revealer,
                               credentials=creds, metrics=ConnectorMetrics(registry))
    result = await runtime.invoke("authorize", request, deadline=Deadline.after(8.0),
                                  tenant="merchant_42", correlation_id=request_id)
    # or, with any coroutine factory taking the per-attempt CallContext:
    result = await runtime.call("authorize", lambda ctx: connector.authorize(request, ctx),
                                deadline=deadline, tenant="merchant_42",
                                idempotency_key=request.idempotency_key)

One call, in order:

1. **Deadline.** The caller's ``Deadline`` bounds everything below (queueing, every attempt,
   backoff). A call whose deadline is already spent raises ``ConnectorTimeoutError``. When it
   fires mid-call the answer is ``unknown`` if a request may have reached the provider (or an
   earlier attempt was ambiguous), else ``not_sent``; an attempt cut short counts as a breaker
   failure (the provider was slower than we can afford).
2. **Breaker** (``AsyncCircuitBreaker``, on pybreaker). Open: ``ConnectorUnavailableError`` at
   once, no network. Half-open: exactly one trial call; concurrent callers fail fast. Failures
   counted: transport faults (``not_sent`` and ``unknown``), 5xx and deadline expiry; never
   declines, 4xx or 429. ``CancelledError`` is never counted and always propagates.
3. **Bulkhead.** ``max_concurrent`` calls run, ``max_queued`` wait, the rest get
   ``ConnectorBusyError`` immediately.
4. **The verb**, with a fresh ``CallContext`` (pooled HTTP client with egress detokenization,
   credentials, idempotency key, logger). Its failures are mapped to outcomes once
   (``sdk.outcomes``): connection refused/DNS/connect timeout -> ``not_sent``; reset/read
   timeout after the request started -> ``unknown``; 5xx -> ``unknown`` (``raw_status``
   ``http_5xx``); 429 -> ``not_sent`` (``http_429``); an exception after a request went out
   (unparseable reply, redirect) -> ``unknown``; a ``TesseraError`` before any request (not
   supported, invalid, misconfigured) is raised as is.
5. **Retries** (tenacity: attempt limit, exponential backoff with full jitter, at least
   Retry-After, never past the deadline, only ``RetrySignal`` retried so never
   ``CancelledError``): ``not_sent`` is always retried; ``unknown``, 5xx, 429 and retryable
   provider codes only when the manifest lists the operation in ``retry_safe`` (every retry
   re-sends the same idempotency key). A ``not_sent`` after an ambiguous attempt is reported as
   ``unknown``.

Returned ``PaymentResult``: the provider was (or may have been) contacted, and ``outcome``
says what is known. Raised ``ConnectorError``/``TesseraError``: nothing was sent.

Metrics (``ConnectorMetrics``, one per prometheus ``CollectorRegistry``): call outcomes and
latency, retries by reason, rejections (breaker open, bulkhead full, deadline), breaker state
and transitions, bulkhead occupancy and queue, unmapped provider codes.
"""

from sdk.deadline import Deadline
from sdk.resilience.breaker import AsyncCircuitBreaker, BreakerSettings, BreakerTicket
from sdk.resilience.bulkhead import Bulkhead, BulkheadSettings
from sdk.resilience.metrics import ConnectorMetrics
from sdk.resilience.retry import RetrySettings, RetrySignal
from sdk.resilience.runtime import ConnectorRuntime, RuntimeSettings, VerbCall

__all__ = [
    "AsyncCircuitBreaker",
    "BreakerSettings",
    "BreakerTicket",
    "Bulkhead",
    "BulkheadSettings",
    "ConnectorMetrics",
    "ConnectorRuntime",
    "Deadline",
    "RetrySettings",
    "RetrySignal",
    "RuntimeSettings",
    "VerbCall",
]
