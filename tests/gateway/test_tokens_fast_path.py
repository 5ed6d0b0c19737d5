"""The tokenize hot path's shortcuts answer exactly as the code they stand in for.

- ``parse_tokenize_request`` vs ``TokenizeRequest.model_validate``: same card, format and TTL,
  or the same validation error (codes, locations, messages, no input);
- request ids: random UUIDs (version 4), a client's canonical UUID kept;
- ``GatewayMetrics.observe_request`` / ``count_tokens`` vs ``labels()``;
- ``gateway.tracing.current_tracer``: no tracer while OpenTelemetry has no provider, the
  provider's once it has one.
"""

from __future__ import annotations

import os
import types
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from pydantic import TypeAdapter, ValidationError

import gateway.tracing
from gateway.app import _new_request_id, _request_id
from gateway.observability import GatewayMetrics
from gateway.schemas import TokenizeRequest, parse_tokenize_request, validate_card
from normalization.methods import CardData

from .conftest import Gateway

VISA = "4242424242424242"
CARD = {"number": VISA, "exp_month": 12, "exp_year": 2031}
FULLWIDTH = {ord("0") + i: 0xFF10 + i for i in range(10)}


def _outcome(parse: Any, data: Any) -> tuple[str, Any]:
    try:
        card, token_format, ttl_seconds = parse(data)
    except ValidationError as exc:
        return "error", (exc.title, exc.errors(include_url=False))
    return "ok", (card, token_format, ttl_seconds)


def _model(data: Any) -> tuple[Any, str, int | None]:
    request = TokenizeRequest.model_validate(data)
    return request.card, request.format, request.ttl_seconds


def _assert_same(data: Any) -> None:
    fast, model = _outcome(parse_tokenize_request, data), _outcome(_model, data)
    assert fast == model
    if fast[0] == "ok":
        card = fast[1][0]
        assert type(card) is type(model[1][0])
        assert card.model_dump() == model[1][0].model_dump()
        assert card.number.reveal() == model[1][0].number.reveal()


EXAMPLES: list[Any] = [
    {"card": CARD},
    {"card": {**CARD, "cvc": "123", "holder_name": "Ada Lovelace"}},
    {"card": CARD, "format": "numeric"},
    {"card": CARD, "format": "opaque", "ttl_seconds": 60},
    {"card": CARD, "ttl_seconds": 10 * 366 * 86400},
    {"card": CARD, "ttl_seconds": None},
    {"card": CARD, "ttl_seconds": 59},
    {"card": CARD, "ttl_seconds": 10 * 366 * 86400 + 1},
    {"card": CARD, "ttl_seconds": 3600.0},
    {"card": CARD, "ttl_seconds": True},
    {"card": CARD, "ttl_seconds": "3600"},
    {"card": CARD, "format": None},
    {"card": CARD, "format": "OPAQUE"},
    {"card": CARD, "format": ["opaque"]},
    {"card": CARD, "extra": 1},
    {"card": CARD, VISA: 1},
    {"card": None},
    {"card": []},
    {"card": {}},
    {"card": {**CARD, "number": "4242424242424241"}},
    {"card": {**CARD, "number": VISA.translate(FULLWIDTH)}},
    {"card": {**CARD, "number": 4242424242424242}},
    {"card": {**CARD, "exp_month": 13}},
    {"card": {**CARD, "exp_month": "12"}},
    {"card": {**CARD, "exp_month": True}},
    {"card": {**CARD, "exp_year": 2001}},
    {"card": {**CARD, "exp_year": 2200}},
    {"card": {**CARD, "cvc": "12"}},
    {"card": {**CARD, "cvc": 123}},
    {"card": {**CARD, "holder_name": "x" * 201}},
    {"card": {**CARD, "holder_name": f"pay {VISA}"}},
    {"card": {**CARD, "unknown": VISA}},
    {"format": "opaque"},
    {},
    [],
    None,
    "card",
    VISA,
    [CARD],
]


