"""Benchmark: ``POST /v1/tokens`` and ``POST /v1/tokens/batch`` over loopback.

Prints, for each round on this machine: the gateway with group-commit batching, the same gateway
with batching off (one Vault call per request), an aiohttp hello-world service with the same
worker count, and the batch endpoint with 1,000 cards per request; tokens/s, p50/p99, the
gateway's peak RSS per worker, and the CPU time the gateway and OpenBao spent per request (a
figure that holds up when other work shares the cores, unlike throughput). Then the medians over
rounds; ratios are taken within each round (same minute, same neighbours) before the median.
Full validation, keyed fingerprint and SQLite persistence are all on the measured path; OpenBao
(dev server) runs on the same machine.

The gateway logs in to OpenBao with the ``tessera-gateway`` AppRole, as deployed
(``--vault-auth root`` for the dev server's root token, which skips OpenBao's policy checks).

    python bench/tokenize.py [--workers 2] [--duration 10] [--connections 64] [--rounds 3]

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
import contextlib  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from load import (  # noqa: E402
    REPO,
    CpuWindow,
    LoadResult,
    machine_facts,
    peak_rss_mb,
    scratch_postgres,
    tree_pids,
    wait_http,
    wrk_post,
)

from gateway.merchants import MerchantStore  # noqa: E402
from vault.database import open_database  # noqa: E402
from vault.devserver import DevServer, free_port  # noqa: E402
from vault.provisioning import ensure_tenant_keys, provision  # noqa: E402

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031}


@dataclass
class Phase:
    """One measured load run: wrk's figures plus what the processes spent on it."""

    load: LoadResult
    rss_mb: float = 0.0
    #: CPU time of the service's processes (all workers) per request, in microseconds.
    cpu_us: float = 0.0
    #: OpenBao's CPU time per request, in microseconds.
    bao_us: float = 0.0
    #: Fraction of the whole machine's CPU that was busy (anyone's work) during the run.
    busy: float = 0.0

    def row(self, label: str, unit: str, scale: float = 1.0) -> str:
        extra = f"  CPU/req: svc {self.cpu_us:6.0f} us"
        if self.bao_us:
            extra += f", bao {self.bao_us:4.0f} us"
        if self.rss_mb:
            extra += f"  RSS {self.rss_mb:.0f} MB/worker"
        return self.load.row(label, unit, scale) + extra + f"  machine busy {self.busy:.0%}"


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
    path: Path,
    *,
    port: int,
    db_url: str,
    bao: DevServer,
    batching: bool,
    workers: int,
    encryption: str,
    vault_auth: str,
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
{vault_auth}

