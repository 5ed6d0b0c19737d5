"""The database work of one payment, counted: a budget, so a change that adds statements or
transactions to the forwarding path shows up here (docs/performance.md, "Forwarding").

What the payments code itself runs is counted (idempotency record, payment, attempts, outbox):
the statements that go through ``PaymentService``, ``PaymentStore`` and ``IdempotencyStore``.
The token lookup and the audited reveal belong to the vault and are not counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .conftest import Gateway, MakeGateway, sandbox_connector

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}


class Counting:
    """A ``Database`` that counts statements and transactions, then passes them on."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.dialect = db.dialect
        self.statements: list[str] = []
        self.transactions = 0

    def _note(self, sql: str) -> None:
        self.statements.append(" ".join(sql.split()[:3]))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        self.transactions += 1
        async with self._db.transaction() as tx:
            yield _CountingConnection(tx, self)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._db, name)
        if name not in ("execute", "executemany", "fetchone", "fetchall", "fetchval"):
            return method

        async def counted(sql: str, *args: Any) -> Any:
            self._note(sql)
            return await method(sql, *args)

        return counted


class _CountingConnection:
    def __init__(self, conn: Any, counter: Counting) -> None:
        self._conn, self._counter = conn, counter

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)

        async def counted(sql: str, *args: Any) -> Any:
            self._counter._note(sql)
            return await method(sql, *args)

        return counted


def _count(gw: Gateway) -> Counting:
    resources = gw.resources
    counting = Counting(resources.db)
    for owner in (resources.payments, resources.payment_store, resources.idempotency):
        owner._db = counting
    return counting


async def test_a_payment_is_two_transactions_and_eight_statements(
    make_gateway: MakeGateway, sandbox: Any, database_url: str | None
) -> None:
    gw = await make_gateway(
        database_url=database_url, connectors={"sandbox": sandbox_connector(sandbox)}
    )
    resp = await gw.client.post("/v1/tokens", json={"card": CARD}, headers=gw.auth)
    token = (await resp.json())["id"]
    counting = _count(gw)
    resp = await gw.client.post(
        "/v1/payments",
        json={
            "amount": {"value": 1050, "currency": "EUR"},
            "payment_method": {"type": "card", "token": token},
        },
        headers={**gw.auth, "Idempotency-Key": "budget-1"},
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["status"] == "authorized"
    assert counting.statements == [
        "INSERT INTO idempotency_keys",  # the claim
        # one transaction before the call: the payment, the key's binding, the attempt
        "INSERT INTO payments",
        "UPDATE idempotency_keys SET",
        "INSERT INTO payment_attempts",
        # one transaction after it: the answer, the payment's new state, the notification
        "UPDATE payment_attempts SET",
        "UPDATE payments SET",
        "INSERT INTO merchant_notifications",
        "UPDATE idempotency_keys SET",  # the stored response
    ]
    assert counting.transactions == 2
    # The answer was built from the records in hand: it is what a read gives.
    created = await resp.json()
    resp = await gw.client.get(f"/v1/payments/{created['id']}", headers=gw.auth)
    assert await resp.json() == created
