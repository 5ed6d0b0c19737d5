"""The merchant client: against a loopback aiohttp imitation of the Tessera API (its POSTs
guarded by the real ``IdempotencyStore``), and with respx for retries and key reuse."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
from aiohttp import web

from gateway.client import (
    AsyncTesseraClient,
    Payment,
    TesseraAPIError,
    TesseraClient,
    TesseraConnectionError,
)
from gateway.payments import HandlerResult, IdempotencyClaim, IdempotencyStore
from gateway.problems import HttpProblem, problem_response
from vault.database import open_database

API_KEY = "tsk_" + "t" * 40
BASE = "https://tessera.test"
CANARY_PAN, CANARY_CVC = "4000002760003184", "8317"


class FakeTessera:
    """The merchant API's contract, in memory, with real idempotency in front of every POST."""

    def __init__(self, guard: IdempotencyStore) -> None:
        self.guard = guard
        self.payments: dict[str, dict[str, Any]] = {}
        self.executions = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/tokens", self.guarded(self.tokenize))
        self.app.router.add_post("/v1/payments", self.guarded(self.create))
        self.app.router.add_post("/v1/payments/{id}/{action}", self.guarded(self.follow_up))
        self.app.router.add_get("/v1/payments/{id}", self.get)

    def guarded(
        self, handler: Callable[[web.Request, dict[str, Any]], Awaitable[tuple[int, Any]]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def view(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {API_KEY}":
                return problem_response(401, "unauthorized", "Missing or invalid API key.")
            body = await request.read()

            async def run(claim: IdempotencyClaim) -> HandlerResult:
                self.executions += 1
                try:
                    status, payload = await handler(request, orjson.loads(body or b"{}"))
                except HttpProblem as problem:
                    status, payload = (
                        problem.status,
                        {"code": problem.code, "detail": problem.detail},
                    )
                return HandlerResult(status, orjson.dumps(payload))

            try:
                answer = await self.guard.run(
                    "mer_test",
                    request.headers.get("Idempotency-Key"),
                    request.method,
                    request.path,
                    body,
                    run,
                )
            except HttpProblem as problem:
                return problem_response(
                    problem.status, problem.code, problem.detail, retry_after=problem.retry_after
                )
            content_type = "application/json" if answer.status < 400 else "application/problem+json"
            return web.Response(status=answer.status, body=answer.body, content_type=content_type)

        return view

    async def tokenize(self, request: web.Request, body: dict[str, Any]) -> tuple[int, Any]:
        card = body["card"]
        number = card["number"]
        return 201, {
            "id": "tok_" + secrets.token_hex(12),
            "fingerprint": "fp_v1_" + secrets.token_hex(8),
            "card": {
                "brand": "visa",
                "bin": number[:6],
                "last4": number[-4:],
                "exp_month": card["exp_month"],
                "exp_year": card["exp_year"],
            },
            "created_at": "2030-01-15T12:00:00+00:00",
            "expires_at": None,
        }

    async def create(self, request: web.Request, body: dict[str, Any]) -> tuple[int, Any]:
        amount = body["amount"]
        declined = amount["value"] == 402
        payment = {
            "id": "pay_" + secrets.token_hex(12),
            "status": "declined" if declined else ("captured" if body["capture"] else "authorized"),
            "connector": body.get("connector", "sandbox"),
            "amount": amount,
            "captured": amount["value"] if body["capture"] else 0,
            "refunded": 0,
            "reference": body.get("reference"),
            "next_action": None,
            "decline": {"code": "insufficient_funds", "message": "", "provider_code": "51"}
            if declined
            else None,
            "attempts": [{"id": "att_1", "connector": "sandbox", "outcome": "succeeded"}],
            "refunds": [],
        }
        self.payments[payment["id"]] = payment
        return 201, payment

    async def follow_up(self, request: web.Request, body: dict[str, Any]) -> tuple[int, Any]:
        payment = self.payments.get(request.match_info["id"])
        if payment is None:
            raise HttpProblem(404, "payment_not_found", "No such payment.")
        total = payment["amount"]["value"]
        action = request.match_info["action"]
        amount = body.get("amount", {}).get("value")
        if action == "capture":
            if payment["status"] not in ("authorized", "partially_captured"):
                raise HttpProblem(409, "invalid_state_transition", "Cannot capture that.")
            payment["captured"] += amount if amount is not None else total - payment["captured"]
            full = payment["captured"] == total
            payment["status"] = "captured" if full else "partially_captured"
        elif action == "void":
            payment["status"] = "voided"
        elif action == "refunds":
            value = amount if amount is not None else payment["captured"] - payment["refunded"]
            payment["refunded"] += value
            currency = payment["amount"]["currency"]
            refund = {
                "id": "re_" + secrets.token_hex(8),
                "amount": {"value": value, "currency": currency},
            }
            payment["refunds"].append(refund)
            payment["status"] = "refunded" if payment["refunded"] == total else "partially_refunded"
            return 201, refund  # the refund itself: the client reads the payment after it
        return 200, payment

    async def get(self, request: web.Request) -> web.Response:
        payment = self.payments.get(request.match_info["id"])
        if payment is None:
            return problem_response(404, "payment_not_found", "No such payment.")
        return web.json_response(payment)


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Awaitable[Any]], tmp_path: Path) -> Any:
    db = await open_database(f"sqlite:///{tmp_path / 'client.db'}")
    guard = IdempotencyStore(db, fingerprint_key=secrets.token_bytes(32))
    await guard.migrate()
    tessera = FakeTessera(guard)
    server = await aiohttp_server(tessera.app)
    tessera.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield tessera
    await db.close()


async def test_full_lifecycle_with_the_async_client(fake: Any) -> None:
    async with AsyncTesseraClient(fake.url, API_KEY) as client:
        token = await client.tokenize("4242424242424242", 12, 2031, "123")
        assert token.id.startswith("tok_") and token.card.last4 == "4242"
        payment = await client.create_payment(1050, "EUR", token=token.id, reference="order-42")
        assert (payment.status, payment.amount.value, payment.captured) == ("authorized", 1050, 0)
        assert payment.attempts[0].outcome == "succeeded"
        partial = await client.capture(payment.id, 400)  # currency read from the payment
        assert (partial.status, partial.captured) == ("partially_captured", 400)
        captured = await client.capture(payment.id)
        assert (captured.status, captured.captured) == ("captured", 1050)
        refunded = await client.refund(payment.id, 50, currency="EUR")
        assert (refunded.status, refunded.refunded) == ("partially_refunded", 50)
        assert [r.amount.value for r in refunded.refunds if r.amount] == [50]
        assert await client.get_payment(payment.id) == refunded


async def test_declines_are_values_and_errors_are_typed(fake: Any) -> None:
    async with AsyncTesseraClient(fake.url, API_KEY) as client:
        declined = await client.create_payment(402, "EUR", token="tok_" + "x" * 20)
        assert declined.status == "declined" and declined.decline is not None
        assert declined.decline.code == "insufficient_funds"
        voided = await client.void(
            (await client.create_payment(100, "EUR", token="tok_" + "x" * 20)).id
        )
        with pytest.raises(TesseraAPIError) as caught:
            await client.capture(voided.id)
        assert (caught.value.status, caught.value.code) == (409, "invalid_state_transition")
        with pytest.raises(TesseraAPIError) as missing:
            await client.get_payment("../tokens")  # quoted into one path segment
        assert (missing.value.status, missing.value.code) == (404, "payment_not_found")
    async with AsyncTesseraClient(fake.url, "tsk_wrong") as intruder:
        with pytest.raises(TesseraAPIError) as denied:
            await intruder.get_payment("pay_x")
    assert denied.value.status in (401, 404)


async def test_explicit_idempotency_key_is_replayed_by_the_gateway(fake: Any) -> None:
    async with AsyncTesseraClient(fake.url, API_KEY) as client:
        first = await client.create_payment(
            1050, "EUR", token="tok_" + "x" * 20, idempotency_key="order-42-pay"
        )
        again = await client.create_payment(
            1050, "EUR", token="tok_" + "x" * 20, idempotency_key="order-42-pay"
        )
        assert again == first and fake.executions == 1
        with pytest.raises(TesseraAPIError) as reused:
            await client.create_payment(
                999, "EUR", token="tok_" + "x" * 20, idempotency_key="order-42-pay"
            )
        assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")


async def test_sync_client_against_the_loopback_server(fake: Any) -> None:
    def scenario() -> Payment:
        with TesseraClient(fake.url, API_KEY) as client:
            token = client.tokenize("4242424242424242", 1, 2032)
            payment = client.create_payment(500, "USD", token=token.id, capture=True)
            return client.refund(payment.id)

    refunded = await asyncio.to_thread(scenario)
    assert (refunded.status, refunded.refunded) == ("refunded", 500)


# -- retries and idempotency keys (respx) -------------------------------------------------------

PAYMENT = {"id": "pay_1", "status": "authorized", "amount": {"value": 1050, "currency": "EUR"}}


def _problem(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"status": status, "code": code, "detail": f"{code} happened"}
    return httpx.Response(
        status, json=body, headers={**headers, "Content-Type": "application/problem+json"}
    )


def _sync_client(sleeps: list[float], **kwargs: Any) -> TesseraClient:
    return TesseraClient(BASE, API_KEY, sleep=sleeps.append, **kwargs)


def _keys(route: respx.Route) -> list[str]:
    return [call.request.headers["Idempotency-Key"] for call in route.calls]


@respx.mock(base_url=BASE, assert_all_called=False)
def test_connection_error_is_retried_with_the_same_key_and_body(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post("/v1/payments").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.Response(201, json=PAYMENT),
        ]
    )
    sleeps: list[float] = []
    with _sync_client(sleeps) as client:
        payment = client.create_payment(1050, "EUR", token="tok_" + "x" * 20)
    assert payment.id == "pay_1" and route.call_count == 3 and len(sleeps) == 2
    keys = _keys(route)
    assert len(set(keys)) == 1 and uuid.UUID(keys[0]).version == 4
    assert len({call.request.content for call in route.calls}) == 1


