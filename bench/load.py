"""Load-generation helpers shared by the benchmarks: wrk on loopback, process RSS and CPU time,
machine facts.

Every run is bounded in time and sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

#: The repository root: subprocesses run from here, never from bench/ (see bench/tokenize.py).
REPO = Path(__file__).resolve().parent.parent

_LATENCY_RE = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
_COUNT_RE = re.compile(r"(\d+) requests in ")
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    requests: int = 0

    def row(self, label: str, unit: str = "req/s", scale: float = 1.0) -> str:
        return (
            f"{label:<44} {self.rps * scale:>10,.0f} {unit:<8} p50 {self.p50_ms:>7.2f} ms  "
            f"p99 {self.p99_ms:>7.2f} ms  errors {self.non_2xx + self.socket_errors}"
        )


def machine_facts() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    ).stdout.strip()
    cores = os.cpu_count()
    return f"commit {commit or 'unknown'}, {cores} cores, OpenBao dev server on this machine"


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready in {timeout} s")


def wrk_post(
    url: str,
    body: dict[str, object],
    *,
    headers: dict[str, str],
    connections: int,
    duration: float,
    threads: int = 2,
) -> LoadResult:
    if not url.startswith("http://127.0.0.1"):
        raise ValueError("benchmarks send traffic to 127.0.0.1 only")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is needed for the benchmarks: apt-get install wrk")
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}"]
    for name, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        proc = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",  # wrk takes whole seconds ("10.0s" fails)
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=False,
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    out = proc.stdout
    lat = {m.group(1): _ms(float(m.group(2)), m.group(3)) for m in _LATENCY_RE.finditer(out)}
    errors = _ERRORS_RE.search(out)
    non2xx = _NON2XX_RE.search(out)
    rps = _RPS_RE.search(out)
    count = _COUNT_RE.search(out)
    return LoadResult(
        rps=float(rps.group(1)) if rps else 0.0,
        p50_ms=lat.get("50", float("nan")),
        p99_ms=lat.get("99", float("nan")),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        requests=int(count.group(1)) if count else 0,
    )


def _ms(value: float, unit: str) -> float:
    return {"us": value / 1000, "ms": value, "s": value * 1000}[unit]


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def peak_rss_mb(pids: list[int]) -> float:
    """The largest VmHWM (peak resident set) among ``pids``, in MB."""
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by ``pids`` (processes that exited count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _machine_ticks() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields)
    return total - fields[3] - fields[4], total  # busy (not idle, not iowait), all


class CpuWindow:
    """CPU time of some processes, and how busy the whole machine was, over a ``with`` block.

    The machine is shared: ``machine_busy`` near 1.0 while ``cpu_s`` of our processes is well
    below the core count means other work took the rest, and throughput figures are pessimistic.
    """

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self.cpu_s = 0.0
        self.machine_busy = 0.0
        self.wall_s = 0.0

    def __enter__(self) -> CpuWindow:
        self._cpu0 = cpu_seconds(self._pids)
        self._ticks0 = _machine_ticks()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self._t0
        self.cpu_s = cpu_seconds(self._pids) - self._cpu0
        busy, total = _machine_ticks()
        elapsed = total - self._ticks0[1]
        self.machine_busy = (busy - self._ticks0[0]) / elapsed if elapsed else 0.0


@contextlib.contextmanager
def scratch_postgres(dsn: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server of ``dsn`` (loopback only), dropped afterwards.

    Yields the DSN of the scratch database; the database named in ``dsn`` is only used to connect.
    """
    import asyncio

    import asyncpg

    parts = urlsplit(dsn)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise ValueError("benchmarks use a PostgreSQL on 127.0.0.1 only")
    name = f"tessera_bench_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
