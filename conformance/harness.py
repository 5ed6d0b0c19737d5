"""``ScenarioContext``: what a scenario uses to call its connector and check what happened.

One context per scenario instance. It builds the connector's ``ConnectorRuntime`` exactly as the
gateway does (breaker, bulkhead, deadline, retries, egress detokenization), pointed at the run's
provider through the traffic tap, with a private metrics registry and the scenario's own
transcript. Scenarios:

- build requests from abstract inputs (``authorize_request``, ``capture_request``, ...);
- ``await ctx.call(step, operation, request)``: invoke the verb and check the step's
  expectation block against the *facts* observed (the result's fields plus ``raised``,
  ``provider_requests``, ``requests_sent``, ``elapsed_ms``, ``idempotency_keys_distinct``,
  ``idempotency_key_sent``, ``request_json_floats``, ``refused_cleanly``);
- ``await ctx.settle(step, observation)``: poll ``sync`` (deadline, backoff; never a fixed sleep);
- ``await ctx.customer_action(url, recipe)``: act as the customer on a redirect (3-D Secure,
  bank consent) and return the callback parameters;
- ``await ctx.webhooks(count, about=reference)``: the provider's webhooks about a payment;
- ``ctx.proxy`` and ``ctx.use_runtime(...)`` for fault scenarios.

A failed expectation raises ``ExpectationFailed`` (the scenario stops: later steps depend on
it); ``ctx.skip(reason)`` ends it as skipped. Its message explains the facts a bare ``true`` or
``unknown`` would hide: the exception the connector raised (the runtime turns one raised after
the request went out into outcome ``unknown`` and keeps nothing else; the context watches the
connector's verbs and keeps it, ``crashes``), and which idempotency key went out when it was not
the request's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

import httpx
from prometheus_client import CollectorRegistry

from conformance.cassettes import Recording
from conformance.diagnosis import (
    ConnectorCrash,
    explained,
    idempotency_problem,
    shorten,
    watch_verbs,
)
from conformance.environment import Mode, RunEnvironment
from conformance.expectations import check_block
from conformance.inputs import RETURN_URL, TENANT, Inputs
from conformance.polling import PollTimeoutError, poll
from conformance.proxy import FaultProxy
from conformance.results import AssertionOutcome
from conformance.traffic import TappedExchange, TrafficTap, json_floats
from normalization import (
    AuthorizeRequest,
    CaptureRequest,
    ConnectorBusyError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    Money,
    Outcome,
    PaymentResult,
    PaymentStatus,
    RefundRequest,
    SyncRequest,
    TesseraError,
    VoidRequest,
)
from sdk import (
    BreakerSettings,
    BulkheadSettings,
    ConnectorMetrics,
    ConnectorRuntime,
    Deadline,
    Manifest,
    Operation,
    RetrySettings,
    RuntimeSettings,
    TranscriptRecorder,
    WebhookRequest,
)
from sdk.scrubbing import Scrubber
from sdk.testing.cassettes import Interaction

if TYPE_CHECKING:
    from conformance.scenarios.model import ScenarioInstance

__all__ = [
    "ConnectorCrash",
    "ExpectationFailed",
    "Observation",
    "ScenarioContext",
    "ScenarioSkipped",
]

_KIT_RETRY = RetrySettings(max_attempts=3, initial_backoff=0.01, max_backoff=0.1)
_NOT_REFUSALS = (ConnectorUnavailableError, ConnectorBusyError, ConnectorTimeoutError)
_SCRUBBER = Scrubber()


class ScenarioSkipped(Exception):
    """The scenario cannot run here; the message says why (shown in the report)."""


class ExpectationFailed(AssertionError):
    """A step's expectation did not hold; the message lists the failed assertions."""


@dataclass
class Observation:
    """What one step observed."""

    step: str
    request: Any
    result: PaymentResult | None
    error: TesseraError | None
    facts: dict[str, Any]
    payment_id: str = ""
    reference: str | None = None

    @property
    def provider_reference(self) -> str | None:
        return self.result.provider_reference if self.result is not None else None