@respx.mock(base_url=BASE, assert_all_called=False)
def test_each_logical_call_gets_its_own_key(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post("/v1/payments").mock(return_value=httpx.Response(201, json=PAYMENT))
    with _sync_client([]) as client:
        client.create_payment(1050, "EUR", token="tok_" + "x" * 20)
        client.create_payment(1050, "EUR", token="tok_" + "x" * 20)
        client.create_payment(1050, "EUR", token="tok_" + "x" * 20, idempotency_key="mine")
    keys = _keys(route)
    assert keys[0] != keys[1] and keys[2] == "mine"


@pytest.mark.parametrize("code", ["idempotency_key_in_use", "operation_in_progress"])
@respx.mock(base_url=BASE, assert_all_called=False)
def test_nothing_done_conflict_waits_retry_after(respx_mock: respx.MockRouter, code: str) -> None:
    route = respx_mock.post("/v1/payments/pay_1/void").mock(
        side_effect=[_problem(409, code, "2"), httpx.Response(200, json=PAYMENT)]
    )
    sleeps: list[float] = []
    with _sync_client(sleeps) as client:
        client.void("pay_1")
    assert sleeps == [2.0] and len(set(_keys(route))) == 1


@respx.mock(base_url=BASE, assert_all_called=False)
def test_state_conflict_is_raised_at_once(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post("/v1/payments/pay_1/void").mock(
        return_value=_problem(409, "invalid_state_transition", "1")
    )
    sleeps: list[float] = []
    with _sync_client(sleeps) as client, pytest.raises(TesseraAPIError) as raised:
        client.void("pay_1")
    assert raised.value.code == "invalid_state_transition"
    assert sleeps == [] and route.call_count == 1


@respx.mock(base_url=BASE, assert_all_called=False)
def test_rate_limit_honours_an_http_date_retry_after(respx_mock: respx.MockRouter) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    respx_mock.get("/v1/payments/pay_1").mock(
        side_effect=[_problem(429, "rate_limited", later), httpx.Response(200, json=PAYMENT)]
    )
    sleeps: list[float] = []
    with _sync_client(sleeps) as client:
        client.get_payment("pay_1")
    assert len(sleeps) == 1 and 2.0 < sleeps[0] <= 4.0


@respx.mock(base_url=BASE, assert_all_called=False)
def test_retries_are_bounded(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post("/v1/payments").mock(
        return_value=_problem(503, "vault_unavailable", "1")
    )
    sleeps: list[float] = []
    with _sync_client(sleeps, max_retries=2) as client, pytest.raises(TesseraAPIError) as caught:
        client.create_payment(1050, "EUR", token="tok_" + "x" * 20)
    assert route.call_count == 3 and sleeps == [1.0, 1.0]
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        503,
        "vault_unavailable",
        1.0,
    )
    assert len(set(_keys(route))) == 1


@respx.mock(base_url=BASE, assert_all_called=False)
def test_too_long_a_retry_after_is_not_waited_for(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post("/v1/payments").mock(return_value=_problem(503, "busy", "120"))
    sleeps: list[float] = []
    with _sync_client(sleeps, max_retry_delay=30) as client, pytest.raises(TesseraAPIError):
        client.create_payment(1050, "EUR", token="tok_" + "x" * 20)
    assert route.call_count == 1 and sleeps == []


@pytest.mark.parametrize(
    "response",
    [
        _problem(422, "invalid_amount"),
        _problem(409, "invalid_state_transition"),
        _problem(500, "tessera_error"),
        _problem(502, "provider_error"),
        httpx.Response(502, text="<html>bad gateway</html>"),
    ],
)
@respx.mock(base_url=BASE, assert_all_called=False)
def test_other_errors_are_not_retried(
    respx_mock: respx.MockRouter, response: httpx.Response
) -> None:
    route = respx_mock.post("/v1/payments").mock(return_value=response)
    sleeps: list[float] = []
    with _sync_client(sleeps) as client, pytest.raises(TesseraAPIError) as caught:
        client.create_payment(1050, "EUR", token="tok_" + "x" * 20)
    assert route.call_count == 1 and sleeps == []
    assert caught.value.status == response.status_code
    if response.headers.get("Content-Type", "").startswith("text/"):
        assert caught.value.code == "http_502"


@respx.mock(base_url=BASE, assert_all_called=False)
def test_no_response_at_all_is_a_connection_error(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get("/v1/payments/pay_1").mock(side_effect=httpx.ConnectError("refused"))
    sleeps: list[float] = []
    with _sync_client(sleeps, max_retries=1) as client, pytest.raises(TesseraConnectionError):
        client.get_payment("pay_1")
    assert route.call_count == 2 and len(sleeps) == 1
    assert "Idempotency-Key" not in route.calls[0].request.headers  # a GET needs none


@respx.mock(base_url=BASE, assert_all_called=False)
def test_card_data_stays_out_of_logs_and_errors(
    respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    respx_mock.post("/v1/tokens").mock(
        side_effect=[httpx.ConnectError("refused"), _problem(422, "invalid_expiry")]
    )
    caplog.set_level(logging.DEBUG)
    with _sync_client([]) as client, pytest.raises(TesseraAPIError) as caught:
        client.tokenize(CANARY_PAN, 1, 2020, CANARY_CVC)
    texts = [caplog.text, str(caught.value), repr(caught.value), repr(caught.value.problem)]
    chained = caught.value.__context__
    while chained is not None:
        texts.append(repr(chained))
        chained = chained.__context__
    for text in texts:
        assert CANARY_PAN not in text and CANARY_CVC not in text
    assert "retrying POST /v1/tokens" in caplog.text


async def test_async_client_retries_the_same_way() -> None:
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        route = router.post("/v1/payments/pay_1/capture").mock(
            side_effect=[
                httpx.ConnectError("refused"),
                _problem(409, "idempotency_key_in_use", "1"),
                httpx.Response(200, json={**PAYMENT, "status": "captured", "captured": 1050}),
            ]
        )
        async with AsyncTesseraClient(BASE, API_KEY, sleep=record) as client:
            payment = await client.capture("pay_1", 1050, currency="EUR")
    assert payment.captured == 1050 and route.call_count == 3
    assert len(sleeps) == 2 and sleeps[1] == 1.0 and len(set(_keys(route))) == 1
    assert orjson.loads(route.calls[0].request.content) == {
        "amount": {"value": 1050, "currency": "EUR"}
    }


def test_payment_view_accepts_both_shapes_of_totals() -> None:
    as_amounts = Payment.model_validate(
        {**PAYMENT, "captured": {"value": 10, "currency": "EUR"}, "extra": "ignored"}
    )
    assert as_amounts.captured == 10 and as_amounts.refunded == 0


def test_a_payment_needs_exactly_one_method() -> None:
    with TesseraClient(BASE, API_KEY) as client, pytest.raises(ValueError, match="exactly one"):
        client.create_payment(1, "EUR")


@pytest.mark.parametrize("key", ["", " ", "clé-ünïcode", "x" * 256, "tab\there"])
@respx.mock(base_url=BASE, assert_all_called=False)
def test_an_idempotency_key_the_gateway_would_refuse_is_a_value_error(
    respx_mock: respx.MockRouter, key: str
) -> None:
    """Refused before anything is sent (a non-ASCII key raised UnicodeEncodeError)."""
    route = respx_mock.post("/v1/payments/pay_1/void")
    with _sync_client([]) as client, pytest.raises(ValueError, match="printable ASCII"):
        client.void("pay_1", idempotency_key=key)
    assert route.call_count == 0
