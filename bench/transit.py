"""Benchmark: what one transit call costs OpenBao and the gateway's client, by batch size.

The group-commit batcher (``vault/batcher.py``) trades latency for fewer, larger transit calls;
whether that pays depends on how a call's cost splits into a fixed part (HTTP, authentication,
policy, routing: paid once per call) and a part per item. This script measures both, on this
machine, against a fresh OpenBao dev server:

- for each batch size (items per ``batch_input``), a fixed number of ``transit/hmac`` calls (what
  a tokenization sends since envelope encryption) from 2 concurrent callers through
  ``vault.client.VaultClient``, the gateway's client;
- OpenBao's CPU time (``/proc``, user + system) per call and per item, and this process's CPU
  time per call (the client: request building, the socket round trip, response parsing);
- each with three kinds of Vault token: the root token (the benches' gateways with
  ``--vault-auth root``), a service token and a batch token carrying the ``tessera-tokenize``
  policy (what an AppRole login could hand out), rounds alternating.

Figures are medians over rounds. CPU time holds up on the shared cores where wall time does not;
wall time per call is printed too. Traffic goes to 127.0.0.1 only; every run is bounded.

    python bench/transit.py [--rounds 3] [--items 6000]
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ is first on sys.path and bench/tokenize.py would shadow the stdlib's
# ``tokenize`` (imported by linecache, hence by logging and asyncio): keep the directory last.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH] + [_BENCH]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from load import cpu_seconds, machine_facts  # noqa: E402

from vault.client import VaultClient  # noqa: E402
from vault.devserver import DevServer  # noqa: E402
from vault.provisioning import (  # noqa: E402
    TOKENIZE_POLICY,
    ensure_tenant_keys,
    fingerprint_key_name,
    provision,
)

TENANT = "bench"
KEY = fingerprint_key_name(TENANT)
BATCH_SIZES = (1, 15, 50, 250)
CALLERS = 2


@dataclass
class Figure:
    bao_us_per_call: float
    client_us_per_call: float
    wall_ms_per_call: float


def _token(bao: DevServer, kind: str) -> str:
    """A token of ``kind`` (``root``, ``service``, ``batch``) that may compute the HMACs."""
    if kind == "root":
        return bao.root_token
    body = {"type": kind, "policies": [TOKENIZE_POLICY], "ttl": "1h", "no_parent": True}
    request = urllib.request.Request(  # noqa: S310 - the loopback dev server's address
        f"{bao.addr}/v1/auth/token/create",
        data=json.dumps(body).encode(),
        headers={"X-Vault-Token": bao.root_token},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        token: str = json.load(reply)["auth"]["client_token"]
    return token


async def _measure(bao: DevServer, token: str, size: int, calls: int) -> Figure:
    inputs = [b"4242424242424242"] * size
    async with VaultClient(bao.addr, token=token) as client:
        await client.transit_hmac(KEY, inputs)  # connection up, key cached: not measured

        async def caller(count: int) -> None:
            for _ in range(count):
                results = await client.transit_hmac(KEY, inputs)
                if any(not isinstance(r, str) for r in results):
                    raise SystemExit(f"transit refused an item: {results[0]!r}")

        bao0, own0, wall0 = cpu_seconds([bao.pid]), time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(calls // CALLERS) for _ in range(CALLERS)))
        bao1, own1, wall1 = cpu_seconds([bao.pid]), time.process_time(), time.perf_counter()
    made = calls // CALLERS * CALLERS
    return Figure(
        bao_us_per_call=1e6 * (bao1 - bao0) / made,
        client_us_per_call=1e6 * (own1 - own0) / made,
        wall_ms_per_call=1e3 * (wall1 - wall0) / made,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--items", type=int, default=6000, help="items per measurement (calls = items / size)"
    )
    args = parser.parse_args()
    print(f"tessera transit call cost: {machine_facts()}")
    print(
        f"settings: transit/hmac sha2-256, {CALLERS} concurrent callers, batch sizes "
        f"{', '.join(map(str, BATCH_SIZES))}, {args.items} items per measurement "
        f"(at least 200 calls), {args.rounds} rounds; CPU from /proc (OpenBao) and "
        "time.process_time (client)\n"
    )
    kinds = ("root", "service", "batch")
    figures: dict[tuple[str, int], list[Figure]] = {}
    with DevServer() as bao:
        provision(bao.addr, bao.root_token)
        ensure_tenant_keys(bao.addr, bao.root_token, TENANT)
        tokens = {kind: _token(bao, kind) for kind in kinds}
        for number in range(1, args.rounds + 1):
            print(f"round {number}:")
            for kind in kinds:
                for size in BATCH_SIZES:
                    calls = max(200, args.items // size)
                    figure = asyncio.run(_measure(bao, tokens[kind], size, calls))
                    figures.setdefault((kind, size), []).append(figure)
                    print("  " + _row(kind, size, figure), flush=True)
    print(f"\nmedians of {args.rounds} round(s):")
    for kind in kinds:
        for size in BATCH_SIZES:
            runs = figures[(kind, size)]
            median = Figure(
                statistics.median(f.bao_us_per_call for f in runs),
                statistics.median(f.client_us_per_call for f in runs),
                statistics.median(f.wall_ms_per_call for f in runs),
            )
            print("  " + _row(kind, size, median))
    one = statistics.median(f.bao_us_per_call for f in figures[("root", 1)])
    big = statistics.median(f.bao_us_per_call for f in figures[("root", BATCH_SIZES[-1])])
    per_item = (big - one) / (BATCH_SIZES[-1] - 1)
    print(
        f"\nOpenBao (root token): ~{one - per_item:,.0f} us fixed per call + ~{per_item:.1f} us "
        f"per item (from the 1- and {BATCH_SIZES[-1]}-item calls)"
    )


def _row(kind: str, size: int, figure: Figure) -> str:
    return (
        f"{kind:<8} {size:>4} items/call  OpenBao {figure.bao_us_per_call:>6,.0f} us/call "
        f"{figure.bao_us_per_call / size:>6.1f} us/item   client {figure.client_us_per_call:>5,.0f}"
        f" us/call {figure.client_us_per_call / size:>6.1f} us/item   wall "
        f"{figure.wall_ms_per_call:>5.2f} ms/call"
    )


if __name__ == "__main__":
    main()
