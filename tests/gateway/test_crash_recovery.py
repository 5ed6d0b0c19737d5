"""RELIABILITY 9: ``kill -9`` between the provider's success and the local write, restart, retry.

Real processes on 127.0.0.1: the sandbox provider simulator, ``tessera serve`` on SQLite and on
PostgreSQL (a schema of its own), the session's OpenBao. Amount 99408 makes the sandbox record the authorization and then hold the
reply back; the gateway (a long connector deadline) is still waiting when it is SIGKILLed, so the
provider has charged and the gateway's database has only the attempt it wrote before sending.

A second gateway process on the same database (started beforehand, as in a deployment of several
processes, so that its start-up does not eat into the lease) gets the merchant's retry (same
``Idempotency-Key``, same body). While the dead process's claim lease runs, the retry is told 409
(the key looks in use; it cannot tell a slow process from a dead one). Once the lease lapses the
retry takes the claim over, finds the payment the dead run created and its open attempt,
reconciles it by sync (reference = payment id) and answers with the authorized payment. The
provider must have seen the authorization exactly once: no second charge and no re-send.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import PaymentSettings

from .procs import (
    Api,
    Processes,
    create_merchant,
    database,
    eventually,
    gateway_config,
    payment_body,
    postgres_schema,
    sandbox_admin,
    sandbox_section,
)

#: The idempotency claim lease of ``tessera serve``. It is IdempotencyStore's 30 s default unless
#: the configuration lets a deployment (and this test) choose it.
_LEASE_FIELD = "idempotency_lease_seconds"
_LEASE_CONFIGURABLE = _LEASE_FIELD in PaymentSettings.model_fields
# The dead process renewed it every third of it, so it lapses 4-6 s after the kill. The first
# retry goes out a moment after the kill (the second gateway is already running, and the checks
# in between are a few queries): that leaves seconds of slack for a loaded 2-core machine.
_LEASE_SECONDS = 6.0 if _LEASE_CONFIGURABLE else 30.0
_HANG = 99408  # the sandbox authorizes, then withholds the reply


async def _hanging_authorization(
    http: aiohttp.ClientSession, sandbox: Any
) -> dict[str, Any] | None:
    requests = (await sandbox_admin(http, sandbox, "requests"))["requests"]
    hanging = [r for r in requests if r["path"] == "/v1/authorizations" and r["status"] == "hang"]
    return hanging[0] if hanging else None


@contextlib.asynccontextmanager
async def _database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        async with postgres_schema(request.getfixturevalue("postgres_dsn")) as url:
            yield url


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_kill_9_after_provider_success_then_retry_charges_once(
    backend: str, tmp_path: Path, provisioned_vault: Any, request: pytest.FixtureRequest
) -> None:
    vault = provisioned_vault
    async with (
        _database_url(backend, tmp_path, request) as db_url,
        Processes(tmp_path) as procs,
        aiohttp.ClientSession() as http,
    ):
        _, api_key = await create_merchant(db_url, vault.addr, vault.root_token)
        sandbox = await procs.sandbox()  # 99408 holds its reply for 600 s

        def config() -> str:
            return gateway_config(
                database_url=db_url,
                vault_addr=vault.addr,
                vault_token=vault.root_token,
                # The gateway would wait a minute: it is killed long before it gives up.
                connectors={
                    "sandbox": sandbox_section(sandbox, deadline_seconds=60.0, retry_attempts=1)
                },
                payments={_LEASE_FIELD: _LEASE_SECONDS} if _LEASE_CONFIGURABLE else None,
            )

        first = await procs.gateway(config(), name="gateway-1")
        # Ready before the kill: the retries must start while the dead run's lease still holds,
        # and a process start (imports, migrations, /readyz) can take seconds on a loaded machine.
        second = await procs.gateway(config(), name="gateway-2")
        api = Api(http, first, api_key)
        body = payment_body(await api.tokenize(), _HANG, reference="order-crash")
        key = "order-crash-attempt-1"
        in_flight = asyncio.create_task(api.post("/v1/payments", body, key=key))

        # The provider has charged and is holding the answer back: kill the gateway now.
        sent = await eventually(
            lambda: _hanging_authorization(http, sandbox), 10, "the sandbox got the authorization"
        )
        first.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert await first.wait(5) == -signal.SIGKILL
        with pytest.raises(aiohttp.ClientError):
            await in_flight  # the merchant never got an answer

        charges = (await sandbox_admin(http, sandbox, "charges"))["charges"]
        assert len(charges) == 1 and charges[0]["status"] == "authorized"
        charge = charges[0]
        assert charge["idempotency_key"] == sent["idempotency_key"]

        # What the dead process left: the payment (no status yet) and the attempt it recorded
        # before sending, with the provider idempotency key it sent, never answered.
        async with database(db_url) as db:
            payments = await db.fetchall("SELECT id, status, provider_reference FROM payments")
            attempts = await db.fetchall(
                "SELECT operation, outcome, provider_idempotency_key FROM payment_attempts"
            )
        assert [(p["status"], p["provider_reference"]) for p in payments] == [(None, None)]
        assert [(a["operation"], a["outcome"]) for a in attempts] == [("authorize", None)]
        assert attempts[0]["provider_idempotency_key"] == charge["idempotency_key"]
        payment_id = payments[0]["id"]

        api = api.on(second)
        # The merchant retries (same key, same body) until the dead run's lease has lapsed.
        refused = 0
        while True:
            reply = await api.post("/v1/payments", body, key=key)
            if reply.status != 409:
                break
            assert reply.body["code"] == "idempotency_key_in_use", reply
            assert time.monotonic() - killed_at < _LEASE_SECONDS + 10, "the lease never lapsed"
            refused += 1
            await asyncio.sleep(0.25)
        waited = time.monotonic() - killed_at
        assert reply.status == 201, reply
        payment = reply.body
        assert payment["id"] == payment_id
        assert payment["status"] == "authorized", payment
        assert payment["provider_reference"] == charge["id"]
        assert [(a["operation"], a["outcome"]) for a in payment["attempts"]] == [
            ("authorize", "succeeded")
        ]
        assert refused > 0 and waited < _LEASE_SECONDS + 10

        # One authorization at the provider, its key seen once: the recovery synced by
        # reference, it sent nothing that could charge again.
        after = await sandbox_admin(http, sandbox, "charges")
        assert [c["id"] for c in after["charges"]] == [charge["id"]]
        assert after["charges"][0]["key_seen"] == 1
        assert after["idempotency_keys"] == {charge["idempotency_key"]: 1}

        # From now on the key replays the stored answer.
        again = await api.post("/v1/payments", body, key=key)
        assert again.status == 201 and again.body == payment
        assert again.headers.get("Idempotent-Replayed") == "true"
        fetched = await api.get(f"/v1/payments/{payment_id}")
        assert fetched.body["status"] == "authorized"
