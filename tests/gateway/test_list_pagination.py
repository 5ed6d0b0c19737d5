"""Pages of ``GET /v1/tokens?fingerprint=`` and ``GET /v1/payments?reference=`` through the real
gateway and OpenBao: ``limit``, ``has_more``, ``next_cursor`` -> ``cursor``; iterating while
deleting what was seen loses nothing; a bad ``limit`` or ``cursor`` is a 400 with its code."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from .conftest import Gateway, MakeGateway, sandbox_connector

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}


async def _tokenize(gw: Gateway, count: int) -> tuple[str, list[str]]:
    ids, fingerprint = [], ""
    for _ in range(count):
        resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
        body = await resp.json()
        assert resp.status == 201, body
        ids.append(body["id"])
        fingerprint = body["fingerprint"]
    return fingerprint, ids


async def _get(gw: Gateway, path: str, **params: Any) -> tuple[int, Any]:
    resp = await gw.client.get(path, params=params, headers=gw.auth)
    return resp.status, await resp.json()


async def _all_pages(gw: Gateway, path: str, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        status, body = await _get(gw, path, **params, **extra)
        assert status == 200, body
        pages.append([item["id"] for item in body["data"]])
        assert body["has_more"] is (body["next_cursor"] is not None)
        if not body["has_more"]:
            return pages
        cursor = body["next_cursor"]


async def test_tokens_by_fingerprint_come_a_page_at_a_time(gateway: Gateway) -> None:
    fingerprint, ids = await _tokenize(gateway, 5)

    status, body = await _get(gateway, "/v1/tokens", fingerprint=fingerprint)
    assert status == 200 and body["has_more"] is False and body["next_cursor"] is None
    every = [t["id"] for t in body["data"]]
    assert sorted(every) == sorted(ids)

    pages = await _all_pages(gateway, "/v1/tokens", fingerprint=fingerprint, limit="2")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == every  # same order, nothing twice, nothing lost


async def test_deleting_what_was_seen_does_not_break_the_next_page(gateway: Gateway) -> None:
    fingerprint, ids = await _tokenize(gateway, 4)
    status, first = await _get(gateway, "/v1/tokens", fingerprint=fingerprint, limit="2")
    assert status == 200 and first["has_more"] is True
    for token in first["data"]:
        resp = await gateway.client.delete(f"/v1/tokens/{token['id']}", headers=gateway.auth)
        assert resp.status == 204
    status, second = await _get(
        gateway, "/v1/tokens", fingerprint=fingerprint, limit="2", cursor=first["next_cursor"]
    )
    assert status == 200, second
    seen = [t["id"] for t in first["data"]] + [t["id"] for t in second["data"]]
    assert sorted(seen) == sorted(ids) and second["has_more"] is False


async def test_payments_by_reference_come_newest_first_a_page_at_a_time(
    make_gateway: MakeGateway, sandbox: Any
) -> None:
    gw = await make_gateway(connectors={"sandbox": sandbox_connector(sandbox)})
    _, (token,) = await _tokenize(gw, 1)
    created = []
    for value in (1000, 1001, 1002):
        body = {
            "amount": {"value": value, "currency": "EUR"},
            "payment_method": {"type": "card", "token": token},
            "reference": "order-paged",
        }
        resp = await gw.client.post("/v1/payments", json=body, headers=gw.auth)
        assert resp.status == 201, await resp.text()
        created.append((await resp.json())["id"])

    pages = await _all_pages(gw, "/v1/payments", reference="order-paged", limit="2")
    assert pages == [created[::-1][:2], created[::-1][2:]]
    status, body = await _get(gw, "/v1/payments", reference="order-paged", limit="2")
    assert status == 200 and body["data"][0]["amount"] == {
        "value": 1002,
        "currency": "EUR",
    }  # a full view


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "limit", ["0", "101", "-1", "1.5", "abc", "", "99999", "\u0661"]
)  # an Arabic-Indic one
async def test_a_bad_limit_is_400(gateway: Gateway, limit: str) -> None:
    for path, params in (
        ("/v1/tokens", {"fingerprint": "fp"}),
        ("/v1/payments", {"reference": "r"}),
    ):
        status, body = await _get(gateway, path, **params, limit=limit)
        assert status == 400 and body["code"] == "invalid_limit", body
        assert "1 to 100" in body["detail"]


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64 !",
        _cursor("123"),  # no id
        _cursor("abc:tok_1"),  # not an instant
        _cursor("1:tok 1"),  # not an id
        _cursor("99999999999999999999:tok_1"),  # too long
        _cursor("9999999999999999999:tok_1"),  # beyond year 9999
        _cursor("1:tok_1") + "é",
        "A" * 201,
    ],
)
async def test_a_bad_cursor_is_400(gateway: Gateway, cursor: str) -> None:
    for path, params in (
        ("/v1/tokens", {"fingerprint": "fp"}),
        ("/v1/payments", {"reference": "r"}),
    ):
        status, body = await _get(gateway, path, **params, cursor=cursor)
        assert status == 400 and body["code"] == "invalid_cursor", (cursor, body)
