"""Two ``tessera serve`` processes on one PostgreSQL database honour the same idempotency keys.

Real processes on 127.0.0.1: the sandbox provider simulator, two gateways (different ports, one
PostgreSQL schema of their own), the session's OpenBao. Neither gateway is given
``payments.idempotency_key``: they start together and must agree on the fingerprint key the
first one generates in the database, or a retry on the other process would be taken for a
different request.

The sandbox is slowed down (amount 99408 with a 1 s hang: the authorization is done, its reply
comes a second later), so the requests with one key really overlap: every one of them is sent
while the first is still at the provider.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .procs import (
    Api,
    Processes,
    Reply,
    create_merchant,
    gateway_config,
    payment_body,
    postgres_schema,
    sandbox_admin,
    sandbox_section,
)

_SLOW = 99408  # with hang_seconds=1: authorized, answered one second later
_KEYS = 4
_PER_KEY = 20


@pytest.mark.slow
async def test_two_processes_on_one_postgres_charge_once_per_key(
    tmp_path: Path, provisioned_vault: Any, postgres_dsn: str
) -> None:
    vault = provisioned_vault
    async with (
        postgres_schema(postgres_dsn) as db_url,
        Processes(tmp_path) as procs,
        aiohttp.ClientSession() as http,
    ):
        _, api_key = await create_merchant(db_url, vault.addr, vault.root_token)
        sandbox = await procs.sandbox(hang_seconds=1.0)

        def config() -> str:
            return gateway_config(
                database_url=db_url,
                vault_addr=vault.addr,
                vault_token=vault.root_token,
                connectors={"sandbox": sandbox_section(sandbox, deadline_seconds=5.0)},
                idempotency_key=None,
            )

        a, b = await asyncio.gather(
            procs.gateway(config(), name="gateway-a"), procs.gateway(config(), name="gateway-b")
        )
        assert a.url != b.url
        api_a = Api(http, a, api_key)
        api_b = api_a.on(b)
        token = await api_a.tokenize()

        bodies = {
            f"order-{n}-key": payment_body(token, _SLOW, reference=f"order-{n}")
            for n in range(_KEYS)
        }
        sends = [
            (api_a if i % 2 == 0 else api_b).post("/v1/payments", body, key=key)
            for key, body in bodies.items()
            for i in range(_PER_KEY)
        ]
        replies: list[Reply] = await asyncio.gather(*sends)

        by_key: dict[str, list[Reply]] = {}
        for (key, _), reply in zip(
            ((k, i) for k in bodies for i in range(_PER_KEY)), replies, strict=True
        ):
            by_key.setdefault(key, []).append(reply)
        payment_ids: dict[str, str] = {}
        for key, key_replies in by_key.items():
            statuses = [r.status for r in key_replies]
            assert set(statuses) <= {201, 409}, (key, statuses)
            created = [r.body for r in key_replies if r.status == 201]
            assert created, (key, statuses)
            assert len({p["id"] for p in created}) == 1, key
            assert all(p["status"] == "authorized" for p in created), created
            for refused in (r for r in key_replies if r.status == 409):
                assert refused.body["code"] == "idempotency_key_in_use"
                assert refused.headers.get("Retry-After")
            payment_ids[key] = created[0]["id"]
        assert len(set(payment_ids.values())) == _KEYS
        # The requests did overlap: most were refused while the first was at the provider.
        assert sum(r.status == 409 for r in replies) >= _KEYS * (_PER_KEY // 2)

        # Exactly one authorization per key at the provider, each sent once.
        charges = await sandbox_admin(http, sandbox, "charges")
        assert len(charges["charges"]) == _KEYS
        assert sorted(c["reference"] for c in charges["charges"]) == sorted(payment_ids.values())
        assert all(c["key_seen"] == 1 for c in charges["charges"]), charges

        # Afterwards both processes replay the stored answer for every key, byte for byte, and
        # both refuse the key with a different body (they share the fingerprint key).
        for key, body in bodies.items():
            from_a = await api_a.post("/v1/payments", body, key=key)
            from_b = await api_b.post("/v1/payments", body, key=key)
            assert (from_a.status, from_b.status) == (201, 201)
            assert from_a.body == from_b.body and from_a.body["id"] == payment_ids[key]
            assert from_a.headers.get("Idempotent-Replayed") == "true"
            assert from_b.headers.get("Idempotent-Replayed") == "true"
            other = {**body, "amount": {"value": 1234, "currency": "EUR"}}
            for api in (api_a, api_b):
                reused = await api.post("/v1/payments", other, key=key)
                assert reused.status == 422 and reused.body["code"] == "idempotency_key_reused"
        assert len((await sandbox_admin(http, sandbox, "charges"))["charges"]) == _KEYS