@dataclass
class _Window:
    tapped: int
    proxied: int
    started: float
    crashed: int = 0


@dataclass
class ScenarioContext:
    """See the module docstring. Built by the runner, one per scenario instance."""

    env: RunEnvironment
    instance: ScenarioInstance
    expectation: dict[str, Any]
    recording: Recording | None = None
    transcript: TranscriptRecorder = field(default_factory=TranscriptRecorder)
    exchanges: list[TappedExchange] = field(default_factory=list)
    assertions: list[AssertionOutcome] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    customer: list[Interaction] = field(default_factory=list)
    deliveries: list[WebhookRequest] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    #: Exceptions the connector's verbs raised, in order (see ``ConnectorCrash``).
    crashes: list[ConnectorCrash] = field(default_factory=list)
    _runtimes: list[ConnectorRuntime] = field(default_factory=list)
    _runtime: ConnectorRuntime | None = None
    _webhook_mark: int = 0

    def __post_init__(self) -> None:
        if self.env.receiver is not None:
            self._webhook_mark = len(self.env.receiver.deliveries)

    # -- what scenarios read --------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self.env.manifest

    @property
    def inputs(self) -> Inputs:
        return self.env.inputs

    @property
    def param(self) -> str:
        return self.instance.param or ""

    @property
    def deadline_seconds(self) -> float:
        return self.env.sandbox.deadline_seconds

    @property
    def proxy(self) -> FaultProxy:
        if self.env.proxy is None:
            self.skip("fault injection needs the fault proxy (simulator mode)")
        return self.env.proxy

    def skip(self, reason: str) -> NoReturn:
        raise ScenarioSkipped(reason)

    def declares(self, *operations: Operation) -> bool:
        return all(op in self.env.manifest.operations for op in operations)

    def retry_safe(self, operation: Operation) -> bool:
        return bool(self.env.manifest.is_retry_safe(operation))

    # -- runtimes -------------------------------------------------------------------------------

    def use_runtime(
        self,
        *,
        breaker: BreakerSettings | None = None,
        bulkhead: BulkheadSettings | None = None,
        retry: RetrySettings | None = None,
    ) -> ConnectorRuntime:
        """A fresh runtime (new breaker, bulkhead, pool) with these settings, used from now on."""
        tap = TrafficTap(self.env.network_transport(self.recording), self.exchanges)
        runtime = ConnectorRuntime(
            watch_verbs(self.env.connector_class(), self.env.manifest, self._keep_crash),
            settings=RuntimeSettings(
                base_url=self.env.base_url,
                test_mode=self.env.test_mode,
                breaker=breaker or BreakerSettings(),
                bulkhead=bulkhead or BulkheadSettings(),
                retry=retry or _KIT_RETRY,
            ),
            revealer=self.env.revealer,
            credentials=self.env.credentials,
            metrics=ConnectorMetrics(CollectorRegistry()),
            transcript=self.transcript,
            transport=tap,
        )
        self._runtimes.append(runtime)
        self._runtime = runtime
        return runtime

    @property
    def runtime(self) -> ConnectorRuntime:
        return self._runtime if self._runtime is not None else self.use_runtime()

    async def close(self) -> None:
        for runtime in self._runtimes:
            await runtime.aclose()

    # -- watching the connector -----------------------------------------------------------------

    def _keep_crash(self, operation: Operation, exc: Exception) -> None:
        if any(crash.exception is exc for crash in self.crashes):
            return  # a verb calling another: kept once, where it was raised
        crash = ConnectorCrash.of(operation, exc)
        self.crashes.append(crash)
        # Scanned for canaries as written, like every exception text.
        self.texts.append(crash.traceback)

    def safe_text(self, text: str) -> str:
        """``text`` fit to show: the run's canaries redacted (``[CANARY]``, as everywhere), then
        anything else shaped like card data or a secret scrubbed as transcripts are."""
        return _SCRUBBER.scrub_text(self.env.scanner.redact(text))

    # -- calling --------------------------------------------------------------------------------

    def window(self) -> _Window:
        proxied = len(self.env.proxy.requests) if self.env.proxy is not None else 0
        return _Window(len(self.exchanges), proxied, time.perf_counter(), len(self.crashes))

    async def invoke(
        self, operation: Operation, request: Any, *, deadline: float | None = None, step: str = ""
    ) -> tuple[PaymentResult | None, TesseraError | None]:
        """One runtime call; Tessera errors are returned, not raised (they are observations)."""
        try:
            result = await self.runtime.invoke(
                operation,
                request,
                deadline=Deadline.after(deadline or self.deadline_seconds),
                tenant=TENANT,
                correlation_id=f"{self.instance.id}:{step or operation.value}",
            )
        except TesseraError as exc:
            self.texts.append(f"{type(exc).__name__}: {exc} {exc!r}")
            return None, exc
        self.texts.append(repr(result))
        return result, None

    def facts(
        self,
        result: PaymentResult | None,
        error: TesseraError | None,
        request: Any,
        window: _Window,
    ) -> dict[str, Any]:
        """The facts of one call: its result's fields and what the kit measured around it."""
        tapped = self.exchanges[window.tapped :]
        facts: dict[str, Any] = result.model_dump(mode="json") if result is not None else {}
        facts["raised"] = error.code if error is not None else "none"
        if error is not None:
            # Its sentence too ("The card has no holder name", "failed before sending
            # (ValueError)"): the code alone sends the author looking in the wrong place.
            # Tessera errors never carry card data; the report is leak-scanned anyway.
            facts["raised_detail"] = error.detail
        facts["requests_sent"] = len(tapped)
        if self.env.proxy is not None:
            facts["provider_requests"] = self.env.proxy.forwarded(window.proxied)
        else:
            facts["provider_requests"] = len(tapped)
        facts["elapsed_ms"] = round((time.perf_counter() - window.started) * 1000, 1)
        crashed = [
            crash
            for crash in self.crashes[window.crashed :]
            if crash.exception is not error  # a Tessera error the call raised: ``raised`` says it
        ]
        if crashed:
            facts["connector_exception"] = self.safe_text(shorten(crashed[0].summary))
            facts["connector_exception_operation"] = crashed[0].operation
        keys = [self._idempotency_key(exchange) for exchange in tapped]
        facts["idempotency_keys_distinct"] = len({k for k in keys if k})
        expected_key = getattr(request, "idempotency_key", None)
        # Every attempt carried the request's key (or, for a call without one, none did).
        facts["idempotency_key_sent"] = bool(keys) and all(k == expected_key for k in keys)
        if not facts["idempotency_key_sent"]:
            facts["idempotency_key_detail"] = self.safe_text(
                idempotency_problem(self.env.manifest, keys, expected_key)
            )
        facts["request_json_floats"] = [
            path
            for exchange in tapped
            for path in json_floats(exchange.body, exchange.content_type)
        ]
        refused = (result is not None and result.outcome is Outcome.DECLINED) or (
            error is not None and not isinstance(error, _NOT_REFUSALS)
        )
        facts["refused_cleanly"] = refused
        return facts

    def _idempotency_key(self, exchange: TappedExchange) -> str | None:
        """The provider idempotency key an exchange carried (header or body field)."""
        idempotency = self.env.manifest.idempotency
        if idempotency is None:
            return None
        if idempotency.header:
            return exchange.header(idempotency.header)
        assert idempotency.body_field is not None
        try:
            node: Any = json.loads(exchange.body) if exchange.body else {}
        except ValueError:
            node = dict(parse_qsl(exchange.body.decode("utf-8", errors="replace")))
        for part in idempotency.body_field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return str(node) if node is not None else None

    async def call(
        self,
        step: str,
        operation: Operation,
        request: Any,
        *,
        deadline: float | None = None,
        check: bool = True,
        block: str | None = None,
        payment_id: str = "",
    ) -> Observation:
        """Invoke ``operation`` with ``request``, record the facts under ``step`` and check them
        against the expectation block ``block`` (default: ``step``)."""
        window = self.window()
        result, error = await self.invoke(operation, request, deadline=deadline, step=step)
        facts = self.facts(result, error, request, window)
        observation = Observation(
            step,
            request,
            result,
            error,
            facts,
            payment_id=payment_id or getattr(request, "payment_id", "") or "",
            reference=getattr(request, "reference", None),
        )
        if check:
            self.check(block or step, facts, request=request)
        self.steps[step] = facts
        return observation

    def check(self, block: str, facts: dict[str, Any], *, request: Any = None) -> None:
        """Check ``facts`` against the expectation block ``block``; raise on any failure."""
        expected = self.expectation.get(block)
        self.steps[block] = facts
        if not isinstance(expected, dict) or not expected:
            return  # no baseline here, or a profile removed it all (the report says why)
        dumped = request.model_dump(mode="json") if hasattr(request, "model_dump") else {}
        outcomes = [
            explained(outcome, facts)
            for outcome in check_block(block, expected, facts, request=dumped, steps=self.steps)
        ]
        self.assertions.extend(outcomes)
        failed = [o for o in outcomes if not o.passed]
        if failed:
            message = "; ".join(f"{o.label}: expected {o.expected}, got {o.actual}" for o in failed)
            raised = facts.get("raised")
            if raised not in (None, "none") and not any(o.path == "raised" for o in failed):
                detail = facts.get("raised_detail")
                message += f" (the call raised {raised}" + (f": {detail})" if detail else ")")
            crash = facts.get("connector_exception")
            if crash is not None and not any(o.path == "connector_exception" for o in failed):
                message += f" (the connector's {facts.get('connector_exception_operation')} "
                message += f"raised {crash}"
                if facts.get("outcome") == "unknown":
                    # What the author sees is "unknown"; say where it came from.
                    message += "; the runtime reports an exception after sending as unknown"
                message += ")"
            raise ExpectationFailed(message)

    # -- request builders -----------------------------------------------------------------------

    def authorize_request(
        self,
        card: str = "card.approved",
        *,
        amount: Money | None = None,
        capture: bool = False,
        inline: bool = False,
        key: str | None = None,
        reference: str | None = None,
    ) -> AuthorizeRequest:
        # An input the profile lacks raises MissingInputError: the runner skips the scenario.
        method = self.env.inputs.card(card, inline=inline)
        money = amount or self.env.inputs.money(card)
        return AuthorizeRequest(
            amount=money,
            payment_method=method,
            capture=capture,
            reference=reference or self.env.inputs.reference(),
            idempotency_key=key or self.env.inputs.key(),
            return_url=RETURN_URL,
        )

    def capture_request(
        self, authorized: Observation, amount: Money | None = None, *, final: bool = True
    ) -> CaptureRequest:
        return CaptureRequest(
            payment_id=authorized.payment_id or authorized.reference or "payment",
            provider_reference=authorized.provider_reference,
            amount=amount or authorized.request.amount,
            final=final,
            idempotency_key=self.env.inputs.key(),
        )

    def refund_request(self, captured: Observation, amount: Money) -> RefundRequest:
        return RefundRequest(
            payment_id=captured.payment_id or captured.reference or "payment",
            provider_reference=captured.provider_reference,
            amount=amount,
            idempotency_key=self.env.inputs.key(),
        )

    def void_request(self, authorized: Observation) -> VoidRequest:
        return VoidRequest(
            payment_id=authorized.payment_id or authorized.reference or "payment",
            provider_reference=authorized.provider_reference,
            idempotency_key=self.env.inputs.key(),
        )

    def sync_request(self, about: Observation, *, by_reference: bool = False) -> SyncRequest:
        return SyncRequest(
            payment_id=about.payment_id or about.reference or "payment",
            reference=about.reference,
            provider_reference=None if by_reference else about.provider_reference,
        )

    # -- waiting --------------------------------------------------------------------------------

    async def settle(
        self,
        step: str,
        about: Observation,
        *,
        until: Callable[[PaymentResult], bool] | None = None,
        by_reference: bool = False,
        check: bool = True,
    ) -> Observation:
        """Poll ``sync`` until ``until`` (default: no longer pending) or the profile's polling
        deadline; then check ``step``'s expectation against the last answer (``check=False``:
        the caller adds facts and checks)."""
        if not self.declares(Operation.SYNC):
            self.skip("waiting for an asynchronous outcome needs the sync operation")

        def done(result: PaymentResult) -> bool:
            if until is not None:
                return until(result)
            return result.status is not PaymentStatus.PENDING

        request = self.sync_request(about, by_reference=by_reference)

        async def fetch() -> Observation:
            return await self.call(
                step, Operation.SYNC, request, check=False, payment_id=about.payment_id
            )

        try:
            last = await poll(
                fetch,
                until=lambda o: o.result is not None and done(o.result),
                policy=self.env.sandbox.polling,
                what=f"{step}: the payment settling",
            )
        except PollTimeoutError as exc:
            last = exc.last if isinstance(exc.last, Observation) else await fetch()
        if check:
            self.check(step, last.facts, request=request)
        return last

    async def customer_action(self, url: str, recipe: dict[str, Any]) -> dict[str, str]:
        """Act as the customer on a redirect page (``recipe``: ``method``, ``form``, ``query``)
        and return the query parameters of where the page sends the customer back."""
        method = str(recipe.get("method", "GET")).upper()
        transport = self.recording.transport() if self.recording else httpx.AsyncHTTPTransport()
        async with httpx.AsyncClient(
            transport=transport, follow_redirects=False, timeout=10.0, trust_env=False
        ) as client:
            response = await client.request(
                method, url, data=recipe.get("form"), params=recipe.get("query")
            )
        if self.env.config.record:
            self.customer.append(
                Interaction(
                    method=method,
                    url=str(response.request.url.copy_with(query=None)),
                    request_headers={},
                    request_body=response.request.content.decode("utf-8", errors="replace"),
                    status_code=response.status_code,
                    response_headers={
                        k: v for k, v in response.headers.items() if k.lower() == "location"
                    },
                    response_body=response.text,
                )
            )
        location = response.headers.get("location")
        if location is None:
            return {}
        return dict(parse_qsl(urlsplit(location).query))

    async def webhooks(self, count: int, *, about: str) -> list[WebhookRequest]:
        """At least ``count`` webhook deliveries whose body mentions ``about`` (a provider
        reference), waiting for them with the profile's polling deadline."""
        if self.recording is not None:
            return list(self.recording.webhooks)
        receiver = self.env.receiver
        if receiver is None:
            reason = "webhooks need the simulator to deliver them (its factory takes webhook_url)"
            if self.env.mode is not Mode.SIMULATOR:
                reason = f"webhooks are not received in {self.env.mode.value} mode"
            self.skip(reason)
        needle = about.encode()

        async def fetch() -> list[WebhookRequest]:
            return [d for d in receiver.deliveries[self._webhook_mark :] if needle in d.body]

        try:
            found = await poll(
                fetch, until=lambda found: len(found) >= count, policy=self.env.sandbox.polling
            )
        except PollTimeoutError as exc:
            got = len(exc.last) if isinstance(exc.last, list) else 0
            raise ExpectationFailed(
                f"webhooks: expected {count} deliveries about {about}, got {got} within "
                f"{self.env.sandbox.polling.within:g}s"
            ) from None
        self.deliveries = found
        return found

    def record_texts(self, texts: Iterable[str]) -> None:
        """Texts the leak scan must cover (exception messages, results a scenario made)."""
        self.texts.extend(texts)
