"""``/v1/tokens`` end to end: real app, real OpenBao, real SQLite (RELIABILITY 1-4, 28-29, 32)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import AuthSettings
from normalization.cards import luhn_valid

from .conftest import Gateway

VISA = "4242424242424242"
AMEX = "378282246310005"
CARD = {"number": VISA, "exp_month": 12, "exp_year": 2031, "cvc": "123"}


async def _post(gw: Gateway, path: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await gw.client.post(path, json=body, headers=gw.auth, **kw)
    text = await resp.text()
    return (
        resp.status,
        {k.lower(): v for k, v in resp.headers.items()},
        json.loads(text) if text else None,
    )


async def test_tokenize_returns_token_and_masked_metadata(gateway: Gateway) -> None:
    status, headers, body = await _post(gateway, "/v1/tokens", {"card": CARD})
    assert status == 201, body
    assert body["id"].startswith("tok_") and len(body["id"]) >= 26
    assert body["card"] == {
        "brand": "visa",
        "bin": "424242",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2031,
    }
    assert body["fingerprint"] and VISA not in json.dumps(body)
    assert body["created_at"] and body["expires_at"] is None
    assert headers["x-request-id"]

    resp = await gateway.client.get(f"/v1/tokens/{body['id']}", headers=gateway.auth)
    assert resp.status == 200
    assert (await resp.json()) == body


async def test_numeric_token_keeps_bin_and_last4_and_fails_luhn(gateway: Gateway) -> None:
    status, _, body = await _post(gateway, "/v1/tokens", {"card": CARD, "format": "numeric"})
    assert status == 201, body
    token = body["id"]
    assert len(token) == len(VISA) and token.isdigit()
    assert token[:6] == VISA[:6] and token[-4:] == VISA[-4:]
    assert token != VISA and not luhn_valid(token)


async def test_same_card_without_dedup_gets_two_tokens_with_one_fingerprint(
    gateway: Gateway,
) -> None:
    _, _, first = await _post(gateway, "/v1/tokens", {"card": CARD})
    _, _, second = await _post(gateway, "/v1/tokens", {"card": CARD})
    assert first["id"] != second["id"]
    assert first["fingerprint"] == second["fingerprint"]
    resp = await gateway.client.get(
        "/v1/tokens", params={"fingerprint": first["fingerprint"]}, headers=gateway.auth
    )
    assert resp.status == 200
    assert {t["id"] for t in (await resp.json())["data"]} == {first["id"], second["id"]}


async def test_dedup_merchant_gets_existing_token_with_200(make_gateway: Any) -> None:
    gw = await make_gateway(dedup=True)
    status1, _, first = await _post(gw, "/v1/tokens", {"card": CARD})
    status2, _, second = await _post(gw, "/v1/tokens", {"card": CARD})
    assert (status1, status2) == (201, 200)
    assert second["id"] == first["id"]


async def test_dedup_hits_in_a_batch_are_not_counted_as_new_tokens(make_gateway: Any) -> None:
    gw = await make_gateway(dedup=True)
    await _post(gw, "/v1/tokens", {"card": CARD})
    status, _, body = await _post(gw, "/v1/tokens/batch", {"cards": [CARD] * 5})
    assert status == 200 and len({r["id"] for r in body["results"]}) == 1, body
    text = await (await gw.client.get("/metrics")).text()
    assert 'tessera_tokens_created_total{format="opaque"} 1.0' in text


async def test_fingerprints_are_keyed_per_merchant(gateway: Gateway) -> None:
    _, other_key = await gateway.add_merchant()
    _, _, mine = await _post(gateway, "/v1/tokens", {"card": CARD})
    resp = await gateway.client.post(
        "/v1/tokens", json={"card": CARD}, headers={"Authorization": f"Bearer {other_key}"}
    )
    theirs = await resp.json()
    assert resp.status == 201
    assert mine["fingerprint"] != theirs["fingerprint"]


async def test_delete_forgets_the_token(gateway: Gateway) -> None:
    _, _, body = await _post(gateway, "/v1/tokens", {"card": CARD})
    resp = await gateway.client.delete(f"/v1/tokens/{body['id']}", headers=gateway.auth)
    assert resp.status == 204
    resp = await gateway.client.get(f"/v1/tokens/{body['id']}", headers=gateway.auth)
    assert resp.status == 404
    assert (await resp.json())["code"] == "token_not_found"


@pytest.mark.parametrize("token_id", ["tok_" + "a" * 97, "tok_" + "a" * 400, "nope"])
async def test_any_unknown_token_id_is_token_not_found(gateway: Gateway, token_id: str) -> None:
    """However long or malformed: the token API's own 404 (a 101-character id fell through to
    the router's generic ``not_found``)."""
    for method in (gateway.client.get, gateway.client.delete):
        resp = await method(f"/v1/tokens/{token_id}", headers=gateway.auth)
        assert resp.status == 404
        assert (await resp.json())["code"] == "token_not_found"


