"""Fixtures for the sandbox connector tests: the simulator on a loopback port, a runtime built
the way the gateway builds one (fake revealer, test mode for http://127.0.0.1, the base URL
overridden), canary cards and magic cards behind tokens.

=================  ========  ====================================================================
fixture            scope     gives
=================  ========  ====================================================================
``sandbox``        function  a running ``Sandbox`` (``.url``, ``.state``, ``.bodies``, ``admin``)
``revealer``       function  a ``FakeTokenRevealer``
``transcript``     function  the ``TranscriptRecorder`` every runtime records into
``make_runtime``   function  ``make_runtime(base_url=None, **retry/breaker knobs)`` ->
                             ``ConnectorRuntime`` around ``SandboxConnector`` (closed after)
``runtime``        function  ``make_runtime()`` against ``sandbox``
``card``           function  ``card(number=None, cvc="123")`` -> token of that card (a canary
                             PAN by default)
=================  ========  ====================================================================
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from connectors.sandbox import SandboxConnector
from connectors.sandbox.server import STATE, SandboxState, create_app
from normalization import AuthorizeRequest, CardMethod, Money, PaymentResult
from sdk import (
    BreakerSettings,
    ConnectorMetrics,
    ConnectorRuntime,
    Credentials,
    Deadline,
    RetrySettings,
    RuntimeSettings,
    TranscriptRecorder,
)
from sdk.testing import FakeTokenRevealer, canary_pan

TENANT = "merchant_1"
API_KEY = "sk_sandbox_test_7Hq2xVb9"
WEBHOOK_SECRET = "whsec_test_Zp4Lm8Qa"


@dataclass
class Sandbox:
    """The simulator on loopback, with the raw bodies it received (PANs included: tests only)."""

    runner: web.AppRunner
    app: web.Application
    url: str
    bodies: list[tuple[str, str, bytes]] = field(default_factory=list)

    @property
    def state(self) -> SandboxState:
        return self.app[STATE]

    async def admin(self, method: str, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            response = await client.request(method, path)
        response.raise_for_status()
        return response.json()

    async def charges(self) -> list[dict[str, Any]]:
        return list((await self.admin("GET", "/__sandbox/charges"))["charges"])

    def api_requests(self) -> list[dict[str, Any]]:
        return list(self.state.requests)


async def start_sandbox(**options: Any) -> Sandbox:
    bodies: list[tuple[str, str, bytes]] = []
    options.setdefault("settle_delay", 0.2)
    options.setdefault("hang_seconds", 30.0)
    app = create_app(
        api_key=API_KEY,
        webhook_secret=WEBHOOK_SECRET,
        request_observer=lambda method, path, body: bodies.append((method, path, body)),
        **options,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return Sandbox(runner, app, f"http://127.0.0.1:{port}", bodies)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    server = await start_sandbox()
    yield server
    await server.runner.cleanup()


@pytest.fixture
def revealer() -> FakeTokenRevealer:
    return FakeTokenRevealer()


@pytest.fixture
def transcript() -> TranscriptRecorder:
    return TranscriptRecorder()


RuntimeFactory = Callable[..., ConnectorRuntime]


@pytest.fixture
async def make_runtime(
    sandbox: Sandbox, revealer: FakeTokenRevealer, transcript: TranscriptRecorder
) -> AsyncIterator[RuntimeFactory]:
    created: list[ConnectorRuntime] = []

    def factory(
        base_url: str | None = None, *, max_attempts: int = 3, fail_max: int = 50
    ) -> ConnectorRuntime:
        runtime = ConnectorRuntime(
            SandboxConnector(),
            settings=RuntimeSettings(
                base_url=base_url or sandbox.url,
                test_mode=True,
                breaker=BreakerSettings(fail_max=fail_max, reset_timeout=30.0),
                retry=RetrySettings(
                    max_attempts=max_attempts, initial_backoff=0.01, max_backoff=0.05
                ),
            ),
            revealer=revealer,
            credentials=Credentials({"api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET}),
            metrics=ConnectorMetrics(CollectorRegistry()),
            transcript=transcript,
        )
        created.append(runtime)
        return runtime

    yield factory
    for runtime in created:
        await runtime.aclose()


@pytest.fixture
def runtime(make_runtime: RuntimeFactory) -> ConnectorRuntime:
    return make_runtime()


CardFactory = Callable[..., str]


@pytest.fixture
def card(revealer: FakeTokenRevealer) -> CardFactory:
    def add(number: str | None = None, *, cvc: str | None = "123", exp_year: int = 2031) -> str:
        return revealer.add(TENANT, number or canary_pan(), cvc=cvc, exp_month=3, exp_year=exp_year)

    return add


def authorize_request(
    token: str,
    amount: int = 1050,
    currency: str = "EUR",
    *,
    capture: bool = False,
    key: str | None = "auth-key-1",
    reference: str = "order-42",
    return_url: str | None = None,
) -> AuthorizeRequest:
    return AuthorizeRequest(
        amount=Money(amount, currency),
        payment_method=CardMethod(token=token),
        capture=capture,
        reference=reference,
        idempotency_key=key,
        return_url=return_url,
    )


async def invoke(
    runtime: ConnectorRuntime, operation: str, request: Any, *, budget: float = 5.0
) -> PaymentResult:
    return await runtime.invoke(operation, request, deadline=Deadline.after(budget), tenant=TENANT)


async def eventually(check: Callable[[], Any], *, within: float = 3.0) -> None:
    """Poll ``check`` (sync or async, truthy when done) until it passes or ``within`` runs out."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > stop:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