[tokenization]
batching = {"true" if batching else "false"}
encryption = "{encryption}"
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
    except ProcessLookupError:
        proc.wait()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _measure(
    proc: subprocess.Popen[bytes],
    url: str,
    body: dict[str, object],
    *,
    headers: dict[str, str],
    connections: int,
    duration: float,
    bao: DevServer | None,
) -> Phase:
    wrk_post(url, body, headers=headers, connections=connections, duration=2)  # warm-up
    pids = tree_pids(proc.pid)
    with CpuWindow(pids) as svc, CpuWindow([bao.pid] if bao else []) as vault:
        result = wrk_post(url, body, headers=headers, connections=connections, duration=duration)
    count = max(result.requests, 1)
    return Phase(
        load=result,
        rss_mb=peak_rss_mb(pids[1:] or pids),
        cpu_us=svc.cpu_s / count * 1e6,
        bao_us=vault.cpu_s / count * 1e6,
        busy=svc.machine_busy,
    )


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
    encryption: str,
    vault_auth: str,
    batch_cards: int = 0,
) -> Phase:
    port = free_port()
    cfg = _config(
        workdir / f"gw-{port}.toml",
        port=port,
        db_url=db_url,
        bao=bao,
        batching=batching,
        workers=workers,
        encryption=encryption,
        vault_auth=vault_auth,
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
        return _measure(
            proc, url, body, headers=auth, connections=connections, duration=duration, bao=bao
        )
    finally:
        _stop(proc)


def _run_hello(workdir: Path, *, workers: int, duration: float, connections: int) -> Phase:
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
        return _measure(
            proc,
            url,
            {"card": CARD},
            headers={},
            connections=connections,
            duration=duration,
            bao=None,
        )
    finally:
        _stop(proc)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _median_phase(phases: list[Phase]) -> Phase:
    return Phase(
        load=LoadResult(
            rps=_median([p.load.rps for p in phases]),
            p50_ms=_median([p.load.p50_ms for p in phases]),
            p99_ms=_median([p.load.p99_ms for p in phases]),
            non_2xx=sum(p.load.non_2xx for p in phases),
            socket_errors=sum(p.load.socket_errors for p in phases),
        ),
        rss_mb=max(p.rss_mb for p in phases),
        cpu_us=_median([p.cpu_us for p in phases]),
        bao_us=_median([p.bao_us for p in phases]),
        busy=_median([p.busy for p in phases]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch-cards", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all four runs (3)")
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        help="keep tokens in a scratch database on this PostgreSQL server instead of SQLite\n"
        "(created, then dropped; e.g. postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    parser.add_argument(
        "--encryption",
        choices=("envelope", "transit"),
        default="envelope",
        help="[tokenization] encryption of the measured gateway (default: envelope, the default)",
    )
    parser.add_argument(
        "--vault-auth",
        choices=("approle", "root"),
        default="approle",
        help="how the gateway logs in to OpenBao: the tessera-gateway AppRole, as deployed and as\n"
        "`tessera dev` does (default), or the dev server's root token (what passes 1-7 used;\n"
        "OpenBao skips its policy checks for root, about half its CPU per call: bench/transit.py)",
    )
    args = parser.parse_args()
    print(f"tessera tokenize benchmark: {machine_facts()}")
    print(
        f"settings: workers={args.workers} connections={args.connections} (batch endpoint: 4) "
        f"duration={args.duration:g}s rounds={args.rounds} encryption={args.encryption}, "
        f"vault-auth={args.vault_auth}, "
        "wrk on loopback, "
        f"{'PostgreSQL (same machine)' if args.postgres else 'SQLite'} store, "
        "gateway log level WARNING\n"
        "the 2 cores are shared with OpenBao, wrk and other people's work: 'machine busy' is "
        "everyone's share of both cores; CPU/req is what our processes spent per request\n"
    )
    common = {"workers": args.workers, "duration": args.duration}
    rounds: dict[str, list[Phase]] = {"batched": [], "single": [], "hello": [], "bulk": []}
    labels = {
        "batched": ("gateway, group-commit batching", "tok/s", 1),
        "single": ("gateway, batching off (1 Vault call/req)", "tok/s", 1),
        "hello": ("aiohttp hello-world (same workers)", "req/s", 1),
        "bulk": (f"batch endpoint, {args.batch_cards} cards/request", "cards/s", args.batch_cards),
    }
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        bao = stack.enter_context(DevServer())
        workdir = Path(tmp)
        provisioned = provision(bao.addr, bao.root_token)
        db_url = f"sqlite:///{workdir / 'bench.db'}"
        if args.postgres:
            db_url = stack.enter_context(scratch_postgres(args.postgres))
        merchant_id, key = asyncio.run(_merchant(db_url))
        ensure_tenant_keys(bao.addr, bao.root_token, merchant_id)
        gw = {
            "workdir": workdir,
            "bao": bao,
            "db_url": db_url,
            "key": key,
            "encryption": args.encryption,
            "vault_auth": (
                f'token = "{bao.root_token}"'
                if args.vault_auth == "root"
                else f'role_id = "{provisioned.gateway_role_id}"\n'
                f'secret_id = "{provisioned.gateway_secret_id}"'
            ),
        }
        runs = {
            "batched": lambda: _run_gateway(
                **gw, batching=True, connections=args.connections, **common
            ),
            "single": lambda: _run_gateway(
                **gw, batching=False, connections=args.connections, **common
            ),
            "hello": lambda: _run_hello(workdir, connections=args.connections, **common),
            "bulk": lambda: _run_gateway(
                **gw, batching=True, connections=4, batch_cards=args.batch_cards, **common
            ),
        }
        for number in range(1, args.rounds + 1):
            print(f"round {number}:")
            for name, run in runs.items():
                phase = run()
                rounds[name].append(phase)
                label, unit, scale = labels[name]
                print("  " + phase.row(label, unit, scale), flush=True)

    med = {name: _median_phase(phases) for name, phases in rounds.items()}
    n = args.rounds
    print(f"\nmedians of {n} round(s):")
    for name, phase in med.items():
        label, unit, scale = labels[name]
        print("  " + phase.row(label, unit, scale))
    vs_hello = _median(
        [b.load.rps / h.load.rps for b, h in zip(rounds["batched"], rounds["hello"], strict=True)]
    )
    vs_single = _median(
        [b.load.rps / s.load.rps for b, s in zip(rounds["batched"], rounds["single"], strict=True)]
    )
    cpu_vs_hello = med["hello"].cpu_us / med["batched"].cpu_us
    batched, bulk = med["batched"], med["bulk"]
    cards = bulk.load.rps * args.batch_cards
    per_card_us = (bulk.cpu_us + bulk.bao_us) / args.batch_cards
    print()
    print(f"batched / hello-world (same round):  {vs_hello:.2f}x   (target >= 0.30x)")
    print(f"  by CPU/request instead (hello / gateway): {cpu_vs_hello:.2f}x")
    print(f"batched / batching off (same round): {vs_single:.2f}x   (target >= 2x)")
    print(
        f"tokens/s: {batched.load.rps:,.0f} (target >= 10,000), p99 {batched.load.p99_ms:.1f} ms "
        f"(target <= 20 ms); peak RSS {batched.rss_mb:.0f} MB/worker (target <= 200 MB)"
    )
    print(
        f"batch endpoint: {cards:,.0f} cards/s (target >= 100,000); gateway + OpenBao CPU "
        f"{per_card_us:.1f} us/card, i.e. at most ~{(os.cpu_count() or 1) / per_card_us * 1e6:,.0f}"
        f" cards/s if both cores did nothing else"
    )


if __name__ == "__main__":
    main()
