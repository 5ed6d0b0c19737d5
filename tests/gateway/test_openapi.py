"""``/openapi.json`` is a valid OpenAPI 3.1 document that says what the gateway really does.

- It validates (openapi-spec-validator) and is what ``build_openapi()`` builds.
- Its operations are exactly the router's routes, and its security claims hold (a keyless call
  is refused with 401 exactly where the document asks for a key).
- Real responses from a whole payment lifecycle against the sandbox provider (tokens, batch,
  authorize, partial and full capture, refunds, 3-D Secure, declines, an unknown outcome, a
  signed provider webhook, problems, health) validate against the document with openapi-core:
  status, content type, required headers and body schema. Response models refuse unknown
  fields, so a field a view adds without documenting it fails here.
- The constraints added to the pydantic schemas (``REFINEMENTS``) are enforced by the models.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate
from pydantic import ValidationError

from gateway.openapi import PUBLIC_OPERATIONS, REFINEMENTS, build_openapi, problem_codes
from gateway.problems import PROBLEM_CONTENT_TYPE
from gateway.schemas import AmountRequest, TokenizeRequest

from .conftest import Gateway, MakeGateway, sandbox_connector

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _document_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


class ResponseChecker:
    """Validates real aiohttp responses against the document (openapi-core)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        # problem+json is JSON; openapi-core only knows application/json by name.
        config = Config(extra_media_type_deserializers={PROBLEM_CONTENT_TYPE: json.loads})
        self.api = OpenAPI.from_dict(doc, config=config)
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(self, resp: ClientResponse, *, expect: int) -> Any:
        body = await resp.read()
        assert resp.status == expect, (resp.method, resp.url.path, resp.status, body)
        request = MockRequest(
            "http://gateway",
            resp.method,
            resp.url.path,
            args=dict(resp.url.query),
            headers=dict(resp.request_info.headers),
        )
        response = MockResponse(
            body,
            status_code=resp.status,
            headers=dict(resp.headers),
            content_type=resp.headers.get("Content-Type", ""),
        )
        self.api.validate_response(request, response)
        self.seen.add((resp.method, resp.url.path, resp.status))
        return json.loads(body) if body and resp.content_type.endswith("json") else body


@pytest.fixture
async def gw(make_gateway: MakeGateway, sandbox: Any) -> Gateway:
    # A short deadline so that the sandbox's "no reply" amount gives an unknown outcome fast.
    return await make_gateway(
        connectors={"sandbox": sandbox_connector(sandbox, deadline_seconds=1.0, retry_attempts=1)}
    )


@pytest.fixture
def check() -> ResponseChecker:
    return ResponseChecker(build_openapi())


async def test_served_document_is_valid_openapi_31(gateway: Gateway) -> None:
    resp = await gateway.client.get("/openapi.json")  # no API key needed
    assert resp.status == 200 and resp.content_type == "application/json"
    doc = await resp.json()
    validate(doc)  # raises on an invalid document
    assert doc["openapi"].startswith("3.1")
    assert doc == json.loads(json.dumps(build_openapi()))


async def test_every_route_is_documented_and_every_operation_is_routed(gateway: Gateway) -> None:
    routed: set[tuple[str, str]] = set()
    for resource in gateway.client.app.router.resources():  # type: ignore[union-attr]
        for route in resource:
            routed.add((route.method, resource.canonical))
    # aiohttp adds HEAD to every GET route; HEAD is implied by GET in HTTP, not documented.
    routed -= {("HEAD", path) for method, path in routed if ("GET", path) in routed}
    assert routed == _document_operations(build_openapi())


async def test_security_claims_hold(gateway: Gateway) -> None:
    """Keyless calls: 401 problem on every operation the document protects, never on a public
    one. (Bodies are empty: authentication comes before any validation.)"""
    doc = build_openapi()
    assert doc["security"] == [{"merchantKey": []}]
    for method, path in sorted(_document_operations(doc)):
        operation = doc["paths"][path][method.lower()]
        public = (method, path) in PUBLIC_OPERATIONS
        assert (operation.get("security") == []) is public, (method, path)
        url = path.format(token_id="tok_x", payment_id="pay_x", connector="nosuch")
        resp = await gateway.client.request(method, url)
        if public:
            assert resp.status != 401, (method, path)
        else:
            assert resp.status == 401, (method, path, resp.status)
            assert resp.content_type == PROBLEM_CONTENT_TYPE
            assert (await resp.json())["code"] == "unauthorized"
            assert "401" in operation["responses"]