async def test_merchant_cannot_see_or_delete_another_merchants_token(gateway: Gateway) -> None:
    _, other_key = await gateway.add_merchant()
    _, _, body = await _post(gateway, "/v1/tokens", {"card": CARD})
    other = {"Authorization": f"Bearer {other_key}"}
    assert (await gateway.client.get(f"/v1/tokens/{body['id']}", headers=other)).status == 404
    assert (await gateway.client.delete(f"/v1/tokens/{body['id']}", headers=other)).status == 404
    resp = await gateway.client.get(
        "/v1/tokens", params={"fingerprint": body["fingerprint"]}, headers=other
    )
    assert (await resp.json())["data"] == []
    assert (
        await gateway.client.get(f"/v1/tokens/{body['id']}", headers=gateway.auth)
    ).status == 200


async def test_token_ttl_sets_expiry(gateway: Gateway) -> None:
    status, _, body = await _post(gateway, "/v1/tokens", {"card": CARD, "ttl_seconds": 3600})
    assert status == 201
    assert body["expires_at"] is not None and body["expires_at"] > body["created_at"]


async def test_batch_returns_results_in_order_with_per_item_errors(gateway: Gateway) -> None:
    cards = [
        CARD,
        {"number": "4242424242424241", "exp_month": 12, "exp_year": 2031},
        {"number": AMEX, "exp_month": 1, "exp_year": 2032},
        {"number": VISA, "exp_month": 13, "exp_year": 2031},
        "not a card",
    ]
    status, _, body = await _post(gateway, "/v1/tokens/batch", {"cards": cards})
    assert status == 200, body
    results = body["results"]
    assert len(results) == 5
    assert results[0]["card"]["last4"] == "4242"
    assert results[1]["error"]["code"] == "invalid_card_number"
    assert results[2]["card"]["brand"] == "amex"
    assert results[3]["error"]["code"] in ("invalid_expiry", "invalid_request")
    assert "error" in results[4]
    assert "4242424242424241" not in json.dumps(body)


async def test_a_batch_item_with_several_invalid_fields_names_them(gateway: Gateway) -> None:
    bad = {"number": "4242424242424241", "exp_month": 13, "exp_year": 2031, "cvc": "12x"}
    status, _, body = await _post(gateway, "/v1/tokens/batch", {"cards": [CARD, bad]})
    assert status == 200, body
    error = body["results"][1]["error"]
    assert error["code"] == "invalid_request"
    fields = [e["field"] for e in error["errors"]]
    assert sorted(fields) == ["cvc", "exp_month", "number"], error
    assert all(e["code"] and e["detail"] for e in error["errors"])
    assert error["detail"].startswith("3 fields are invalid: ")
    assert all(name in error["detail"] for name in fields)
    assert "4242424242424241" not in json.dumps(body) and "12x" not in json.dumps(body)


async def test_a_problem_with_several_invalid_fields_names_them_in_detail(
    gateway: Gateway,
) -> None:
    bad = {"number": "4242424242424241", "exp_month": 13, "exp_year": 2031}
    status, _, body = await _post(gateway, "/v1/tokens", {"card": bad})
    assert status == 422, body
    assert body["detail"] == "2 fields are invalid: card.number, card.exp_month.", body


