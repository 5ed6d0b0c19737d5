"""No card data in any stored row (RELIABILITY 26-27, PCI DSS 3.3.1.2, 3.5.1.1).

A canary PAN and CVV, fresh for each run, go in through an inline-card request body, as the
payments view will see them: idempotency guard, payment, attempts, refund, webhook event,
merchant notification. Afterwards every column of every table is searched for them in raw,
spaced, dashed, base64, hex and URL-encoded form, and for a bare SHA-256 of the PAN.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from urllib.parse import quote

import orjson
import pytest

from gateway.merchants import MerchantStore
from gateway.payments import (
    HandlerResult,
    IdempotencyClaim,
    IdempotencyStore,
    Outbox,
    PaymentMethodSummary,
    PaymentStore,
)
from normalization import (
    InvalidRequestError,
    Money,
    Outcome,
    PaymentResult,
    PaymentStatus,
    card_bin,
    card_last4,
    luhn_valid,
)
from normalization.methods import CardData, CardMethod
from tests.gateway.payments.conftest import Database


def _canary_pan() -> str:
    """A fresh Luhn-valid Visa test number (never a real card: 16 random digits after 4)."""
    while True:
        pan = "4" + "".join(secrets.choice("0123456789") for _ in range(15))
        if luhn_valid(pan):
            return pan


def _canary_cvc() -> str:
    # Four digits, none of the amounts or years this test writes itself.
    while True:
        cvc = f"{secrets.randbelow(9000) + 1000}"
        if cvc not in {"1050", "2031", "1000"}:
            return cvc


def _forms(secret: str) -> set[str]:
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    raw = secret.encode()
    return {
        secret,
        grouped,
        grouped.replace(" ", "-"),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
        quote(grouped),
    }


async def _all_rows(db: Database) -> dict[str, list[str]]:
    if db.dialect == "sqlite":
        tables = [
            r["name"]
            for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
    else:
        tables = [
            r["table_name"]
            for r in await db.fetchall(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        ]
    dump: dict[str, list[str]] = {}
    for table in tables:
        rows = await db.fetchall(f'SELECT * FROM "{table}"')  # noqa: S608 - catalogue names
        dump[table] = [_text(value) for row in rows for value in row.values()]
    return dump


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    return str(value)


async def test_no_card_data_in_any_table(db: Database, payment_store: PaymentStore) -> None:
    pan, cvc = _canary_pan(), _canary_cvc()
    merchants = MerchantStore(db)
    await merchants.migrate()
    merchant, _ = await merchants.create("canary shop")
    await merchants.set_webhook_endpoint(merchant.id, "https://shop.example/hooks")
    guard = IdempotencyStore(db, fingerprint_key=secrets.token_bytes(32))
    await guard.migrate()
    outbox = Outbox(db)
    await outbox.migrate()

    request = {
        "amount": {"value": 1050, "currency": "EUR"},
        "payment_method": {
            "type": "card",
            "card": {"number": pan, "exp_month": 12, "exp_year": 2031, "cvc": cvc},
        },
        "capture": False,
        "reference": "order-canary",
    }
    body = orjson.dumps(request)

    async def pay(claim: IdempotencyClaim) -> HandlerResult:
        # What the payments view does with an inline card: tokenize it (the vault's job,
        # not stored here), then keep only the token and masked details.
        method = CardMethod.model_validate(request["payment_method"])
        assert method.card is not None and isinstance(method.card, CardData)
        number = method.card.number.reveal()
        summary = PaymentMethodSummary.of(
            method, token="tok_" + secrets.token_hex(12), brand="visa", last4=card_last4(number)
        )
        async with db.transaction() as tx:
            payment = await payment_store.create_payment(
                merchant.id, Money.of(1050, "EUR"), payment_method=summary,
                reference="order-canary", metadata={"bin": card_bin(number)}, tx=tx,
            )  # fmt: skip
            await claim.bind_resource(payment.id, tx=tx)
            attempt = await payment_store.start_attempt(payment, "sandbox", "authorize", tx=tx)
        result = PaymentResult(
            status=PaymentStatus.AUTHORIZED, outcome=Outcome.SUCCEEDED, provider_reference="ch_1"
        )
        await payment_store.finish_attempt(attempt.id, result)
        async with db.transaction() as tx:
            payment = await payment_store.apply(
                payment, result.status, provider_reference="ch_1", tx=tx
            )
            view = {
                "id": payment.id,
                "status": payment.status,
                "amount": {"value": 1050, "currency": "EUR"},
                "payment_method": summary.to_json(),
            }
            await outbox.enqueue(tx, merchant.id, "payment.authorized", view)
        await payment_store.add_refund(payment, Money.of(10, "EUR"))
        await payment_store.record_webhook_event("sandbox", "evt_canary")
        return HandlerResult(201, orjson.dumps(view), {"Content-Type": "application/json"})

    response = await guard.run(merchant.id, "canary-key", "POST", "/v1/payments", body, pay)
    assert response.status == 201
    replay = await guard.run(merchant.id, "canary-key", "POST", "/v1/payments", body, pay)
    assert replay.replayed and replay.body == response.body

    # The free-text fields refuse the PAN outright.
    for reference, metadata in ((f"card {pan}", None), (None, {"note": pan})):
        with pytest.raises(InvalidRequestError) as refused:
            await payment_store.create_payment(
                merchant.id, Money.of(1, "EUR"), payment_method=summary_of_token(),
                reference=reference, metadata=metadata,
            )  # fmt: skip
        assert pan not in str(refused.value)

    dump = await _all_rows(db)
    assert {"payments", "payment_attempts", "idempotency_keys", "merchant_notifications"} <= set(
        dump
    )
    assert _leaks(dump, pan, cvc, body) == []
    # What is kept is what PCI allows: the last four and the BIN, never more.
    assert any(pan[-4:] in v for v in dump["payments"])

    # The sweep itself can see a leak: plant one, encoded, and it is found.
    planted = base64.b64encode(pan.encode()).decode()
    await payment_store.record_webhook_event("sandbox", planted)
    assert _leaks(await _all_rows(db), pan, cvc, body) == ["webhook_events"]


def _leaks(dump: dict[str, list[str]], pan: str, cvc: str, body: bytes) -> list[str]:
    """The tables holding any form of the canary PAN or CVV, or a bare hash of either."""
    forbidden = _forms(pan) | {
        hashlib.sha256(pan.encode()).hexdigest(),
        hashlib.sha256(body).hexdigest(),
    }
    # Delimited like a stored value ("1234", =1234, : 1234): four digits inside a hex digest,
    # a UUID or a random id are chance, not a CVV.
    cvc_alone = re.compile(rf"(?<![0-9A-Za-z]){cvc}(?![0-9A-Za-z])")
    found = []
    for table, values in dump.items():
        for value in values:
            if (
                any(form in value for form in forbidden)
                or cvc_alone.search(value)
                or '"cvc"' in value
                or '"number"' in value
            ):
                found.append(table)
                break
    return found


def summary_of_token() -> PaymentMethodSummary:
    return PaymentMethodSummary(type="card", token="tok_" + "c" * 24)