def test_refinements_are_what_the_models_enforce() -> None:
    """Each constraint added to the published schemas holds for the model: the bounds pass,
    one past them fails."""
    assert set(REFINEMENTS) == {
        ("CardData", "exp_month"),
        ("CardData", "exp_year"),
        ("Money", "value"),
        ("Money", "currency"),
    }

    def card(**changes: Any) -> dict[str, Any]:
        return {"card": {**CARD, **changes}}

    TokenizeRequest.model_validate(card(exp_month=1, exp_year=date.today().year + 1))
    TokenizeRequest.model_validate(card(exp_month=12))
    for bad in (card(exp_month=0), card(exp_month=13), card(exp_year=999), card(exp_year=10000)):
        with pytest.raises(ValidationError):
            TokenizeRequest.model_validate(bad)
    maximum = REFINEMENTS[("Money", "value")]["maximum"]
    for value in (1, maximum):  # a request's amount is positive (its field says so)
        AmountRequest.model_validate({"amount": {"value": value, "currency": "EUR"}})
    for bad_money in ({"value": 0}, {"value": -1}, {"value": maximum + 1}, {"currency": "eur"}):
        with pytest.raises(ValidationError):
            AmountRequest.model_validate({"amount": {"value": 1, "currency": "EUR", **bad_money}})


def test_problem_responses_list_their_codes() -> None:
    doc = build_openapi()
    responses = doc["components"]["responses"]
    for status, codes in problem_codes().items():
        response = responses[f"Problem{status}"]
        content = response["content"][PROBLEM_CONTENT_TYPE]["schema"]
        if status < 500:
            assert content["allOf"][1]["properties"]["code"]["enum"] == codes
        for code in codes:
            assert f"`{code}`" in response["description"]
    # The codes the operating guide promises are all documented under their status.
    for status, code in [
        (400, "malformed_json"),
        (401, "unauthorized"),
        (404, "token_not_found"),
        (404, "payment_not_found"),
        (409, "invalid_state_transition"),
        (413, "batch_too_large"),
        (415, "unsupported_media_type"),
        (422, "invalid_card_number"),
        (422, "idempotency_key_reused"),
        (429, "too_many_auth_failures"),
        (503, "vault_unavailable"),
    ]:
        assert code in problem_codes()[status]
    # Every POST that creates or moves money takes an Idempotency-Key.
    for path, item in doc["paths"].items():
        if path.startswith("/v1/payments") and "post" in item:
            refs = [p.get("$ref") for p in item["post"]["parameters"]]
            assert "#/components/parameters/IdempotencyKey" in refs, path


async def _sandbox_events(sandbox: Any) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(sandbox.make_url("/__sandbox/events")) as resp,
    ):
        events: list[dict[str, Any]] = (await resp.json())["events"]
        return events


async def test_token_responses_match_the_document(gw: Gateway, check: ResponseChecker) -> None:
    c, auth = gw.client, gw.auth
    token = await check(await c.post("/v1/tokens", json={"card": CARD}, headers=auth), expect=201)
    await check(await c.get(f"/v1/tokens/{token['id']}", headers=auth), expect=200)
    found = await check(
        await c.get("/v1/tokens", params={"fingerprint": token["fingerprint"]}, headers=auth),
        expect=200,
    )
    assert [t["id"] for t in found["data"]] == [token["id"]]
    batch = {"cards": [CARD, {**CARD, "number": "4242424242424241"}, {"number": 7}]}
    results = await check(await c.post("/v1/tokens/batch", json=batch, headers=auth), expect=200)
    assert [("id" in r, "error" in r) for r in results["results"]] == [
        (True, False),
        (False, True),
        (False, True),
    ]
    await check(await c.delete(f"/v1/tokens/{token['id']}", headers=auth), expect=204)
    problem = await check(await c.get(f"/v1/tokens/{token['id']}", headers=auth), expect=404)
    assert problem["code"] == "token_not_found"
    bad = {"card": {**CARD, "number": "4242424242424241"}, "surprise": 1}
    problem = await check(await c.post("/v1/tokens", json=bad, headers=auth), expect=422)
    assert problem["errors"]
    problem = await check(
        await c.post("/v1/tokens", data=b"{", headers={**auth, "Content-Type": "application/json"}),
        expect=400,
    )
    assert problem["code"] == "malformed_json"
    problem = await check(
        await c.post("/v1/tokens", data=b"x", headers={**auth, "Content-Type": "text/plain"}),
        expect=415,
    )
    await check(await c.get("/v1/tokens", headers=auth), expect=400)
    await check(await c.get("/v1/tokens/tok_x"), expect=401)


