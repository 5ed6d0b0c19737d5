"""Fixtures for the SDK tests: loopback providers, a fake revealer, runtimes on a private
metrics registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from normalization import AuthorizeRequest, CardMethod, Money
from sdk import (
    BreakerSettings,
    BulkheadSettings,
    CallContext,
    ConnectorMetrics,
    ConnectorRuntime,
    Credentials,
    Deadline,
    HostPolicy,
    RetrySettings,
    RuntimeSettings,
    TranscriptRecorder,
    build_http_client,
)
from sdk.testing import FakeTokenRevealer, canary_cvc, canary_pan
from tests.sdk.demo_connector import MANIFEST, DemoConnector
from tests.sdk.loopback import LoopbackProvider
from tests.sdk.pki import Pki, make_pki

TENANT = "merchant_1"
API_KEY = "sk_test_4f9Qz7VbX2"


@pytest.fixture
async def provider() -> AsyncIterator[LoopbackProvider]:
    server = await LoopbackProvider().start()
    yield server
    await server.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA (``tests.sdk.pki``), one per test module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def revealer() -> FakeTokenRevealer:
    return FakeTokenRevealer()


@pytest.fixture
def canary(revealer: FakeTokenRevealer) -> tuple[str, str, str]:
    """(token, pan, cvc) of a fresh canary card stored in the fake revealer."""
    pan, cvc = canary_pan(), canary_cvc()
    return revealer.add(TENANT, pan, cvc=cvc, exp_month=3, exp_year=2031), pan, cvc


@pytest.fixture
def metrics() -> ConnectorMetrics:
    return ConnectorMetrics(CollectorRegistry())


@pytest.fixture
def transcript() -> TranscriptRecorder:
    return TranscriptRecorder()


RuntimeFactory = Callable[..., ConnectorRuntime]


@pytest.fixture
async def make_runtime(
    revealer: FakeTokenRevealer, metrics: ConnectorMetrics, transcript: TranscriptRecorder
) -> AsyncIterator[RuntimeFactory]:
    created: list[ConnectorRuntime] = []

    def factory(
        base_url: str,
        *,
        connector: Any = None,
        fail_max: int = 3,
        reset_timeout: float = 30.0,
        max_concurrent: int = 16,
        max_queued: int = 16,
        max_attempts: int = 3,
        **settings: Any,
    ) -> ConnectorRuntime:
        runtime = ConnectorRuntime(
            connector or DemoConnector(),
            settings=RuntimeSettings(
                base_url=base_url,
                test_mode=settings.pop("test_mode", True),
                breaker=BreakerSettings(fail_max=fail_max, reset_timeout=reset_timeout),
                bulkhead=BulkheadSettings(max_concurrent=max_concurrent, max_queued=max_queued),
                retry=RetrySettings(
                    max_attempts=max_attempts, initial_backoff=0.01, max_backoff=0.05
                ),
                **settings,
            ),
            revealer=revealer,
            credentials=Credentials({"api_key": API_KEY}),
            metrics=metrics,
            transcript=transcript,
        )
        created.append(runtime)
        return runtime

    yield factory
    for runtime in created:
        await runtime.aclose()


def authorize_request(
    token: str, *, key: str = "idem-1", currency: str = "EUR"
) -> AuthorizeRequest:
    return AuthorizeRequest(
        amount=Money(1050, currency),
        payment_method=CardMethod(token=token),
        reference="order-42",
        idempotency_key=key,
    )


def metric(metrics: ConnectorMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The SDK's provider client, allowed to reach loopback providers."""
    http = build_http_client(HostPolicy(frozenset({"127.0.0.1"}), test_mode=True))
    yield http
    await http.aclose()


def context(
    http: httpx.AsyncClient,
    base_url: str,
    revealer: FakeTokenRevealer | None,
    transcript: TranscriptRecorder | None = None,
) -> CallContext:
    """A demo connector's authorize call context, as the runtime would build it."""
    return CallContext(
        manifest=MANIFEST,
        operation="authorize",
        tenant=TENANT,
        deadline=Deadline.after(5),
        http=http,
        base_url=base_url,
        credentials=Credentials({"api_key": API_KEY}),
        revealer=revealer,
        transcript=transcript,
    )