async def test_batch_over_the_limit_is_rejected(make_gateway: Any) -> None:
    gw = await make_gateway(tokenization={"max_cards_per_request": 3})
    status, _, body = await _post(gw, "/v1/tokens/batch", {"cards": [CARD] * 4})
    assert status == 413
    assert body["code"] == "batch_too_large"


@pytest.mark.parametrize(
    ("card", "code"),
    [
        ({"number": "4242424242424241", "exp_month": 12, "exp_year": 2031}, "invalid_card_number"),
        ({"number": "٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢", "exp_month": 12, "exp_year": 2031}, "invalid_card_number"),
        (
            {"number": "4242_4242_4242_4242", "exp_month": 12, "exp_year": 2031},
            "invalid_card_number",
        ),
        ({"number": VISA, "exp_month": 12, "exp_year": 2020}, "invalid_expiry"),
        ({"number": VISA, "exp_month": 0, "exp_year": 2031}, "invalid_expiry"),
        ({"number": VISA, "exp_month": 12, "exp_year": 2031, "cvc": "12"}, "invalid_cvc"),
        ({"number": VISA, "exp_month": "12", "exp_year": 2031}, "invalid_request"),
        ({"exp_month": 12, "exp_year": 2031}, "invalid_request"),
    ],
)
async def test_invalid_cards_get_422_with_a_stable_code_and_no_echo(
    gateway: Gateway, card: dict[str, Any], code: str
) -> None:
    status, headers, body = await _post(gateway, "/v1/tokens", {"card": card})
    assert status == 422, body
    assert headers["content-type"].startswith("application/problem+json")
    assert body["code"] == code
    assert body["status"] == 422 and body["errors"]
    text = json.dumps(body)
    if "number" in card:
        assert card["number"] not in text


