"""Benchmark: ``POST /v1/tokens`` and ``POST /v1/tokens/batch`` over loopback.

Prints, from one run on this machine: the gateway with group-commit batching, the same gateway
with batching off (one Vault call per request), an aiohttp hello-world service with the same
worker count, and the batch endpoint with 1,000 cards per request; tokens/s, p50/p99 and the
gateway's peak RSS per worker. Full validation, keyed fingerprint and SQLite persistence are all
on the measured path; OpenBao (dev server) runs on the same machine.

    python bench/tokenize.py [--workers 2] [--duration 10] [--connections 64]

Needs ``wrk`` (``apt-get install wrk``). Traffic goes to 127.0.0.1 only; every run is bounded.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this directory is first on sys.path and this file would shadow the stdlib's
# ``tokenize`` (imported by linecache, hence by logging and asyncio): keep the directory last.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH] + [_BENCH]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from load import (  # noqa: E402
    REPO,
    LoadResult,
    machine_facts,
    peak_rss_mb,
    tree_pids,
    wait_http,
    wrk_post,
)

from gateway.merchants import MerchantStore  # noqa: E402
from vault.database import open_database  # noqa: E402
from vault.devserver import DevServer, free_port  # noqa: E402
from vault.provisioning import ensure_tenant_keys, provision  # noqa: E402

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}


async def _merchant(db_url: str) -> tuple[str, str]:
    db = await open_database(db_url)
    try:
        store = MerchantStore(db)
        await store.migrate()
        merchant, key = await store.create("bench")
        return merchant.id, key
    finally:
        await db.close()


def _config(
    path: Path, *, port: int, db_url: str, bao: DevServer, batching: bool, workers: int
) -> Path:
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
workers = {workers}

[database]
url = "{db_url}"

[vault]
addr = "{bao.addr}"
token = "{bao.root_token}"

[tokenization]
batching = {"true" if batching else "false"}
"""
    )
    return path


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # cwd: the repository root, never bench/ (whose tokenize.py would shadow the stdlib's).
        return subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True, cwd=REPO)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run_gateway(
    workdir: Path,
    bao: DevServer,
    db_url: str,
    key: str,
    *,
    batching: bool,
    workers: int,
    duration: float,
    connections: int,
    batch_cards: int = 0,
) -> tuple[LoadResult, float]:
    port = free_port()
    cfg = _config(
        workdir / f"gw-{port}.toml",
        port=port,
        db_url=db_url,
        bao=bao,
        batching=batching,
        workers=workers,
    )
    proc = _start(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(cfg),
        ],
        workdir / "gateway.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        auth = {"Authorization": f"Bearer {key}"}
        if batch_cards:
            url, body = f"http://127.0.0.1:{port}/v1/tokens/batch", {"cards": [CARD] * batch_cards}
        else:
            url, body = f"http://127.0.0.1:{port}/v1/tokens", {"card": CARD}
        wrk_post(url, body, headers=auth, connections=connections, duration=2)  # warm-up
        result = wrk_post(url, body, headers=auth, connections=connections, duration=duration)
        rss = peak_rss_mb(tree_pids(proc.pid)[1:] or [proc.pid])
        return result, rss
    finally:
        _stop(proc)


def _run_hello(workdir: Path, *, workers: int, duration: float, connections: int) -> LoadResult:
    port = free_port()
    proc = _start(
        [
            sys.executable,
            str(Path(__file__).parent / "hello.py"),
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        workdir / "hello.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/v1/tokens"
        wrk_post(url, {"card": CARD}, headers={}, connections=connections, duration=2)
        return wrk_post(url, {"card": CARD}, headers={}, connections=connections, duration=duration)
    finally:
        _stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch-cards", type=int, default=1000)
    args = parser.parse_args()
    print(f"tessera tokenize benchmark: {machine_facts()}")
    print(
        f"settings: workers={args.workers} connections={args.connections} "
        f"duration={args.duration}s, wrk on loopback, SQLite store\n"
    )
    with tempfile.TemporaryDirectory() as tmp, DevServer() as bao:
        workdir = Path(tmp)
        provision(bao.addr, bao.root_token)
        db_url = f"sqlite:///{workdir / 'bench.db'}"
        merchant_id, key = asyncio.run(_merchant(db_url))
        ensure_tenant_keys(bao.addr, bao.root_token, merchant_id)
        common = {"workers": args.workers, "duration": args.duration}

        batched, rss = _run_gateway(
            workdir, bao, db_url, key, batching=True, connections=args.connections, **common
        )
        print(
            batched.row("gateway, group-commit batching", "tok/s"), f" peak RSS {rss:.0f} MB/worker"
        )
        single, rss1 = _run_gateway(
            workdir, bao, db_url, key, batching=False, connections=args.connections, **common
        )
        print(
            single.row("gateway, batching off (1 Vault call/request)", "tok/s"),
            f" peak RSS {rss1:.0f} MB/worker",
        )
        hello = _run_hello(workdir, connections=args.connections, **common)
        print(hello.row("aiohttp hello-world (same workers)", "req/s"))
        bulk, rss2 = _run_gateway(
            workdir,
            bao,
            db_url,
            key,
            batching=True,
            connections=4,
            batch_cards=args.batch_cards,
            **common,
        )
        print(
            bulk.row(
                f"batch endpoint, {args.batch_cards} cards/request",
                "cards/s",
                scale=args.batch_cards,
            ),
            f" peak RSS {rss2:.0f} MB/worker",
        )
        print()
        print(f"batched / hello-world:  {batched.rps / hello.rps:.2f}x   (target >= 0.30x)")
        print(f"batched / batching off: {batched.rps / single.rps:.2f}x   (target >= 2x)")
        print(
            f"tokens/s: {batched.rps:,.0f} (target >= 10,000), p99 {batched.p99_ms:.1f} ms "
            f"(target <= 20 ms); batch: {bulk.rps * args.batch_cards:,.0f} cards/s "
            f"(target >= 100,000)"
        )
        time.sleep(0.1)


if __name__ == "__main__":
    main()
