"""``ConnectorRuntime``: one connector, its HTTP client, breaker, bulkhead, retries and metrics.

See ``sdk.resilience`` for the design; this module is the implementation.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import pybreaker
import structlog
from structlog.typing import FilteringBoundLogger
from tenacity import RetryCallState

from normalization import (
    ConnectorBusyError,
    ConnectorConfigurationError,
    ConnectorError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    NotSupportedError,
    Outcome,
    PaymentResult,
    PaymentStatus,
    TesseraError,
)
from sdk.client_tls import read_identity
from sdk.connector import Connector
from sdk.context import CallContext
from sdk.credentials import Credentials
from sdk.deadline import Deadline
from sdk.hostpolicy import HostPolicy
from sdk.http import HttpSettings, build_http_client
from sdk.manifest import Environment, Manifest
from sdk.operations import VERB_NAMES, Operation
from sdk.outcomes import (
    ClientCertificateRefusedError,
    ProviderAuthenticationError,
    ProviderServerError,
    ProviderThrottledError,
    RetryableProviderError,
    TransportFault,
)
from sdk.resilience.breaker import AsyncCircuitBreaker, BreakerSettings, BreakerTicket
from sdk.resilience.bulkhead import Bulkhead, BulkheadSettings
from sdk.resilience.metrics import BREAKER_STATE_VALUES, ConnectorMetrics
from sdk.resilience.retry import RetrySettings, RetrySignal, build_retrying
from sdk.revealer import RevealedCard, TokenRevealer
from sdk.transcript import TranscriptRecorder

__all__ = ["ConnectorRuntime", "RuntimeSettings", "VerbCall"]

#: What ``ConnectorRuntime.call`` runs: a connector verb bound to its request, given a context.
VerbCall = Callable[[CallContext], Awaitable[PaymentResult]]

_LOGGER: FilteringBoundLogger = structlog.get_logger("tessera.sdk.runtime")


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Configuration of one connector runtime.

    ``base_url`` overrides the manifest's URL for ``environment`` (a simulator); its host joins
    the allowlist. ``test_mode`` allows http, IP literals and loopback/private addresses, for
    simulators and tests only.
    """

    environment: Environment = Environment.SANDBOX
    base_url: str | None = None
    test_mode: bool = False
    http: HttpSettings = field(default_factory=HttpSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    bulkhead: BulkheadSettings = field(default_factory=BulkheadSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)


class _Verdict(Enum):
    FAILURE = "failure"  # transport fault or 5xx: counts towards opening the breaker
    SUCCESS = "success"  # the provider answered
    NONE = "none"  # no verdict (nothing sent, or the reply could not be judged)


@dataclass(slots=True)
class _AttemptOutcome:
    result: PaymentResult | None
    verdict: _Verdict
    retry_reason: str | None = None
    retry_after: float | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _CallState:
    attempts: int = 0
    ticket: BreakerTicket | None = None
    in_attempt: bool = False
    ctx: CallContext | None = None
    ambiguous: bool = False  # some finished attempt may have acted at the provider
    last: PaymentResult | None = None


@dataclass(frozen=True, slots=True)
class _CallArgs:
    tenant: str
    idempotency_key: str | None
    correlation_id: str | None
    credentials: Credentials
    revealer: TokenRevealer | None


def _unknown(raw_status: str | None = None) -> PaymentResult:
    return PaymentResult(
        status=PaymentStatus.UNKNOWN, outcome=Outcome.UNKNOWN, raw_status=raw_status
    )


class _CallRevealer:
    """The runtime's revealer, remembered for one call: every attempt of a call sees the same
    card (a vault that hands the CVC out once must not starve a retry after ``not_sent``), and
    the vault audits one reveal per call. Lives only as long as the call."""

    def __init__(self, inner: TokenRevealer) -> None:
        self._inner = inner
        self._cards: dict[tuple[str, str], RevealedCard] = {}

    async def reveal(self, tenant: str, token: str, *, purpose: str) -> RevealedCard:
        card = self._cards.get((tenant, token))
        if card is None:
            card = await self._inner.reveal(tenant, token, purpose=purpose)
            self._cards[(tenant, token)] = card
        return card


class _MetricsListener(pybreaker.CircuitBreakerListener):
    def __init__(self, metrics: ConnectorMetrics, connector_id: str) -> None:
        self._metrics = metrics
        self._connector_id = connector_id

    def state_change(self, cb: object, old_state: object, new_state: object) -> None:
        name = str(getattr(new_state, "name", "unknown"))
        self._metrics.breaker_transitions.labels(self._connector_id, name).inc()
        _LOGGER.warning("breaker_state_change", connector=self._connector_id, state=name)


class ConnectorRuntime:
    """Runs one connector's verbs under its breaker, bulkhead, deadline and retry policy."""

    def __init__(
        self,
        connector: Connector,
        *,
        settings: RuntimeSettings | None = None,
        revealer: TokenRevealer | None = None,
        credentials: Credentials | None = None,
        metrics: ConnectorMetrics | None = None,
        transcript: TranscriptRecorder | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.connector = connector
        self.manifest: Manifest = type(connector).manifest
        self.settings = settings or RuntimeSettings()
        self.revealer = revealer
        self.credentials = credentials if credentials is not None else Credentials()
        self.transcript = transcript
        self.metrics = metrics or ConnectorMetrics.default()
        self.base_url, policy = self._destination()
        self.http = build_http_client(policy, self.settings.http, inner_transport=transport)
        connector_id = self.manifest.id
        self.breaker = AsyncCircuitBreaker(
            connector_id,
            self.settings.breaker,
            listeners=(_MetricsListener(self.metrics, connector_id),),
        )
        self.bulkhead = Bulkhead(connector_id, self.settings.bulkhead)
        breaker, bulkhead = self.breaker, self.bulkhead
        # Read when scraped; ``publish_gauges`` writes the same values for multiprocess mode.
        self._gauges: tuple[tuple[Any, Callable[[], float]], ...] = (
            (
                self.metrics.breaker_state.labels(connector_id),
                lambda: BREAKER_STATE_VALUES.get(breaker.state, -1.0),
            ),
            (
                self.metrics.bulkhead_in_flight.labels(connector_id),
                lambda: float(bulkhead.in_flight),
            ),
            (self.metrics.bulkhead_queued.labels(connector_id), lambda: float(bulkhead.queued)),
        )
        if self.manifest.client_tls:
            self._gauges += (
                (self.metrics.client_certificate_expiry.labels(connector_id), self._tls_expiry),
            )
        for gauge, read in self._gauges:
            gauge.set_function(read)

    def _tls_expiry(self) -> float:
        try:
            return read_identity(self.credentials).not_after.timestamp()
        except TesseraError:
            return math.nan

    def publish_gauges(self) -> None:
        """Write the breaker and bulkhead gauges' current values (for prometheus multiprocess
        mode, where a scrape reads what processes wrote rather than calling ``set_function``)."""
        for gauge, read in self._gauges:
            gauge.set(read())

    def _destination(self) -> tuple[str, HostPolicy]:
        manifest, settings = self.manifest, self.settings
        hosts = set(manifest.allowed_hosts(Environment.SANDBOX))
        if settings.environment is Environment.LIVE:
            hosts = set(manifest.allowed_hosts(Environment.LIVE))
        base_url = settings.base_url or manifest.base_url(settings.environment)
        parts = urlsplit(base_url)
        if parts.hostname is None or parts.scheme not in ("https", "http"):
            raise ConnectorConfigurationError(f"Base URL for {manifest.id!r} is not a URL.")
        if parts.scheme != "https" and not settings.test_mode:
            raise ConnectorConfigurationError(
                f"Base URL for {manifest.id!r} must be https (http needs test mode)."
            )
        hosts.add(parts.hostname.lower())
        return base_url.rstrip("/"), HostPolicy(frozenset(hosts), test_mode=settings.test_mode)

    @property
    def connector_id(self) -> str:
        return self.manifest.id

    def __repr__(self) -> str:
        return f"ConnectorRuntime({self.connector_id!r}, breaker={self.breaker.state!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def drain(self, within: float) -> bool:
        """Wait up to ``within`` seconds for in-flight and queued calls to finish (graceful
        shutdown: stop sending new calls first). True when drained, False on timeout."""
        try:
            async with asyncio.timeout(within):
                await self.bulkhead.wait_idle()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Close the connection pool. Drain in-flight calls first (``drain``)."""
        await self.http.aclose()

    # -- entry points ---------------------------------------------------------------------------

    async def invoke(
        self,
        operation: Operation | str,
        request: Any,
        *,
        deadline: Deadline,
        tenant: str,
        correlation_id: str | None = None,
        credentials: Credentials | None = None,
    ) -> PaymentResult:
        """Check ``request`` against the manifest, then ``call`` the operation's verb with it.

        The provider idempotency key is the request's ``idempotency_key``.
        """
        op = Operation(operation)
        if op is Operation.WEBHOOKS:
            raise NotSupportedError("Webhooks are handled by verify_webhook/parse_webhook.")
        self.manifest.check_supported(op, request)
        verb: Callable[[Any, CallContext], Awaitable[PaymentResult]] = getattr(
            self.connector, VERB_NAMES[op][0]
        )
        return await self.call(
            op,
            lambda ctx: verb(request, ctx),
            deadline=deadline,
            tenant=tenant,
            idempotency_key=getattr(request, "idempotency_key", None),
            correlation_id=correlation_id,
            credentials=credentials,
        )

    async def call(
        self,
        operation: Operation | str,
        verb_call: VerbCall,
        *,
        deadline: Deadline,
        tenant: str,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        credentials: Credentials | None = None,
    ) -> PaymentResult:
        """Run ``verb_call`` under the breaker, bulkhead, deadline and retry policy.

        Returns a ``PaymentResult`` whose ``outcome`` is succeeded, declined, not_sent or unknown
        whenever the provider was, or may have been, contacted. Raises (nothing was sent):
        ``ConnectorUnavailableError`` (breaker open), ``ConnectorBusyError`` (bulkhead full),
        ``ConnectorTimeoutError`` (deadline already spent), and the connector's own
        ``TesseraError`` raised before any request (``NotSupportedError``, invalid request,
        ``ConnectorConfigurationError``, ...). ``CancelledError`` propagates; the call is
        counted and logged with outcome ``cancelled`` and gives the breaker no verdict.
        """
        op = Operation(operation)
        args = _CallArgs(
            tenant=tenant,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            credentials=credentials if credentials is not None else self.credentials,
            revealer=_CallRevealer(self.revealer) if self.revealer is not None else None,
        )
        state = _CallState()
        started = time.perf_counter()
        outcome_label = "rejected"
        try:
            if deadline.expired:
                self.metrics.rejections.labels(self.connector_id, "deadline").inc()
                raise ConnectorTimeoutError(
                    f"No time left to call connector {self.connector_id!r}."
                )
            loop = asyncio.get_running_loop()
            timeout = asyncio.timeout_at(loop.time() + deadline.remaining())
            try:
                async with timeout:
                    result = await self._attempts(op, verb_call, deadline, state, args)
            except TimeoutError:
                if not timeout.expired():
                    raise
                result = self._on_deadline(state)
            outcome_label = result.outcome.value
            return result
        except ConnectorUnavailableError:
            self.metrics.rejections.labels(self.connector_id, "breaker_open").inc()
            raise
        except ConnectorBusyError:
            self.metrics.rejections.labels(self.connector_id, "bulkhead_full").inc()
            raise
        except asyncio.CancelledError:
            # The caller went away (shutdown, a client gone): not a refusal. With attempts > 0
            # the provider may have acted; the gateway's attempt record says what to do.
            outcome_label = "cancelled"
            raise
        finally:
            if state.ticket is not None:  # cancelled mid-attempt: no verdict
                self.breaker.release(state.ticket)
                state.ticket = None
            elapsed = time.perf_counter() - started
            self.metrics.calls.labels(self.connector_id, op.value, outcome_label).inc()
            self.metrics.duration.labels(self.connector_id, op.value).observe(elapsed)
            _LOGGER.info(
                "connector_call",
                connector=self.connector_id,
                operation=op.value,
                outcome=outcome_label,
                attempts=state.attempts,
                elapsed_ms=round(elapsed * 1000, 3),
                correlation_id=correlation_id,
            )

    # -- internals ------------------------------------------------------------------------------

    async def _attempts(
        self,
        op: Operation,
        verb_call: VerbCall,
        deadline: Deadline,
        state: _CallState,
        args: _CallArgs,
    ) -> PaymentResult:
        async def before_sleep(retry_state: RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            reason = exc.reason if isinstance(exc, RetrySignal) else "unknown"
            self.metrics.retries.labels(self.connector_id, op.value, reason).inc()
            _LOGGER.info(
                "connector_retry",
                connector=self.connector_id,
                operation=op.value,
                reason=reason,
                attempt=retry_state.attempt_number,
                wait_s=round(retry_state.upcoming_sleep, 3),
                correlation_id=args.correlation_id,
            )

        try:
            try:
                # Most calls end in their first attempt: only a retry needs tenacity's machinery
                # (about 3 % of a payment's CPU when built for every call).
                result: PaymentResult = await self._attempt(op, verb_call, deadline, state, args)
            except RetrySignal as first:
                retrying = build_retrying(self.settings.retry, deadline, before_sleep=before_sleep)
                result = await retrying(
                    _replay_first(first, self._attempt), op, verb_call, deadline, state, args
                )
        except RetrySignal as signal:
            result = signal.result
        except (ConnectorUnavailableError, ConnectorBusyError):
            if state.last is None:
                raise
            result = state.last  # a retry was refused: the previous attempt's outcome stands
        if result.outcome is Outcome.NOT_SENT and state.ambiguous:
            return _unknown()
        return result

    async def _attempt(
        self,
        op: Operation,
        verb_call: VerbCall,
        deadline: Deadline,
        state: _CallState,
        args: _CallArgs,
    ) -> PaymentResult:
        state.attempts += 1
        ticket = self.breaker.admit()
        state.ticket, state.in_attempt, state.ctx = ticket, False, None
        try:
            async with self.bulkhead.slot():
                state.in_attempt = True
                ctx = self._context(op, deadline, state.attempts, args)
                state.ctx = ctx
                outcome = await self._run_verb(verb_call, ctx)
        except asyncio.CancelledError:
            raise  # the ticket stays with the call state: deadline or cancellation decides
        except BaseException:
            self.breaker.release(ticket)
            state.ticket = None
            raise
        state.in_attempt = False
        state.ticket = None
        if outcome.verdict is _Verdict.FAILURE:
            self.breaker.record_failure(ticket)
        elif outcome.verdict is _Verdict.SUCCESS:
            self.breaker.record_success(ticket)
        else:
            self.breaker.release(ticket)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None
        if outcome.result.outcome is Outcome.UNKNOWN:
            state.ambiguous = True
        state.last = outcome.result
        if outcome.retry_reason is not None and (
            outcome.retry_reason == "not_sent" or self.manifest.is_retry_safe(op)
        ):
            raise RetrySignal(outcome.result, outcome.retry_reason, outcome.retry_after)
        return outcome.result

    def _context(
        self, op: Operation, deadline: Deadline, attempt: int, args: _CallArgs
    ) -> CallContext:
        connector_id = self.connector_id

        def count_unmapped(_code: str | None) -> None:
            self.metrics.unmapped_codes.labels(connector_id, op.value).inc()

        return CallContext(
            manifest=self.manifest,
            operation=op.value,
            tenant=args.tenant,
            deadline=deadline,
            http=self.http,
            base_url=self.base_url,
            credentials=args.credentials,
            revealer=args.revealer,
            idempotency_key=args.idempotency_key,
            correlation_id=args.correlation_id,
            attempt=attempt,
            error_map=type(self.connector).error_map,
            transcript=self.transcript,
            on_unmapped_code=count_unmapped,
            connect_timeout=self.settings.http.connect_timeout,
        )

    async def _run_verb(self, verb_call: VerbCall, ctx: CallContext) -> _AttemptOutcome:
        """One verb call, its failure mapped to an outcome, a breaker verdict and a retry
        reason. ``CancelledError`` is not caught."""
        try:
            result = await verb_call(ctx)
        except ClientCertificateRefusedError:
            # Refused in the TLS handshake, before the request was processed; every call fails
            # the same way until an operator changes the certificate: counted, not retried.
            ctx.logger.error("connector_client_certificate_refused")
            refused = PaymentResult.not_sent("tls_client_certificate_refused")
            return _AttemptOutcome(refused, _Verdict.FAILURE)
        except TransportFault as exc:
            if exc.outcome is Outcome.NOT_SENT:
                return _AttemptOutcome(PaymentResult.not_sent(), _Verdict.FAILURE, "not_sent")
            return _AttemptOutcome(_unknown(), _Verdict.FAILURE, "unknown")
        except ProviderServerError as exc:
            return _AttemptOutcome(
                _unknown(f"http_{exc.status_code}"),
                _Verdict.FAILURE,
                "server_error",
                exc.retry_after,
            )
        except ProviderAuthenticationError as exc:
            # Nothing was done; every call fails the same way until an operator changes the
            # credentials, so the breaker counts it and nothing retries it.
            ctx.logger.error("connector_credentials_refused", status=exc.status_code)
            refused = PaymentResult.not_sent(f"http_{exc.status_code}")
            return _AttemptOutcome(refused, _Verdict.FAILURE)
        except ProviderThrottledError as exc:
            throttled = PaymentResult.not_sent("http_429")
            return _AttemptOutcome(throttled, _Verdict.SUCCESS, "throttled", exc.retry_after)
        except RetryableProviderError as exc:
            return _AttemptOutcome(
                exc.result, _Verdict.SUCCESS, "provider_retryable", exc.retry_after
            )
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure gets an outcome
            if ctx.may_have_reached_provider:
                # The request went out and something failed after (an unparseable reply, a
                # redirect, a connector bug): the provider may have acted.
                ctx.logger.warning(
                    "connector_failed_after_send",
                    error=type(exc).__name__,
                    where=_raised_at(exc, type(self.connector)),
                )
                return _AttemptOutcome(_unknown(), _Verdict.NONE)
            if not isinstance(exc, TesseraError):
                error: BaseException = ConnectorError(
                    f"Connector {self.connector_id!r} failed before sending ({type(exc).__name__})."
                )
                error.__cause__ = exc
                return _AttemptOutcome(None, _Verdict.NONE, error=error)
            return _AttemptOutcome(None, _Verdict.NONE, error=exc)
        if not isinstance(result, PaymentResult):
            raise ConnectorError(f"Connector {self.connector_id!r} returned no PaymentResult.")
        return _AttemptOutcome(result, _Verdict.SUCCESS)

    def _on_deadline(self, state: _CallState) -> PaymentResult:
        """The deadline fired: judge the attempt in flight and say what the caller knows."""
        ctx = state.ctx if state.in_attempt else None
        reached_now = ctx is not None and ctx.may_have_reached_provider
        if state.ticket is not None:
            if ctx is not None and ctx.network_attempted:
                self.breaker.record_failure(state.ticket)  # the provider was slower than that
            else:
                self.breaker.release(state.ticket)  # stuck before the network (queue, vault)
            state.ticket = None
        self.metrics.rejections.labels(self.connector_id, "deadline").inc()
        if reached_now or state.ambiguous:
            return _unknown()
        if state.last is not None:
            return state.last
        return PaymentResult.not_sent()


def _replay_first(
    first: RetrySignal, attempt: Callable[..., Awaitable[PaymentResult]]
) -> Callable[..., Awaitable[PaymentResult]]:
    """``attempt`` whose first call raises ``first`` (the attempt that already ran) instead of
    running again: tenacity then stops, waits and logs exactly as if it had run that attempt."""
    pending: list[RetrySignal] = [first]

    async def replaying(*args: Any) -> PaymentResult:
        if pending:
            raise pending.pop()
        return await attempt(*args)

    return replaying


def _raised_at(exc: BaseException, connector: type[Connector]) -> str:
    """Where in the connector's package ``exc`` was raised (``transformers.py:88 in
    parse_reply``: the innermost frame there, else the innermost of all), for the operator:
    file, line and function only. Never the message, which may quote the provider's reply,
    card data included, in forms no scrubber recognizes for sure (a dict's ``repr``)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    try:
        package: Path | None = Path(inspect.getfile(connector)).resolve().parent
    except (TypeError, OSError):
        package = None
    own = [f for f in frames if Path(f.filename).resolve().parent == package]
    frame = (own or frames)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
