"""``CallContext.send`` builds its requests without ``AsyncClient.build_request`` (a fraction of
the CPU): the result must be the request httpx would have built, header for header, byte for
byte; where it cannot know that, it defers to httpx. The ``Content-Length`` rule it shares with
the egress transport's detokenized copy is httpx's too."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from normalization import InvalidAmountError, Money
from sdk import CallContext, Credentials, Deadline, HostPolicy, build_http_client
from sdk.context import _direct_request
from sdk.egress import content_length_header
from tests.sdk.demo_connector import MANIFEST as DEMO_MANIFEST

URL = httpx.URL("https://api.demo-acquirer.example:8443/v1/payments/pay_1?expand=x")
TIMEOUT = httpx.Timeout(4.2, connect=1.5)

CASES: list[tuple[str, dict[str, Any]]] = [
    ("POST", {"json": {"amount": 1050, "name": "Zoë", "ok": True, "none": None, "f": 1.5}}),
    ("POST", {"json": [1, 2, {"a": "b"}], "headers": {"Content-Type": "application/vnd+json"}}),
    ("POST", {"content": b"<xml/>", "headers": {"content-type": "application/xml"}}),
    ("POST", {"content": "text é"}),
    ("POST", {"content": b""}),
    ("POST", {}),
    ("PUT", {"json": {}}),
    ("PATCH", {}),
    ("GET", {}),
    ("DELETE", {"headers": {"Idempotency-Key": "k-1"}}),
    ("get", {"headers": {"accept": "application/json", "USER-AGENT": "custom/1"}}),
    ("POST", {"json": {"a": 1}, "headers": {"Accept": "a/b", "accept": "c/d"}}),
    (
        "POST",
        {
            "json": {"a": 1},
            "headers": {"Authorization": "Bearer x", "X-Request-Id": "r", "Accept": "*/*"},
        },
    ),
]


@pytest.mark.parametrize(("method", "kwargs"), CASES)
async def test_direct_request_is_what_httpx_builds(method: str, kwargs: dict[str, Any]) -> None:
    http = build_http_client(HostPolicy(frozenset({"api.demo-acquirer.example"})))
    try:
        expected = http.build_request(
            method, URL, timeout=TIMEOUT, extensions={"scope": 1}, **kwargs
        )
        built = _direct_request(
            http,
            method,
            URL,
            kwargs.get("json"),
            kwargs.get("content"),
            kwargs.get("headers", {}),
            TIMEOUT,
        )
    finally:
        await http.aclose()
    assert built is not None
    built.extensions["scope"] = 1
    assert built.method == expected.method
    assert built.url == expected.url
    assert built.headers.raw == expected.headers.raw
    assert built.content == expected.content
    assert built.extensions == expected.extensions


@pytest.mark.parametrize(
    "headers", [{"Host": "elsewhere.example"}, {"content-length": "5"}, {"X-Number": 5}]
)
async def test_unusual_requests_are_left_to_httpx(headers: dict[str, Any]) -> None:
    http = build_http_client(HostPolicy(frozenset({"api.demo-acquirer.example"})))
    try:
        assert _direct_request(http, "POST", URL, {"a": 1}, None, headers, TIMEOUT) is None
        assert _direct_request(http, "POST", URL, None, iter([b"a"]), {}, TIMEOUT) is None
    finally:
        await http.aclose()


async def test_a_client_with_default_params_is_left_to_httpx() -> None:
    async with httpx.AsyncClient(params={"key": "v"}) as http:
        assert _direct_request(http, "GET", URL, None, None, {}, TIMEOUT) is None


@pytest.mark.parametrize(
    "method", ["GET", "HEAD", "DELETE", "OPTIONS", "POST", "PUT", "PATCH", "put"]
)
@pytest.mark.parametrize("body", [b"", b"x", b"{}" * 600])
def test_content_length_is_what_httpx_frames(method: str, body: bytes) -> None:
    built = httpx.Request(method, URL, content=body)
    expected = [pair for pair in built.headers.raw if pair[0].lower() == b"content-length"]
    header = content_length_header(method, body)
    assert ([] if header is None else [header]) == expected


def test_amounts_go_out_and_come_back_in_the_providers_minor_units() -> None:
    """``currency_exponents`` in the manifest: HUF as whole forints (ISO 4217: 2 decimals), as
    some providers treat it; EUR without an override."""
    manifest = DEMO_MANIFEST.model_copy(
        update={"currencies": frozenset({"EUR", "HUF"}), "currency_exponents": {"HUF": 0}}
    )
    ctx = CallContext(
        manifest=manifest,
        operation="authorize",
        tenant="t",
        deadline=Deadline.after(5),
        http=httpx.AsyncClient(),
        base_url="https://sandbox.demo-acquirer.example",
        credentials=Credentials({"api_key": "k"}),
    )
    assert ctx.provider_minor(Money.of(100300, "HUF")) == 1003
    assert ctx.provider_money(1003, "HUF") == Money.of(100300, "HUF")
    assert ctx.provider_minor(Money.of(1050, "EUR")) == 1050  # no override: ISO 4217
    assert ctx.provider_money(1050, "EUR") == Money.of(1050, "EUR")
    with pytest.raises(InvalidAmountError):
        ctx.provider_minor(Money.of(100350, "HUF"))  # 1003.50: not an amount it can carry
