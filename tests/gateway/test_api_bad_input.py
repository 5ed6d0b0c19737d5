"""A demanding merchant's bad input, route by route: every refusal is problem+json with a stable,
documented ``code`` and the right status, never a 500, never card data, and nothing half-written.

Runs on both stores (``database_url``): PostgreSQL refuses NUL in text, which once turned a NUL
in a reference, a return URL, a payment id or a search parameter into a 500 there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from gateway.client import Payment, TesseraAPIError, TesseraClient
from gateway.openapi import build_openapi, problem_codes
from gateway.problems import PROBLEM_CONTENT_TYPE

from .conftest import Gateway, MakeGateway, sandbox_connector

PAN = "4242424242424242"
CARD = {"number": PAN, "exp_month": 12, "exp_year": 2031, "cvc": "123"}
CODES = problem_codes()


@pytest.fixture
async def gw(make_gateway: MakeGateway, sandbox: Any, database_url: str | None) -> Gateway:
    return await make_gateway(
        database_url=database_url, connectors={"sandbox": sandbox_connector(sandbox)}
    )


async def _problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The problem body, after checking it is one: status, documented code, no card data."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM_CONTENT_TYPE, text
    assert PAN not in text and "Traceback" not in text
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status and body["code"] == code, body
    assert code in CODES[status], f"{code} is not documented for {status}"
    assert body["title"] != "Error", "every status the gateway answers has its own title"
    return body


async def _token(gw: Gateway) -> str:
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


def _payment(token: str, **extra: Any) -> dict[str, Any]:
    return {
        "amount": {"value": 1000, "currency": "EUR"},
        "payment_method": {"type": "card", "token": token},
        "reference": "bad-input",
        **extra,
    }


async def _references(gw: Gateway) -> list[dict[str, Any]]:
    resp = await gw.client.get("/v1/payments?reference=bad-input", headers=gw.auth)
    assert resp.status == 200
    return list((await resp.json())["data"])


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"reference": "order\x0042"}, "reference"),
        ({"reference": "order\n42"}, "reference"),
        ({"return_url": "https://shop.test/\x00"}, "return_url"),
        ({"return_url": "https://shop.test/\r\nSet-Cookie: x"}, "return_url"),
        ({"description": "gift\x00"}, "description"),
        ({"metadata": {"order\x01": "42"}}, "metadata"),
        ({"metadata": {"order": "4\x002"}}, "metadata"),
    ],
)
async def test_control_characters_in_stored_text_are_422_and_nothing_is_written(
    gw: Gateway, extra: dict[str, Any], field: str
) -> None:
    token = await _token(gw)
    body = {**_payment(token), **extra}
    resp = await gw.client.post(
        "/v1/payments", json=body, headers={**gw.auth, "Idempotency-Key": "ctl-1"}
    )
    problem = await _problem(resp, 422, "invalid_request")
    assert [e["field"] for e in problem["errors"]] == [field]
    # Nothing written, and the key was not spent: the corrected request runs under it.
    assert await _references(gw) == []
    resp = await gw.client.post(
        "/v1/payments", json=_payment(token), headers={**gw.auth, "Idempotency-Key": "ctl-1"}
    )
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("action", ["void", "sync"])
async def test_void_and_sync_refuse_a_body_with_fields_and_take_none_or_an_empty_one(
    gw: Gateway, action: str
) -> None:
    """``{"amount": ...}`` to void is not silently taken for a whole void (nor garbage for no
    body): 422 / 400 and the payment unchanged. No body, or ``{}``, is the operation."""
    resp = await gw.client.post("/v1/payments", json=_payment(await _token(gw)), headers=gw.auth)
    pay = await resp.json()
    path = f"/v1/payments/{pay['id']}/{action}"
    amount = {"amount": {"value": 100, "currency": "EUR"}}
    problem = await _problem(
        await gw.client.post(path, json=amount, headers=gw.auth), 422, "invalid_request"
    )
    assert [e["field"] for e in problem["errors"]] == ["amount"], problem
    garbage = await gw.client.post(
        path, data=b"garbage", headers={**gw.auth, "Content-Type": "application/json"}
    )
    await _problem(garbage, 400, "malformed_json")
    after = await (await gw.client.get(f"/v1/payments/{pay['id']}", headers=gw.auth)).json()
    assert after["status"] == "authorized", after
    for body in ({},) if action == "void" else ({}, None):  # a second void would be a 409
        resp = await gw.client.post(path, json=body, headers=gw.auth)
        assert resp.status == 200, await resp.text()
    expected = "voided" if action == "void" else "authorized"
    assert (await resp.json())["status"] == expected


async def test_a_declined_follow_up_carries_its_request_id(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    resp = await gw.client.post("/v1/payments", json=_payment(await _token(gw)), headers=gw.auth)
    pay = await resp.json()
    # The provider forgets the authorization: the capture is declined.
    async with (
        aiohttp.ClientSession() as session,
        session.post(sandbox.make_url("/__sandbox/reset")) as reset,
    ):
        assert reset.status == 200
    resp = await gw.client.post(f"/v1/payments/{pay['id']}/capture", headers=gw.auth)
    problem = await _problem(resp, 402, "operation_declined")
    assert problem["request_id"] == resp.headers["X-Request-Id"], problem
    assert problem["payment"]["id"] == pay["id"] and problem["decline"] is not None, problem


async def test_newlines_stay_allowed_in_free_text(gw: Gateway) -> None:
    token = await _token(gw)
    body = _payment(token, description="line one\nline two\t!", metadata={"note": "a\nb"})
    resp = await gw.client.post("/v1/payments", json=body, headers=gw.auth)
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("value", ["true", "false", 1, 0, None])
async def test_capture_must_be_a_json_boolean(gw: Gateway, value: Any) -> None:
    token = await _token(gw)
    resp = await gw.client.post(
        "/v1/payments", json=_payment(token, capture=value), headers=gw.auth
    )
    problem = await _problem(resp, 422, "invalid_request")
    assert problem["errors"][0]["field"] == "capture"
    assert await _references(gw) == []


@pytest.mark.parametrize(
    "payment_id", ["%00", "pay_%00x", "pay_%01", "%C2%85", "p" * 101], ids=repr
)
async def test_impossible_payment_ids_are_404_on_every_route(gw: Gateway, payment_id: str) -> None:
    resp = await gw.client.get(f"/v1/payments/{payment_id}", headers=gw.auth)
    await _problem(resp, 404, "payment_not_found")
    for action in ("capture", "void", "refunds", "sync", "complete"):
        headers = {**gw.auth, "Idempotency-Key": f"id-{action}"}
        resp = await gw.client.post(f"/v1/payments/{payment_id}/{action}", headers=headers)
        await _problem(resp, 404, "payment_not_found")


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/payments?reference=a%00b", "reference_required"),
        ("/v1/payments?reference=" + "r" * 129, "reference_required"),
        ("/v1/tokens?fingerprint=fp_%00", "fingerprint_required"),
        ("/v1/tokens?fingerprint=" + "f" * 201, "fingerprint_required"),
    ],
)
async def test_unsearchable_query_values_are_400(gw: Gateway, path: str, code: str) -> None:
    problem = await _problem(await gw.client.get(path, headers=gw.auth), 400, code)
    assert "characters" in problem["detail"]


@pytest.mark.parametrize(
    ("path", "needs_payment"),
    [
        ("/v1/tokens", False),
        ("/v1/tokens/batch", False),
        ("/v1/payments", False),
        ("/v1/payments/{id}/capture", True),
        ("/v1/payments/{id}/refunds", True),
        ("/v1/payments/{id}/complete", True),
    ],
)
@pytest.mark.parametrize("raw", [b"[]", b'"card"', b"null", b"1"], ids=bytes.decode)
async def test_a_body_that_is_not_an_object_says_so_without_internal_names(
    gw: Gateway, path: str, needs_payment: bool, raw: bytes
) -> None:
    if needs_payment:
        resp = await gw.client.post(
            "/v1/payments", json=_payment(await _token(gw)), headers=gw.auth
        )
        path = path.format(id=(await resp.json())["id"])
    headers = {**gw.auth, "Content-Type": "application/json"}
    resp = await gw.client.post(path, data=raw, headers=headers)
    problem = await _problem(resp, 422, "invalid_request")
    assert problem["detail"] == "Input should be a JSON object."
    assert "Request" not in json.dumps(problem)  # no model class names


async def test_another_merchants_payment_cannot_be_touched(gw: Gateway) -> None:
    resp = await gw.client.post("/v1/payments", json=_payment(await _token(gw)), headers=gw.auth)
    payment = await resp.json()
    _, other_key = await gw.add_merchant("mallory")
    other = {"Authorization": f"Bearer {other_key}"}
    await _problem(
        await gw.client.get(f"/v1/payments/{payment['id']}", headers=other),
        404,
        "payment_not_found",
    )
    for action in ("capture", "void", "refunds", "sync", "complete"):
        resp = await gw.client.post(f"/v1/payments/{payment['id']}/{action}", headers=other)
        await _problem(resp, 404, "payment_not_found")
    resp = await gw.client.get(f"/v1/payments/{payment['id']}", headers=gw.auth)
    after = await resp.json()
    assert after["status"] == "authorized" and after["captured"]["value"] == 0
    assert [a["operation"] for a in after["attempts"]] == ["authorize"]


async def _stalled_body() -> AsyncIterator[bytes]:
    yield b'{"card": '
    await asyncio.sleep(5)
    yield b"{}}"


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/webhooks/sandbox"])
async def test_a_body_that_stalls_is_408_request_timeout(
    make_gateway: MakeGateway, sandbox: Any, path: str
) -> None:
    gw = await make_gateway(
        server={"read_timeout": 0.3}, connectors={"sandbox": sandbox_connector(sandbox)}
    )
    headers = {**gw.auth, "Content-Type": "application/json"}
    async with asyncio.timeout(4):  # the webhook read had no deadline at all
        resp = await gw.client.post(path, data=_stalled_body(), headers=headers)
        problem = await _problem(resp, 408, "request_timeout")
    assert problem["title"] == "Request Timeout"


async def test_a_chunked_webhook_over_the_limit_is_413(gw: Gateway) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (64 * 1024)  # 320 KiB, no Content-Length

    resp = await gw.client.post(
        "/v1/webhooks/sandbox", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await _problem(resp, 413, "payload_too_large")


async def test_a_webhook_with_a_huge_timestamp_is_400(gw: Gateway) -> None:
    """Anyone may post to the webhook route: a signature whose timestamp has thousands of
    digits is refused like any bad signature (``int()`` raised ValueError: a 500)."""
    resp = await gw.client.post(
        "/v1/webhooks/sandbox",
        data=b"{}",
        headers={"Content-Type": "application/json", "Sandbox-Signature": f"t={'1' * 5000},v1=ab"},
    )
    await _problem(resp, 400, "webhook_verification_failed")


def test_the_document_lists_what_the_webhook_route_answers() -> None:
    doc = build_openapi()
    responses = doc["paths"]["/v1/webhooks/{connector}"]["post"]["responses"]
    assert {"400", "404", "408", "409", "413"} <= set(responses)
    for action in ("void", "sync"):
        described = doc["paths"][f"/v1/payments/{{payment_id}}/{action}"]["post"]["description"]
        assert "application/json" in described


def test_the_client_reports_a_declined_follow_up_with_its_payment_and_fields() -> None:
    payment = {
        "id": "pay_" + "d" * 24,
        "status": "authorized",
        "amount": {"value": 5, "currency": "EUR"},
    }
    declined = {
        "type": "https://tessera.dev/problems/operation_declined",
        "title": "Payment Required",
        "status": 402,
        "code": "operation_declined",
        "detail": "The provider declined the capture.",
        "decline": {"code": "do_not_honor", "message": "Declined.", "provider_code": "05"},
        "payment": payment,
    }
    invalid = {
        "type": "https://tessera.dev/problems/invalid_request",
        "title": "Unprocessable Content",
        "status": 422,
        "code": "invalid_request",
        "detail": "capture: Input should be a valid boolean",
        "errors": [{"field": "capture", "code": "bool_type", "detail": "Input should be ..."}],
    }

    def answer(request: httpx.Request) -> httpx.Response:
        body = declined if request.url.path.endswith("/capture") else invalid
        headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
        return httpx.Response(body["status"], json=body, headers=headers)  # type: ignore[arg-type]

    with TesseraClient(
        "https://tessera.test", "tsk_x", transport=httpx.MockTransport(answer)
    ) as client:
        with pytest.raises(TesseraAPIError) as caught:
            client.capture(payment["id"])  # type: ignore[arg-type]
        assert caught.value.status == 402 and caught.value.code == "operation_declined"
        assert isinstance(caught.value.payment, Payment)
        assert caught.value.payment.id == payment["id"]
        assert caught.value.decline is not None and caught.value.decline.code == "do_not_honor"
        with pytest.raises(TesseraAPIError) as caught:
            client.create_payment(5, "EUR", token="tok_x")
        assert caught.value.payment is None and caught.value.decline is None
        assert caught.value.errors == [
            {"field": "capture", "code": "bool_type", "detail": "Input should be ..."}
        ]


@pytest.mark.parametrize(
    ("method", "fields"),
    [
        (
            {
                "type": "card",
                "card": {"number": "4242424242424241", "exp_month": 12, "exp_year": 2031},
            },
            ["payment_method.card.number"],
        ),
        ({"type": "card"}, ["payment_method"]),
        (
            {"type": "bank_account", "holder_name": "A B", "iban": "DE00", "country": "DE"},
            ["payment_method.iban"],
        ),
    ],
)
async def test_error_fields_name_what_the_client_sent_not_the_union_tag(
    gw: Gateway, method: dict[str, Any], fields: list[str]
) -> None:
    # pydantic's location holds the chosen tag (payment_method.card.card.number), a path the
    # client never sent.
    body = {"amount": {"value": 100, "currency": "EUR"}, "payment_method": method}
    resp = await gw.client.post("/v1/payments", json=body, headers=gw.auth)
    assert resp.status == 422, await resp.text()
    problem = await resp.json()
    assert [e["field"] for e in problem["errors"]] == fields, problem


@pytest.mark.parametrize(
    "extra",
    [
        {"reference": "5555 5555 5555 4444 12/30"},
        {"reference": "\uff14\uff12\uff14\uff12" * 4},
        {"reference": "5105.1051.0510.5100"},
        {"metadata": {"card": "4000 0566 5566 5556 1"}},
        {"metadata": {"n": "3782/822463/10005"}},
        {"return_url": "https://shop.example/r?c=4000.0566.5566.5556"},
        {"return_url": "https://shop.example/r?c=4000%200566%205566%205556"},
        {"return_url": "https://shop.example/r?c=4000+0566+5566+5556"},
    ],
)
async def test_a_card_number_in_free_text_is_refused_however_written(
    gw: Gateway, extra: dict[str, Any]
) -> None:
    """A security review stored these: a PAN with its expiry or CVC after it, full-width,
    dotted, slashed, URL-encoded. Refused, echoed nowhere, nothing written."""
    token = await _token(gw)
    resp = await gw.client.post(
        "/v1/payments",
        json={**_payment(token), **extra},
        headers={**gw.auth, "Idempotency-Key": "pan-1"},
    )
    text = await resp.text()
    assert resp.status in (400, 422), text
    body = json.loads(text)
    assert body["code"] in ("invalid_request", "validation_error"), body
    for digits in ("5555554444", "0566556655", "1051051", "8224631", "42424242"):
        assert digits not in text.replace("\uff14\uff12", "42")
    assert await _references(gw) == []
