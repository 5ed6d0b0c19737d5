"""RELIABILITY 18: SIGTERM (or the client hanging up) while payments are at the provider.

Real processes on 127.0.0.1: the sandbox provider simulator, ``tessera serve`` on SQLite, the
session's OpenBao. Amount 99408 makes the sandbox authorize and then hold its reply for
``hang_seconds``: a provider that is slow but does answer.

- Provider faster than ``server.shutdown_timeout``: SIGTERM stops new connections at once, the
  in-flight payments finish normally (201, authorized), the process exits 0.
- Connector deadline shorter than the drain: the in-flight payments end at their deadline as
  ``unknown`` (attempt ``unknown``, reconciliation scheduled), nothing is re-sent after the
  deadline, the process exits 0.
- Provider slower than ``server.shutdown_timeout``: the in-flight requests are cancelled at the
  drain's end and the process exits 0; nothing is half-written: each payment keeps its open
  attempt (due for reconciliation) and its idempotency key is released with the payment bound,
  so the merchant's retry on a new process resumes it at once and gets the authorization, with
  one charge at the provider. (aiohttp cuts them after ~2x ``shutdown_timeout``: see the test.)
- ``workers = 2``: the parent forwards SIGTERM, every worker drains, the parent exits 0.
- The client hangs up mid-call: the call still ends at its deadline, its answer is stored under
  the key and replayed to the retry; nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .procs import (
    Api,
    Proc,
    Processes,
    Reply,
    create_merchant,
    database,
    eventually,
    gateway_config,
    payment_body,
    sandbox_admin,
    sandbox_section,
)

_SLOW = 99408
_IN_FLIGHT = 6


async def _hanging(http: aiohttp.ClientSession, sandbox: Proc, count: int) -> list[str] | None:
    """The idempotency keys of the authorizations the sandbox is holding, once there are enough."""
    requests = (await sandbox_admin(http, sandbox, "requests"))["requests"]
    keys = [
        r["idempotency_key"]
        for r in requests
        if r["path"] == "/v1/authorizations" and r["status"] == "hang"
    ]
    return keys if len(keys) >= count else None


async def _refuses_connections(http: aiohttp.ClientSession, gateway: Proc) -> bool | None:
    """True once a new connection is refused. A connection attempt made at the very moment the
    listening socket closes can hang before it is refused (3 s has been seen, a TCP retransmit):
    such an attempt is abandoned after 0.5 s and the next one tells."""
    try:
        async with http.get(
            gateway.url + "/healthz", timeout=aiohttp.ClientTimeout(total=0.5)
        ) as resp:
            await resp.read()
    except aiohttp.ClientConnectorError:
        return True
    except TimeoutError:
        return None
    return None


async def _sent_per_key(http: aiohttp.ClientSession, sandbox: Proc) -> dict[str, int]:
    return dict((await sandbox_admin(http, sandbox, "charges"))["idempotency_keys"])


@dataclass
class _Setup:
    sandbox: Proc
    gateway: Proc
    db_url: str
    api: Api
    token: str
    config: Callable[[], str]


async def _start(
    procs: Processes,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    vault: Any,
    *,
    hang_seconds: float,
    shutdown_timeout: float,
    deadline_seconds: float,
) -> _Setup:
    db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    _, api_key = await create_merchant(db_url, vault.addr, vault.root_token)
    sandbox = await procs.sandbox(hang_seconds=hang_seconds)

    def config() -> str:
        return gateway_config(
            database_url=db_url,
            vault_addr=vault.addr,
            vault_token=vault.root_token,
            server={"shutdown_timeout": shutdown_timeout},
            connectors={
                "sandbox": sandbox_section(
                    sandbox, deadline_seconds=deadline_seconds, retry_attempts=3
                )
            },
        )

    gateway = await procs.gateway(config())
    api = Api(http, gateway, api_key)
    return _Setup(sandbox, gateway, db_url, api, await api.tokenize(), config)


def _fire(api: Api, token: str, count: int, prefix: str) -> list[asyncio.Task[Reply]]:
    return [
        asyncio.create_task(
            api.post(
                "/v1/payments",
                payment_body(token, _SLOW, reference=f"{prefix}-{n}"),
                key=f"{prefix}-{n}",
            )
        )
        for n in range(count)
    ]


@pytest.mark.slow
async def test_sigterm_drains_in_flight_payments_then_exits_0(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    # Well above the provider's 3 s: exiting before it shows the drain ended when the last
    # payment did, not when the timeout ran out (5 s was once outlasted on a loaded machine).
    shutdown_timeout, hang = 10.0, 3.0
    async with Processes(tmp_path) as procs, aiohttp.ClientSession() as http:
        setup = await _start(
            procs,
            http,
            tmp_path,
            provisioned_vault,
            hang_seconds=hang,
            shutdown_timeout=shutdown_timeout,
            deadline_seconds=10.0,
        )
        sandbox, gateway = setup.sandbox, setup.gateway
        tasks = _fire(setup.api, setup.token, _IN_FLIGHT, "drain")
        await eventually(lambda: _hanging(http, sandbox, _IN_FLIGHT), 10, "all at the provider")

        gateway.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        # New connections are refused at once, while the old ones drain: before any of the
        # in-flight payments is answered (the provider holds each for 3 s). A gateway that kept
        # listening through the drain would refuse connections only once it had exited, after
        # the answers, however fast or slow the machine is.
        await eventually(
            lambda: _refuses_connections(http, gateway), shutdown_timeout, "stops listening"
        )
        answered = [task for task in tasks if task.done()]
        assert not answered, "still listening after in-flight payments were answered"
        replies = await asyncio.gather(*tasks)
        assert await gateway.wait(shutdown_timeout + 2) == 0, gateway.output()
        exited_after = time.monotonic() - stopped_at
        assert exited_after < shutdown_timeout, exited_after

        for reply in replies:
            assert reply.status == 201, reply
            assert reply.body["status"] == "authorized", reply.body
            assert [a["outcome"] for a in reply.body["attempts"]] == ["succeeded"]
        sent = await _sent_per_key(http, sandbox)
        assert len(sent) == _IN_FLIGHT and set(sent.values()) == {1}

        async with database(setup.db_url) as db:
            keys = await db.fetchall("SELECT state, resource_id FROM idempotency_keys")
            open_attempts = await db.fetchval(
                "SELECT COUNT(*) FROM payment_attempts WHERE outcome IS NULL "
                "OR outcome = 'unknown' OR next_reconcile_at IS NOT NULL"
            )
        assert sorted(k["state"] for k in keys) == ["done"] * _IN_FLIGHT
        assert {k["resource_id"] for k in keys} == {r.body["id"] for r in replies}
        assert open_attempts == 0


@pytest.mark.slow
async def test_sigterm_with_deadline_inside_the_drain_answers_unknown_and_never_resends(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    # The provider answers inside the drain, long after the deadline: 1 s deadline, 6 s reply,
    # 8 s drain. (A gateway that exits when its calls end, as it should, waits none of them.)
    shutdown_timeout, deadline, hang = 8.0, 1.0, 6.0
    async with Processes(tmp_path) as procs, aiohttp.ClientSession() as http:
        setup = await _start(
            procs,
            http,
            tmp_path,
            provisioned_vault,
            hang_seconds=hang,
            shutdown_timeout=shutdown_timeout,
            deadline_seconds=deadline,
        )
        sandbox, gateway = setup.sandbox, setup.gateway
        tasks = _fire(setup.api, setup.token, _IN_FLIGHT, "deadline")
        await eventually(lambda: _hanging(http, sandbox, _IN_FLIGHT), 10, "all at the provider")
        # Every call started before this moment (however slowly a loaded machine sent them), so
        # each deadline ends within 1 s of it; the provider answers the last of them about 6 s
        # after it, the drain ends 8 s after the SIGTERM below.
        at_provider = time.monotonic()

        gateway.signal(signal.SIGTERM)
        replies = await asyncio.gather(*tasks)
        answered_after = time.monotonic() - at_provider
        assert await gateway.wait(shutdown_timeout + 2) == 0, gateway.output()
        # Each call ended at its own deadline (not at the provider's reply, not at the drain's
        # end): 3 s of slack for a loaded machine, still 3 s short of the provider's answer.
        assert answered_after < deadline + 3.0, answered_after
        for reply in replies:
            assert reply.status == 201, reply
            assert reply.body["status"] == "unknown", reply.body
            assert [a["outcome"] for a in reply.body["attempts"]] == ["unknown"]

        # Nothing was re-sent after the deadline: each key reached the provider exactly once.
        sent = await _sent_per_key(http, sandbox)
        assert len(sent) == _IN_FLIGHT and set(sent.values()) == {1}, sent

        async with database(setup.db_url) as db:
            attempts = await db.fetchall("SELECT outcome, next_reconcile_at FROM payment_attempts")
        assert len(attempts) == _IN_FLIGHT
        assert all(a["outcome"] == "unknown" and a["next_reconcile_at"] for a in attempts)


@pytest.mark.slow
async def test_sigterm_with_provider_past_the_drain_leaves_nothing_half_written(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    shutdown_timeout = 1.0
    async with Processes(tmp_path) as procs, aiohttp.ClientSession() as http:
        setup = await _start(
            procs,
            http,
            tmp_path,
            provisioned_vault,
            hang_seconds=30.0,
            shutdown_timeout=shutdown_timeout,
            deadline_seconds=20.0,
        )
        sandbox, gateway = setup.sandbox, setup.gateway
        tasks = _fire(setup.api, setup.token, _IN_FLIGHT, "cut")
        await eventually(lambda: _hanging(http, sandbox, _IN_FLIGHT), 10, "all at the provider")

        gateway.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        cut_after = time.monotonic() - stopped_at
        assert await gateway.wait(2 * shutdown_timeout + 8) == 0, gateway.output()
        exited_after = time.monotonic() - stopped_at
        # aiohttp drains in two phases of shutdown_timeout each: it waits, then marks the
        # requests cancelled (which interrupts only a handler reading its body), waits again,
        # and only then cancels the handlers. So the cut comes after ~2x shutdown_timeout (2 s
        # here, the exit a few ms later). Not before the drain; and far from what not cutting
        # would cost: the connector's 20 s deadline, the provider's 30 s. The slack above 2 s
        # is for a loaded machine.
        assert shutdown_timeout <= cut_after < 2 * shutdown_timeout + 5, cut_after
        assert exited_after < 2 * shutdown_timeout + 6, (cut_after, exited_after)
        for outcome in outcomes:
            # Cut off at the drain's end: no answer (the merchant retries with its key).
            assert isinstance(outcome, aiohttp.ClientError), outcome
        assert "unhandled_error" not in gateway.output()

        async with database(setup.db_url) as db:
            payments = await db.fetchall("SELECT id, status FROM payments")
            attempts = await db.fetchall(
                "SELECT payment_id, outcome, next_reconcile_at FROM payment_attempts"
            )
            keys = await db.fetchall(
                "SELECT key, state, locked_until, resource_id FROM idempotency_keys"
            )
        # Each payment: created, its attempt recorded before sending and still open (the
        # reconciler will sync it), its key released with the payment bound to it.
        assert len(payments) == _IN_FLIGHT and {p["status"] for p in payments} == {None}
        assert sorted(a["payment_id"] for a in attempts) == sorted(p["id"] for p in payments)
        assert all(a["outcome"] is None and a["next_reconcile_at"] for a in attempts)
        assert {k["state"] for k in keys} == {"in_progress"}
        assert {k["locked_until"] for k in keys} == {0}, "claims were not released"
        assert {k["resource_id"] for k in keys} == {p["id"] for p in payments}

        # A new process: the merchant's retries resume the payments at once (no lease to wait
        # out) and find the authorizations the provider made; nothing is charged twice.
        api = setup.api.on(await procs.gateway(setup.config()))
        for n in range(_IN_FLIGHT):
            body = payment_body(setup.token, _SLOW, reference=f"cut-{n}")
            reply = await api.post("/v1/payments", body, key=f"cut-{n}")
            assert reply.status == 201, reply
            assert reply.body["status"] == "authorized", reply.body
        charges = await sandbox_admin(http, sandbox, "charges")
        assert len(charges["charges"]) == _IN_FLIGHT
        assert set(charges["idempotency_keys"].values()) == {1}, charges["idempotency_keys"]


def _workers(pid: int) -> list[int]:
    """The gateway's worker processes (multiprocessing spawn children, not its resource tracker)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    workers = []
    for child in text.split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(int(child))
    return workers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