@pytest.mark.parametrize("data", EXAMPLES, ids=range(len(EXAMPLES)))
def test_shortcut_answers_as_the_model(data: Any) -> None:
    _assert_same(data)


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([1, 12, 13, 2031, 1999, 60, 59, 3600, 10 * 366 * 86400]),
    st.floats(allow_nan=False),
    st.sampled_from(["opaque", "numeric", "123", "1234", VISA, "4242424242424241", "", "x" * 300]),
    st.text(max_size=20),
)
_CARD_FIELDS = st.sampled_from(["number", "exp_month", "exp_year", "cvc", "holder_name", "pan"])


@st.composite
def _requests(draw: st.DrawFn) -> Any:
    card: dict[str, Any] = dict(CARD)
    for _ in range(draw(st.integers(0, 3))):
        card[draw(_CARD_FIELDS)] = draw(_VALUES)
    for field in draw(st.sets(st.sampled_from(list(card)), max_size=2)):
        del card[field]
    data: dict[str, Any] = {"card": draw(st.one_of(st.just(card), _VALUES))}
    for key in draw(st.sets(st.sampled_from(["format", "ttl_seconds", "other"]), max_size=3)):
        data[key] = draw(_VALUES)
    if draw(st.booleans()) and "card" in data and len(data) > 1:
        del data["card"]
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_shortcut_answers_as_the_model_for_generated_requests(data: Any) -> None:
    _assert_same(data)


_CARD_ADAPTER = TypeAdapter(CardData)


def _card_outcome(validate: Any, value: Any) -> tuple[str, Any]:
    try:
        card = validate(value)
    except ValidationError as exc:
        return "error", (exc.title, exc.errors(include_url=False))
    return "ok", (type(card), card.model_dump(), card.number.reveal())