async def test_unknown_fields_are_rejected(gateway: Gateway) -> None:
    status, _, body = await _post(gateway, "/v1/tokens", {"card": CARD, "pan": VISA})
    assert status == 422
    assert VISA not in json.dumps(body)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b'{"card": ', 400, "malformed_json"),
        (b'{"card": {"number": NaN}}', 400, "malformed_json"),
        (b"[" * 5000 + b"]" * 5000, 400, "malformed_json"),
        (b"[]", 422, "invalid_request"),
    ],
)
async def test_malformed_bodies(gateway: Gateway, raw: bytes, status: int, code: str) -> None:
    resp = await gateway.client.post(
        "/v1/tokens",
        data=raw,
        headers={**gateway.auth, "Content-Type": "application/json"},
    )
    assert resp.status == status
    assert (await resp.json())["code"] == code


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/tokens/batch", "/v1/payments"])
async def test_a_body_that_does_not_decode_is_400(gateway: Gateway, path: str) -> None:
    """A ``Content-Encoding`` the body does not match: the client's error, not a 500; the
    connection closes with the answer (the rest of the body cannot be read either). What
    aiohttp logs when it drains such a body: ``test_server_http_errors``."""
    resp = await gateway.client.post(
        path,
        data=b"not gzip at all",
        headers={**gateway.auth, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["code"] == "http_error"
    assert resp.headers.get("Connection", "").lower() == "close"


async def test_wrong_content_type_is_415(gateway: Gateway) -> None:
    resp = await gateway.client.post(
        "/v1/tokens",
        data=json.dumps({"card": CARD}),
        headers={**gateway.auth, "Content-Type": "text/plain"},
    )
    assert resp.status == 415
    assert (await resp.json())["code"] == "unsupported_media_type"


async def test_body_over_the_limit_is_413(make_gateway: Any) -> None:
    gw = await make_gateway(server={"client_max_size": 4096})
    payload = {"card": {**CARD, "holder_name": "x" * 5000}}
    resp = await gw.client.post("/v1/tokens", json=payload, headers=gw.auth)
    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"


async def test_too_many_headers_is_400(gateway: Gateway) -> None:
    headers = {**gateway.auth, **{f"X-Filler-{i}": "x" for i in range(200)}}
    resp = await gateway.client.get("/healthz", headers=headers)
    assert resp.status == 400


async def test_too_long_header_is_rejected(gateway: Gateway) -> None:
    resp = await gateway.client.get("/healthz", headers={"X-Long": "x" * 20_000})
    assert resp.status in (400, 431)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer tsk_" + "A" * 40}, {"Authorization": "Basic abc"}],
)
async def test_requests_without_a_valid_key_are_401(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    resp = await gateway.client.post("/v1/tokens", json={"card": CARD}, headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_revoked_key_is_401(gateway: Gateway) -> None:
    assert (await _post(gateway, "/v1/tokens", {"card": CARD}))[0] == 201
    assert await gateway.resources.merchants.revoke_key(gateway.api_key)
    assert (await _post(gateway, "/v1/tokens", {"card": CARD}))[0] == 401


async def test_api_keys_are_stored_hashed(gateway: Gateway) -> None:
    rows = await gateway.resources.db.fetchall("SELECT * FROM api_keys")
    assert rows and gateway.api_key not in json.dumps(rows, default=str)


async def test_repeated_auth_failures_are_rate_limited(make_gateway: Any) -> None:
    gw = await make_gateway(auth={"failure_limit": 3, "failure_window_seconds": 60})
    bad = {"Authorization": "Bearer nope"}
    statuses = [(await gw.client.get("/v1/tokens/tok_x", headers=bad)).status for _ in range(5)]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]
    resp = await gw.client.get("/v1/tokens/tok_x", headers=gw.auth)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1


async def test_behind_a_trusted_proxy_failures_count_against_the_forwarded_client(
    make_gateway: Any,
) -> None:
    """Behind a load balancer every request comes from its address: one client's failures must
    not lock every merchant out. From a trusted proxy the forwarded client is counted; the
    header is ignored from anyone else, so a client cannot dodge the limit by forging it."""
    gw = await make_gateway(
        auth={"failure_limit": 2, "failure_window_seconds": 60, "trusted_proxies": ["127.0.0.1"]}
    )

    async def status(key: str, forwarded: str) -> int:
        headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": forwarded}
        return (await gw.client.get("/v1/tokens/tok_x", headers=headers)).status

    key = gw.auth["Authorization"].removeprefix("Bearer ")
    # The client names itself 10.9.9.9; the proxy appends the address it saw.
    attacker = "10.9.9.9, 203.0.113.7"
    assert [await status("nope", attacker) for _ in range(3)] == [401, 401, 429]
    assert await status(key, attacker) == 429  # that client is blocked, whatever it forges
    assert await status(key, "203.0.113.8") == 404  # another client is not
    assert await status(key, "203.0.113.7, 127.0.0.1") == 429  # trusted hops are skipped

    untrusted = await make_gateway(auth={"failure_limit": 2, "failure_window_seconds": 60})
    bad = {"Authorization": "Bearer nope"}
    for n in range(3):
        headers = {**bad, "X-Forwarded-For": f"198.51.100.{n}"}
        resp = await untrusted.client.get("/v1/tokens/tok_x", headers=headers)
    assert resp.status == 429  # no trusted proxy: the peer is the client


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert AuthSettings(trusted_proxies=["10.0.0.0/8", "::1"]).trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1"),
    )
    with pytest.raises(ValidationError, match="not an address or network"):
        AuthSettings(trusted_proxies=["lb.internal"])


async def test_health_ready_and_metrics(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).status == 200
    resp = await gateway.client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["checks"] == {"vault": "ok", "database": "ok"}
    await _post(gateway, "/v1/tokens", {"card": CARD})
    text = await (await gateway.client.get("/metrics")).text()
    assert "tessera_http_requests_total" in text
    assert 'tessera_tokens_created_total{format="opaque"} 1.0' in text


async def test_unknown_route_is_problem_json(gateway: Gateway) -> None:
    resp = await gateway.client.get("/nope")
    assert resp.status == 404
    assert resp.headers["content-type"].startswith("application/problem+json")