async def test_sigterm_to_a_multi_worker_gateway_drains_every_worker(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    """``workers = 2``: the parent forwards SIGTERM, each worker drains its own requests, the
    parent exits 0 once both have, and no worker is left behind."""
    shutdown_timeout = 5.0
    vault = provisioned_vault
    db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    _, api_key = await create_merchant(db_url, vault.addr, vault.root_token)
    async with Processes(tmp_path) as procs, aiohttp.ClientSession() as http:
        sandbox = await procs.sandbox(hang_seconds=1.5)
        gateway = await procs.gateway(
            gateway_config(
                database_url=db_url,
                vault_addr=vault.addr,
                vault_token=vault.root_token,
                server={"shutdown_timeout": shutdown_timeout, "workers": 2},
                connectors={"sandbox": sandbox_section(sandbox, deadline_seconds=10.0)},
            )
        )
        workers = await eventually(
            lambda: _worker_pids(gateway.pid, 2), 10, "two workers are running"
        )
        # Separate connections, so that SO_REUSEPORT can spread them over both workers.
        api = Api(http, gateway, api_key)
        token = await api.tokenize()
        tasks = _fire(api, token, _IN_FLIGHT, "workers")
        await eventually(lambda: _hanging(http, sandbox, _IN_FLIGHT), 10, "all at the provider")

        gateway.signal(signal.SIGTERM)
        replies = await asyncio.gather(*tasks)
        assert await gateway.wait(shutdown_timeout + 3) == 0, gateway.output()
        for reply in replies:
            assert reply.status == 201 and reply.body["status"] == "authorized", reply
        assert not [pid for pid in workers if _alive(pid)]
        sent = await _sent_per_key(http, sandbox)
        assert len(sent) == _IN_FLIGHT and set(sent.values()) == {1}


async def _worker_pids(parent: int, count: int) -> list[int] | None:
    workers = _workers(parent)
    return workers if len(workers) >= count else None


@pytest.mark.slow
async def test_client_disconnect_mid_call_settles_at_the_deadline_without_resending(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    """The merchant hangs up while the provider is slow: the gateway still finishes the call at
    its deadline (``unknown``, reconciliation scheduled), stores that answer under the key,
    and sends nothing again; the merchant's retry gets the stored answer."""
    deadline = 1.0
    async with Processes(tmp_path) as procs, aiohttp.ClientSession() as http:
        setup = await _start(
            procs,
            http,
            tmp_path,
            provisioned_vault,
            hang_seconds=4.0,
            shutdown_timeout=5.0,
            deadline_seconds=deadline,
        )
        body = payment_body(setup.token, _SLOW, reference="hang-up")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(setup.api.post("/v1/payments", body, key="hang-up"), 0.3)

        async def settled() -> Any:
            async with database(setup.db_url) as db:
                row = await db.fetchone("SELECT outcome, next_reconcile_at FROM payment_attempts")
                key = await db.fetchone("SELECT state, response_status FROM idempotency_keys")
            answered = key is not None and key["state"] == "done"
            return (row, key) if row is not None and answered else None

        attempt, key = await eventually(settled, deadline + 3, "the request is answered")
        assert attempt["outcome"] == "unknown" and attempt["next_reconcile_at"]
        assert (key["state"], key["response_status"]) == ("done", 201)
        # The call ended at its deadline and nothing was sent again for the key.
        assert set((await _sent_per_key(http, setup.sandbox)).values()) == {1}

        retry = await setup.api.post("/v1/payments", body, key="hang-up")
        assert retry.status == 201 and retry.body["status"] == "unknown"
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert set((await _sent_per_key(http, setup.sandbox)).values()) == {1}
