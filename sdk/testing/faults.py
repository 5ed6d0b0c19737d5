"""Fault injection for connector tests: make the next provider calls fail in each way that
matters for outcome certainty, and know which outcome each must produce.

``FaultInjector`` is an httpx transport placed where the network is (pass it as the runtime's
``transport``), wrapping the real network transport (``sdk.http.network_transport``) or any
other (a cassette's): the SDK's egress transport, outcome mapping and resilience all run for
real above it. Faults are queued and consumed one per request; ``None`` lets a request through::

    injector = FaultInjector(network_transport(test_mode=True), [Fault.reset_after_write()])
    runtime = ConnectorRuntime(connector, settings=..., transport=injector)
    result = await runtime.invoke("authorize", request, ...)
    assert result.outcome is injector.history[0].expected_outcome   # unknown

Faults that happen "after the request was written" forward it first, so the provider (or
simulator) really acts: exactly the case where retrying blindly would charge twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from normalization import Outcome

__all__ = ["Fault", "FaultInjector", "InjectedFault"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure; build with the class methods."""

    kind: str
    expected_outcome: Outcome
    status_code: int = 0
    retry_after: str | None = None
    seconds: float = 0.0

    @classmethod
    def refused(cls) -> Fault:
        return cls("refused", Outcome.NOT_SENT)

    @classmethod
    def connect_timeout(cls) -> Fault:
        return cls("connect_timeout", Outcome.NOT_SENT)

    @classmethod
    def reset_before_write(cls) -> Fault:
        return cls("reset_before_write", Outcome.NOT_SENT)

    @classmethod
    def reset_after_write(cls) -> Fault:
        return cls("reset_after_write", Outcome.UNKNOWN)

    @classmethod
    def read_timeout(cls) -> Fault:
        return cls("read_timeout", Outcome.UNKNOWN)

    @classmethod
    def malformed_reply(cls) -> Fault:
        return cls("malformed_reply", Outcome.UNKNOWN)

    @classmethod
    def server_error(cls, status_code: int = 503, retry_after: str | None = None) -> Fault:
        return cls("status", Outcome.UNKNOWN, status_code=status_code, retry_after=retry_after)

    @classmethod
    def throttled(cls, retry_after: str | None = "1") -> Fault:
        return cls("status", Outcome.NOT_SENT, status_code=429, retry_after=retry_after)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally, late (past a deadline this is ``unknown``)."""
        return cls("delay", Outcome.UNKNOWN, seconds=seconds)


@dataclass(frozen=True, slots=True)
class InjectedFault:
    fault: Fault
    method: str
    url: str

    @property
    def expected_outcome(self) -> Outcome:
        return self.fault.expected_outcome


class FaultInjector(httpx.AsyncBaseTransport):
    """See the module docstring."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, faults: Iterable[Fault | None] = ()
    ) -> None:
        self._inner = inner
        self._queue: list[Fault | None] = list(faults)
        self.history: list[InjectedFault] = []
        self.forwarded = 0

    def push(self, *faults: Fault | None) -> None:
        self._queue.extend(faults)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def _forward(self, request: httpx.Request) -> httpx.Response:
        self.forwarded += 1
        return await self._inner.handle_async_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self._queue.pop(0) if self._queue else None
        if fault is None:
            return await self._forward(request)
        self.history.append(InjectedFault(fault, request.method, str(request.url)))
        kind = fault.kind
        if kind in ("refused", "reset_before_write"):
            raise httpx.ConnectError(f"Injected fault: {kind}.", request=request)
        if kind == "connect_timeout":
            raise httpx.ConnectTimeout("Injected fault: connect timeout.", request=request)
        if kind == "status":
            headers = {"retry-after": fault.retry_after} if fault.retry_after else {}
            return httpx.Response(fault.status_code, headers=headers, json={"error": "injected"})
        if kind == "delay":
            await asyncio.sleep(fault.seconds)
            return await self._forward(request)
        response = await self._forward(request)  # the provider acts ...
        await response.aread()
        await response.aclose()
        if kind == "reset_after_write":  # ... and the reply is lost
            raise httpx.ReadError("Injected fault: connection reset by peer.", request=request)
        if kind == "read_timeout":
            raise httpx.ReadTimeout("Injected fault: read timeout.", request=request)
        return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>")
