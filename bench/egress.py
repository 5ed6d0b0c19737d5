"""CPU per provider call: the SDK's egress client vs bare httpx and bare aiohttp.

A small aiohttp server (a separate process, so its CPU is not counted) answers a JSON
authorization on 127.0.0.1. Each client makes N sequential calls and N calls with 16 in flight;
the figure is this process's CPU time (``time.process_time``, all threads: the resolver's too)
divided by N, the median of ``--rounds`` rounds. CPU per call holds up on a shared machine much
better than throughput does.

Clients:

``sdk``         what a payment costs: a ``CallContext`` per call (as the runtime builds one per
                attempt), card placeholders in a JSON body detokenized through a revealer,
                ``ctx.send`` through ``build_http_client`` (egress transport, host policy, guarded
                network transport)
``sdk-client``  ``build_http_client``'s client alone: ``client.post(url, json=...)``, no scope
``httpx``       a bare ``httpx.AsyncClient()`` (default transport)
``aiohttp``     a bare ``aiohttp.ClientSession()``

``--network`` picks the SDK's network transport (``HttpSettings.network``) for the sdk clients.

    /work/venv/bin/python bench/egress.py --calls 2000 --rounds 3
    /work/venv/bin/python bench/egress.py --clients sdk --profile sdk > profile.txt
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ is first on sys.path and bench/tokenize.py would shadow the stdlib's
# ``tokenize`` (imported by linecache, hence by logging and aiohttp): keep the directory last.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH] + [_BENCH]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import structlog  # noqa: E402
from aiohttp import web  # noqa: E402

from connectors.sandbox import MANIFEST  # noqa: E402
from normalization import CardMethod  # noqa: E402
from sdk import (  # noqa: E402
    CallContext,
    Credentials,
    Deadline,
    HostPolicy,
    HttpSettings,
    build_http_client,
)
from sdk.testing import FakeTokenRevealer, canary_cvc, canary_pan  # noqa: E402

_ROOT = os.path.dirname(_BENCH)
REPLY = {"id": "pay_123", "status": "authorized", "amount": 1050, "currency": "EUR"}
TENANT = "merchant_1"

Call = Callable[[], Awaitable[Any]]


# -- the server (a child process) -------------------------------------------------------------


async def _payments(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(REPLY)


def serve() -> None:
    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _payments)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
        await runner.cleanup()

    asyncio.run(main())


# -- the clients ------------------------------------------------------------------------------


def _settings(network: str | None) -> HttpSettings:
    return HttpSettings() if network is None else HttpSettings(network=network)


async def _client(kind: str, base: str, network: str | None) -> tuple[Call, Call]:
    """(one call, close) for ``kind``."""
    body = {"amount": 1050, "currency": "EUR", "reference": "order-42"}
    if kind in ("sdk", "sdk-client"):
        http = build_http_client(
            HostPolicy(frozenset({"127.0.0.1"}), test_mode=True), _settings(network)
        )
        if kind == "sdk-client":

            async def call() -> Any:
                return (await http.post(f"{base}/v1/payments", json=body)).json()

            return call, http.aclose
        revealer = FakeTokenRevealer()
        token = revealer.add(TENANT, canary_pan(), cvc=canary_cvc(), exp_month=3, exp_year=2031)
        credentials = Credentials({"api_key": "sk_test_bench"})

        async def sdk_call() -> Any:
            revealer.reveals.clear()
            ctx = CallContext(
                manifest=MANIFEST,
                operation="authorize",
                tenant=TENANT,
                deadline=Deadline.after(5),
                http=http,
                base_url=base,
                credentials=credentials,
                revealer=revealer,
                idempotency_key="idem-1",
                correlation_id="req-1",
            )
            card = ctx.card(CardMethod(token=token))
            payload = {
                **body,
                "card": {
                    "number": card.number,
                    "cvc": card.cvc,
                    "exp_month": card.exp_month,
                    "exp_year": card.exp_year,
                },
            }
            response = await ctx.send(
                "POST",
                "/v1/payments",
                json=payload,
                headers={"Authorization": "Bearer sk_test_bench"},
            )
            return response.json()

        return sdk_call, http.aclose
    if kind == "httpx":
        client = httpx.AsyncClient()

        async def httpx_call() -> Any:
            return (await client.post(f"{base}/v1/payments", json=body)).json()

        return httpx_call, client.aclose
    if kind == "aiohttp":
        session = aiohttp.ClientSession()

        async def aiohttp_call() -> Any:
            async with session.post(f"{base}/v1/payments", json=body) as response:
                return await response.json()

        return aiohttp_call, session.close
    raise SystemExit(f"unknown client {kind!r}")


# -- measuring --------------------------------------------------------------------------------


async def _run(call: Call, calls: int, in_flight: int) -> float:
    """CPU µs per call over ``calls`` calls, ``in_flight`` at a time."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            reply = await call()
            assert reply["id"] == "pay_123", reply

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return (time.process_time() - started) / calls * 1e6


async def _measure(args: argparse.Namespace, base: str) -> None:
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for kind in args.clients:  # interleaved, round by round, so drift hits all alike
            call, close = await _client(kind, base, args.network)
            try:
                await _run(call, args.warmup, 1)
                for in_flight in (1, args.in_flight):
                    cpu = await _run(call, args.calls, in_flight)
                    results.setdefault((kind, in_flight), []).append(cpu)
            finally:
                await close()
    width = max(len(k) for k in args.clients)
    print(f"{'client':<{width}}  {'sequential':>18}  {f'{args.in_flight} in flight':>18}")
    for kind in args.clients:
        cells = []
        for in_flight in (1, args.in_flight):
            values = results[(kind, in_flight)]
            cells.append(
                f"{statistics.median(values):7.0f} µs ({min(values):.0f}-{max(values):.0f})"
            )
        print(f"{kind:<{width}}  {cells[0]:>18}  {cells[1]:>18}")


async def _profile(args: argparse.Namespace, base: str) -> None:
    call, close = await _client(args.profile, base, args.network)
    try:
        await _run(call, args.warmup, 1)
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        await _run(call, args.calls, args.in_flight)
        profiler.disable()
    finally:
        await close()
    if args.dump:
        profiler.dump_stats(args.dump)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(args.sort).print_stats(args.top)
    print(f"cProfile of {args.profile!r}, {args.calls} calls, {args.in_flight} in flight")
    print(out.getvalue())


def _header(args: argparse.Namespace) -> str:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=_ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "sdk", "bench/egress.py")
    import sdk

    where = os.path.dirname(os.path.dirname(os.path.abspath(sdk.__file__)))
    source = "" if where == _ROOT else f" (sdk imported from {where})"
    return (
        f"commit {commit}{' (sdk/ or bench/egress.py modified)' if dirty else ''}{source}, "
        f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"Python {sys.version.split()[0]}, httpx {httpx.__version__}, aiohttp {aiohttp.__version__}"
        f"; {args.calls} calls per figure after {args.warmup} warm-up, {args.rounds} rounds, "
        f"network {args.network or 'default'}; CPU of this process only (server is a child)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--clients", nargs="+", default=["sdk", "sdk-client", "httpx", "aiohttp"])
    parser.add_argument("--network", default=None, help="HttpSettings.network for sdk clients")
    parser.add_argument("--profile", default=None, help="cProfile this client instead")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--dump", default=None, help="write the cProfile stats to this file")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        print(_header(args))
        asyncio.run(_profile(args, base) if args.profile else _measure(args, base))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