@pytest.mark.parametrize("data", EXAMPLES, ids=range(len(EXAMPLES)))
def test_card_shortcut_answers_as_the_model(data: Any) -> None:
    value = data.get("card") if isinstance(data, dict) else data
    assert _card_outcome(validate_card, value) == _card_outcome(
        _CARD_ADAPTER.validate_python, value
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_card_shortcut_answers_as_the_model_for_generated_cards(data: Any) -> None:
    value = data.get("card")
    fast = _card_outcome(validate_card, value)
    assert fast == _card_outcome(_CARD_ADAPTER.validate_python, value)
    if fast[0] == "error":
        assert VISA not in repr(fast[1])  # scrubbed: no input in the errors


def test_request_ids_are_random_uuid4() -> None:
    ids = {_new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert parsed.hex == value


def test_a_forked_child_never_hands_out_its_parents_drawn_request_ids() -> None:
    from gateway import app as app_module

    _new_request_id()  # the parent now holds ids drawn ahead
    drawn = set(app_module._fresh_ids)
    assert drawn
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, ",".join(_new_request_id() for _ in range(300)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_ids = pipe.read().decode().split(",")
    os.waitpid(pid, 0)
    assert len(child_ids) == 300
    assert not drawn & set(child_ids)


def test_request_id_keeps_a_canonical_uuid_only() -> None:
    offered = "0F8FAD5B-D9CB-469F-A165-70867728950E"
    assert _request_id(offered) == offered.lower()
    for bad in (None, "", "abc", VISA, offered + "0", "0f8fad5bd9cb469fa16570867728950e"):
        fresh = _request_id(bad)
        assert fresh != bad and uuid.UUID(fresh).version == 4


def _samples(metrics: GatewayMetrics) -> list[str]:
    """The exposition without ``*_created`` timestamps (they differ between registries)."""
    lines = generate_latest(metrics.registry).decode().splitlines()
    return [
        line
        for line in lines
        if line.startswith("#") or not line.split(" ")[0].split("{")[0].endswith("_created")
    ]


def test_metrics_shortcuts_match_labels() -> None:
    fast, slow = GatewayMetrics(), GatewayMetrics()
    for route, method, status, seconds in [
        ("/v1/tokens", "POST", 201, 0.002),
        ("/v1/tokens", "POST", 201, 0.03),
        ("/v1/tokens", "POST", 422, 0.001),
        ("/v1/tokens", "POST", 201, 0.004),  # the first (route, status) again: cached children
        ("/v1/tokens/{token_id}", "GET", 200, 0.7),
    ]:
        fast.observe_request(route, method, status, seconds)
        slow.latency.labels(route, method).observe(seconds)
        slow.requests.labels(route, method, str(status)).inc()
    fast.count_tokens("opaque")
    fast.count_tokens("numeric", 3)
    fast.count_tokens("opaque", 0)
    slow.tokens_created.labels("opaque").inc()
    slow.tokens_created.labels("numeric").inc(3)
    assert _samples(fast) == _samples(slow)


def test_metrics_cache_is_bounded() -> None:
    metrics = GatewayMetrics()
    for status in range(100, 600):
        for method in ("GET", "POST", "DELETE", "PUT"):
            metrics.observe_request("unmatched", method, status, 0.001)
    assert len(metrics._request_children) <= 512
    # Past the cache's bound, a combination is still counted (the cache only saves lookups).
    assert b'method="PUT",route="unmatched",status="599"' in generate_latest(metrics.registry)


class _Proxy:
    def get_tracer(self, name: str) -> Any:
        raise AssertionError("no tracer is asked of a proxy provider")


class _Provider:
    def __init__(self) -> None:
        self.asked = 0

    def get_tracer(self, name: str) -> str:
        self.asked += 1
        return f"tracer:{name}"


def test_current_tracer_follows_the_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = _Provider()
    fake = types.SimpleNamespace(
        _TRACER_PROVIDER=None, ProxyTracerProvider=_Proxy, get_tracer_provider=_Proxy
    )
    monkeypatch.setattr(gateway.tracing, "_trace", fake)
    monkeypatch.setattr(gateway.tracing, "_TRACER", None)
    monkeypatch.setattr(gateway.tracing, "_PROVIDER_TRACER", None)
    monkeypatch.setattr(gateway.tracing, "_ENV_NAMES_PROVIDER", False)
    assert gateway.tracing.current_tracer() is None
    with gateway.tracing.span("nothing") as current:
        assert current is None
    # A provider named in the environment is looked up (OpenTelemetry builds it on first use).
    monkeypatch.setattr(gateway.tracing, "_ENV_NAMES_PROVIDER", True)
    assert gateway.tracing.current_tracer() is None  # still the proxy
    fake._TRACER_PROVIDER = provider
    fake.get_tracer_provider = lambda: provider
    assert gateway.tracing.current_tracer() == "tracer:tessera.gateway"
    assert gateway.tracing.current_tracer() == "tracer:tessera.gateway"
    assert provider.asked == 1
    monkeypatch.setattr(gateway.tracing, "_TRACER", "test-tracer")
    assert gateway.tracing.current_tracer() == "test-tracer"


async def test_request_id_header_and_metrics_end_to_end(gateway: Gateway) -> None:
    for _ in range(3):
        resp = await gateway.client.post("/v1/tokens", json={"card": CARD}, headers=gateway.auth)
        assert resp.status == 201
        assert uuid.UUID(resp.headers["X-Request-Id"]).version == 4
    offered = str(uuid.uuid4())
    resp = await gateway.client.post(
        "/v1/tokens", json={"card": CARD}, headers={**gateway.auth, "X-Request-Id": offered}
    )
    assert resp.headers["X-Request-Id"] == offered
    resp = await gateway.client.post("/v1/tokens", json={"card": {}}, headers=gateway.auth)
    assert resp.status == 422
    problem = await resp.json()
    assert problem["request_id"] == resp.headers["X-Request-Id"]
    text = await (await gateway.client.get("/metrics")).text()
    assert 'tessera_http_requests_total{method="POST",route="/v1/tokens",status="201"} 4.0' in text
    assert 'tessera_http_requests_total{method="POST",route="/v1/tokens",status="422"} 1.0' in text
    assert 'tessera_tokens_created_total{format="opaque"} 4.0' in text


async def test_json_content_type_with_parameters_is_accepted(gateway: Gateway) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        resp = await gateway.client.post(
            "/v1/tokens",
            data=b'{"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}}',
            headers={**gateway.auth, "Content-Type": content_type},
        )
        assert resp.status == 201, content_type