async def test_payment_lifecycle_responses_match_the_document(
    gw: Gateway, sandbox: Any, check: ResponseChecker
) -> None:
    c, auth = gw.client, gw.auth

    async def post(path: str, body: Any = None, *, expect: int, key: str | None = None) -> Any:
        headers = {**auth, **({"Idempotency-Key": key} if key else {})}
        return await check(await c.post(path, json=body, headers=headers), expect=expect)

    token = (await post("/v1/tokens", {"card": CARD}, expect=201))["id"]
    payment = {
        "amount": {"value": 100_000, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token},
        "reference": "order-openapi",
        "metadata": {"cart": "42"},
    }
    pay = await post("/v1/payments", payment, expect=201, key="create-1")
    assert pay["status"] == "authorized"
    pid = pay["id"]
    replay = await c.post(
        "/v1/payments", json=payment, headers={**auth, "Idempotency-Key": "create-1"}
    )
    await check(replay, expect=201)
    assert replay.headers["Idempotent-Replayed"] == "true"
    problem = await post("/v1/payments", {**payment, "reference": "x"}, expect=422, key="create-1")
    assert problem["code"] == "idempotency_key_reused"

    pay = await post(f"/v1/payments/{pid}/capture", {"amount": {"value": 400, "currency": "EUR"}}, expect=200)  # fmt: skip
    assert pay["status"] == "partially_captured"
    # The sandbox acts on this amount, then never answers: the outcome is unknown → 202.
    pay = await post(f"/v1/payments/{pid}/capture", {"amount": {"value": 99408, "currency": "EUR"}}, expect=202)  # fmt: skip
    assert pay["attempts"][-1]["outcome"] == "unknown"
    deadline = time.monotonic() + 10
    while pay["status"] == "unknown" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        pay = await post(f"/v1/payments/{pid}/sync", expect=200)
    assert pay["status"] == "partially_captured", pay
    # Until the capture's outcome is known, no other money-moving operation starts; a sync
    # that gets the provider's answer settles it.
    problem = await post(f"/v1/payments/{pid}/refunds", {"amount": {"value": 100, "currency": "EUR"}}, expect=409)  # fmt: skip
    assert problem["code"] == "operation_in_progress"
    pay = await post(f"/v1/payments/{pid}/sync", expect=200)
    assert pay["attempts"][-2]["outcome"] == "succeeded", pay["attempts"]
    pay = await post(f"/v1/payments/{pid}/refunds", {"amount": {"value": 100, "currency": "EUR"}}, expect=201)  # fmt: skip
    assert pay["refunds"][0]["status"] == "succeeded"
    problem = await post(f"/v1/payments/{pid}/refunds", {"amount": {"value": 10**7, "currency": "EUR"}}, expect=409)  # fmt: skip
    assert problem["code"] == "amount_exceeds_refundable"
    await check(await c.get(f"/v1/payments/{pid}", headers=auth), expect=200)
    listed = await check(
        await c.get("/v1/payments", params={"reference": "order-openapi"}, headers=auth), expect=200
    )
    assert [p["id"] for p in listed["data"]] == [pid]
    await check(await c.get("/v1/payments", headers=auth), expect=400)
    await check(await c.get("/v1/payments/pay_nosuch", headers=auth), expect=404)

    # A void, a decline, 3-D Secure (next_action) and its completion.
    second = await post("/v1/payments", {**payment, "reference": "order-void"}, expect=201)
    await post(f"/v1/payments/{second['id']}/void", expect=200)
    problem = await post(f"/v1/payments/{second['id']}/capture", expect=409)
    assert problem["code"] == "invalid_state_transition"
    declined_token = (await post("/v1/tokens", {"card": {**CARD, "number": "4000000000009995"}}, expect=201))["id"]  # fmt: skip
    declined = await post(
        "/v1/payments",
        {**payment, "payment_method": {"type": "card", "token": declined_token}},
        expect=201,
    )
    assert declined["status"] == "declined" and declined["decline"]["code"] == "insufficient_funds"
    tds_token = (await post("/v1/tokens", {"card": {**CARD, "number": "4000000000003220"}}, expect=201))["id"]  # fmt: skip
    tds = await post(
        "/v1/payments",
        {
            **payment,
            "payment_method": {"type": "card", "token": tds_token},
            "return_url": "https://shop.example/back",
        },
        expect=201,
    )
    assert tds["status"] == "requires_action" and tds["next_action"]["url"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            tds["next_action"]["url"], data={"outcome": "authenticated"}, allow_redirects=False
        ) as resp,
    ):
        assert resp.status in (302, 303)
    done = await post(f"/v1/payments/{tds['id']}/complete", {"parameters": {}}, expect=200)
    assert done["status"] == "authorized"

    # A provider webhook, as the sandbox signed it; then the same event again (deduplicated).
    event = (await _sandbox_events(sandbox))[-1]
    headers = {"Sandbox-Signature": event["signature"], "Content-Type": "application/json"}
    for applied in (None, 0):
        resp = await c.post("/v1/webhooks/sandbox", data=event["body"].encode(), headers=headers)
        receipt = await check(resp, expect=200)
        assert receipt["received"] == 1 and (applied is None or receipt["applied"] == applied)
    resp = await c.post("/v1/webhooks/sandbox", data=event["body"].encode(), headers={"Sandbox-Signature": "t=1,v1=00"})  # fmt: skip
    assert (await check(resp, expect=400))["code"] == "webhook_verification_failed"
    resp = await c.post("/v1/webhooks/nosuch", data=b"{}")
    assert (await check(resp, expect=404))["code"] == "unknown_connector"

    await check(await c.get("/healthz"), expect=200)
    await check(await c.get("/readyz"), expect=200)
    await check(await c.get("/metrics"), expect=200)
    await check(await c.get("/openapi.json"), expect=200)

    statuses = {status for _, _, status in check.seen}
    assert {200, 201, 202, 400, 404, 409, 422} <= statuses
