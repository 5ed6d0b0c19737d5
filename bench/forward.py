"""Benchmark: payment forwarding through the gateway vs calling the sandbox simulator directly.

Open-loop load at a fixed rate: request *i* is due at ``start + i / rate`` whatever happened to
the ones before it, and its latency runs from that due time to the last byte of the reply (wrk2's
rule, so a stall is not hidden by the client waiting for it). Each round measures, one after the
other on the same machine:

``direct @R``            ``POST /v1/authorizations`` to the sandbox simulator: the body, card and
                         headers the sandbox connector sends;
``gateway @R``           ``POST /v1/payments`` with a token to ``tessera serve`` routing to that
                         simulator (connector ``sandbox``): auth, idempotency key, token lookup,
                         payment and attempt rows, Vault reveal for egress, the provider call;

at the target rate (``--rate``, 500/s) and at a rate one gateway worker sustains here
(``--low-rate``, 50/s), then, at the low rate:

``breaker open``         the connector points at a dead port and its breaker is tripped: the time
                         to refuse a payment without sending anything;
``failover: backup``     a gateway whose route is ``[backup]`` (live): the failover baseline;
``failover: open``       route ``[sandbox, backup]``, ``sandbox`` dead with its breaker open;
``failover: closed``     the same with a breaker that never opens (``retry_attempts = 1``): each
                         payment is refused by the dead port first (connection refused), then moves;

and last the gateway's capacity: a closed loop with 16 payments in flight for 3 s.

Added latency = a percentile minus the same percentile of the baseline run in the same round;
the medians over rounds are printed, with the gateway's own view (its /metrics histograms: the
request latency, and the mean time spent in the connector runtime, which for a refused call is
the cost of the refusal itself). Only the ``sandbox`` connector is installed and connector ids
must be distinct manifests, so the failover gateways run this file's ``--gateway`` mode: it
registers a copy of the sandbox connector as ``backup`` (``sdk.register_connector``, as
``tests/gateway/test_payments_api.py`` does) and runs the app with an AppRunner
(``gateway.server.run_gateway``), exactly as ``tessera serve`` does with one worker.

Every gateway runs one worker process (the CVC held for a token lives in that process's memory),
except that ``--workers N`` gives the measured ``gateway`` N of them (SO_REUSEPORT, as ``tessera
serve --workers N``): a payment that reaches another worker than the one its token was made on
then goes without the CVC, the documented trade-off of several processes (``vault/cvv.py``).
Tokens carry a CVC and are made just before each measured run through ``/v1/tokens/batch``; each
payment consumes one. OpenBao (dev server), the simulator, five gateways and this load generator
all share this machine's cores, as do other people's jobs: every run prints how busy the whole
machine was and the CPU time its service spent per request.

    python bench/forward.py [--rate 500] [--low-rate 50] [--rounds 3] [--log-level INFO]

Traffic goes to 127.0.0.1 only; every run is bounded in count and time; every child process is
stopped on the way out.
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
import math  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from load import REPO, CpuWindow, machine_facts, peak_rss_mb, tree_pids  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from vault.devserver import DevServer, free_port  # noqa: E402
from vault.provisioning import ensure_tenant_keys, provision  # noqa: E402

SANDBOX_API_KEY = "sk_bench_sandbox"
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
AMOUNT = {"value": 1050, "currency": "EUR"}
#: Longer than any run: a tripped breaker stays open for the whole benchmark.
BREAKER_RESET_SECONDS = 3600
REQUEST_TIMEOUT = 10.0

# -- the load generator -------------------------------------------------------------------------


@dataclass
class Samples:
    """Per-request figures of one open-loop run, in seconds."""

    latency: list[float] = field(default_factory=list)  # due time -> last byte
    lag: list[float] = field(default_factory=list)  # due time -> request handed to aiohttp
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    lost: int = 0  # timed out or failed at the socket
    errors: Counter[str] = field(default_factory=Counter)  # why they were lost
    wall_s: float = 0.0

    def pct(self, q: float, of: list[float] | None = None) -> float:
        """Nearest-rank percentile ``q`` (0-100) in milliseconds."""
        values = sorted(self.latency if of is None else of)
        if not values:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1] * 1000


Request = tuple[str, bytes, dict[str, str]]  # url, body, headers
Check = Callable[[int, bytes], tuple[str, bool]]  # status, body -> (label, as expected)


async def open_loop(
    session: aiohttp.ClientSession,
    requests: list[Request],
    *,
    rate: float,
    check: Check,
    record: bool = True,
) -> Samples:
    """Send ``requests`` at ``rate`` per second (open loop), each at its due time."""
    for url, _, _ in requests:
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError("benchmarks send traffic to 127.0.0.1 only")
    loop = asyncio.get_running_loop()
    samples = Samples()

    async def one(request: Request, due: float) -> None:
        url, body, headers = request
        sent = loop.time()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            samples.lost += 1
            samples.errors[type(exc).__name__] += 1
            return
        done = loop.time()
        label, expected = check(status, payload)
        samples.statuses[label] += 1
        samples.unexpected += not expected
        if record:
            samples.latency.append(done - due)
            samples.lag.append(sent - due)

    start = loop.time() + 0.05
    tasks: list[asyncio.Task[None]] = []
    for index, request in enumerate(requests):
        due = start + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request, due)))
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
    for task in pending:
        task.cancel()
    samples.lost += len(pending)
    if pending:
        samples.errors["no reply within the run's bound"] += len(pending)
    samples.wall_s = loop.time() - start
    return samples


# -- processes ----------------------------------------------------------------------------------


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # cwd: the repository root, never bench/ (whose tokenize.py would shadow the stdlib's).
        return subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True, cwd=REPO)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        proc.wait()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def _process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = _start(cmd, log)
    try:
        yield proc
    finally:
        _stop(proc)


async def _wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


def _connector_section(name: str, base_url: str, **extra: object) -> str:
    lines = [
        f"[connectors.{name}]",
        f'base_url = "{base_url}"',
        "test_mode = true",
        f"breaker_reset_seconds = {BREAKER_RESET_SECONDS}",
    ]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    lines += [f"[connectors.{name}.credentials]", f'api_key = "{SANDBOX_API_KEY}"']
    return "\n".join(lines) + "\n"


@dataclass
class GatewaySpec:
    name: str
    connectors: str  # TOML sections
    route: list[str]
    backup: bool  # needs the registered "backup" connector (this file's --gateway mode)
    workers: int = 1


@dataclass
class Gateway:
    spec: GatewaySpec
    url: str
    key: str
    proc: subprocess.Popen[bytes]

    def auth(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers


def _write_config(
    path: Path, spec: GatewaySpec, *, port: int, db_url: str, bao: DevServer, encryption: str
) -> None:
    route = ", ".join(f'"{c}"' for c in spec.route)
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
workers = {spec.workers}

[database]
url = "{db_url}"

[vault]
addr = "{bao.addr}"
token = "{bao.root_token}"

[tokenization]
encryption = "{encryption}"

[routing]
default = [{route}]

{spec.connectors}
"""
    )


async def _create_merchant(db_url: str) -> tuple[str, str]:
    from gateway.merchants import MerchantStore
    from vault.database import open_database

    db = await open_database(db_url)
    try:
        store = MerchantStore(db)
        await store.migrate()
        merchant, key = await store.create("bench")
        return merchant.id, key
    finally:
        await db.close()


# -- what each run sends and expects ------------------------------------------------------------


async def _tokens(session: aiohttp.ClientSession, gw: Gateway, count: int) -> list[str]:
    """``count`` fresh tokens holding a CVC (each authorization consumes one)."""
    out: list[str] = []
    while len(out) < count:
        n = min(1000, count - len(out))
        async with session.post(
            f"{gw.url}/v1/tokens/batch", data=orjson.dumps({"cards": [CARD] * n}), headers=gw.auth()
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"tokenize failed on {gw.spec.name}: {resp.status} {body}")
        out += [r["id"] for r in body["results"]]
    return out


def _payments(gw: Gateway, tokens: list[str], tag: str) -> list[Request]:
    url = f"{gw.url}/v1/payments"
    return [
        (
            url,
            orjson.dumps(
                {
                    "amount": AMOUNT,
                    "payment_method": {"type": "card", "token": token},
                    "reference": f"{tag}-{i}",
                }
            ),
            gw.auth(uuid.uuid4().hex),
        )
        for i, token in enumerate(tokens)
    ]


def _direct(sandbox_url: str, count: int, tag: str) -> list[Request]:
    """What the sandbox connector sends for one authorization (the card already revealed)."""
    card = {k: str(v) for k, v in CARD.items()}
    url = f"{sandbox_url}/v1/authorizations"
    return [
        (
            url,
            orjson.dumps(
                {
                    "amount": AMOUNT["value"],
                    "currency": AMOUNT["currency"],
                    "capture": False,
                    "card": card,
                    "reference": f"pay_{tag}_{i:08d}",
                    "metadata": {},
                }
            ),
            {
                "Authorization": f"Bearer {SANDBOX_API_KEY}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                "Idempotency-Key": uuid.uuid4().hex,
                "X-Request-Id": uuid.uuid4().hex,
            },
        )
        for i in range(count)
    ]


def _expect_authorized(connector: str | None) -> Check:
    def check(status: int, body: bytes) -> tuple[str, bool]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return f"{status} (not JSON)", False
        if status >= 400:  # problem+json
            return f"{status} {data.get('code')}", False
        label = f"{status} {data.get('status')}"
        ok = status == 201 and data.get("status") == "authorized"
        if connector is not None:
            label += f" via {data.get('connector')}"
            ok = ok and data.get("connector") == connector
        return label, ok

    return check


def _expect_refused(status: int, body: bytes) -> tuple[str, bool]:
    """Breaker open: a 201 payment that failed without being sent, or a 503."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"{status} (not JSON)", False
    if status == 503:
        return f"503 {data.get('code')}", True
    outcomes = [a.get("outcome") for a in data.get("attempts", [])]
    return f"{status} {data.get('status')} {'/'.join(map(str, outcomes))}", (
        status == 201 and data.get("status") == "failed" and outcomes == ["not_sent"]
    )


# -- gateway metrics ----------------------------------------------------------------------------

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _metrics(session: aiohttp.ClientSession, gw: Gateway) -> Metrics:
    async with session.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(m: Metrics, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def _histogram_quantile(
    before: Metrics, after: Metrics, name: str, q: float, **labels: str
) -> float:
    """Prometheus' ``histogram_quantile`` over the increase between two scrapes, in ms."""
    buckets: list[tuple[float, float]] = []
    for (sample, label_set), value in after.items():
        if sample != f"{name}_bucket":
            continue
        lab = dict(label_set)
        le = lab.pop("le")
        if lab != labels:
            continue
        buckets.append((float(le), value - before.get((sample, label_set), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    target = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= target:
            if math.isinf(upper):
                return lower * 1000
            inside = count - below
            return (lower + (upper - lower) * ((target - below) / inside if inside else 1)) * 1000
        lower, below = upper, count
    return math.nan


def _share_within(before: Metrics, after: Metrics, name: str, le: str, **labels: str) -> float:
    bucket = frozenset({**labels, "le": le}.items())
    total = frozenset({**labels, "le": "+Inf"}.items())
    n = after.get((f"{name}_bucket", total), 0) - before.get((f"{name}_bucket", total), 0)
    k = after.get((f"{name}_bucket", bucket), 0) - before.get((f"{name}_bucket", bucket), 0)
    return k / n if n else math.nan


# -- the runs -----------------------------------------------------------------------------------


@dataclass
class Run:
    samples: Samples
    cpu_us: float = math.nan  # the measured service's CPU per request (gateway or simulator)
    busy: float = math.nan
    server: dict[str, float] = field(default_factory=dict)  # figures from the gateway's metrics


async def _measure(
    session: aiohttp.ClientSession,
    requests: list[Request],
    warmup: list[Request],
    *,
    rate: float,
    check: Check,
    pids: list[int],
) -> Run:
    await open_loop(session, warmup, rate=rate, check=check, record=False)
    with CpuWindow(pids) as cpu:
        samples = await open_loop(session, requests, rate=rate, check=check)
    count = max(len(samples.latency), 1)
    return Run(samples, cpu_us=cpu.cpu_s / count * 1e6, busy=cpu.machine_busy)


async def _trip(session: aiohttp.ClientSession, gw: Gateway) -> None:
    """Send payments one by one until the dead ``sandbox`` connector's breaker is open."""
    tokens = await _tokens(session, gw, 20)
    for url, body, headers in _payments(gw, tokens, "trip"):
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
        state = _value(
            await _metrics(session, gw), "tessera_connector_breaker_state", connector="sandbox"
        )
        if state == 2:
            return
    raise RuntimeError(f"the breaker of {gw.spec.name} did not open")


def _server_figures(before: Metrics, after: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    http = {"name": "tessera_http_request_seconds", "route": "/v1/payments", "method": "POST"}
    out["http_p50_ms"] = _histogram_quantile(before, after, q=0.5, **http)
    out["http_p99_ms"] = _histogram_quantile(before, after, q=0.99, **http)
    out["http_le_1ms"] = _share_within(before, after, le="0.001", **http)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    for connector in ("sandbox", "backup"):
        labels = {"connector": connector, "operation": "authorize"}
        n = delta("tessera_connector_call_duration_seconds_count", **labels)
        if n:
            total = delta("tessera_connector_call_duration_seconds_sum", **labels)
            out[f"{connector}_call_mean_ms"] = total / n * 1000
            out[f"{connector}_calls"] = n
        refused = delta(
            "tessera_connector_rejections_total", connector=connector, reason="breaker_open"
        )
        if refused:
            out[f"{connector}_breaker_rejections"] = refused
    return out


async def _gateway_run(
    session: aiohttp.ClientSession,
    gw: Gateway,
    *,
    seconds: float,
    warmup: float,
    rate: float,
    check: Check,
    tag: str,
) -> Run:
    count, warm = int(rate * seconds), max(1, int(rate * warmup))
    tokens = await _tokens(session, gw, count + warm)
    requests = _payments(gw, tokens, tag)
    before = await _metrics(session, gw)
    run = await _measure(
        session,
        requests[warm:],
        requests[:warm],
        rate=rate,
        check=check,
        pids=tree_pids(gw.proc.pid),
    )
    run.server = _server_figures(before, await _metrics(session, gw))
    return run


async def _direct_run(
    session: aiohttp.ClientSession,
    sandbox_url: str,
    sandbox_pids: list[int],
    *,
    seconds: float,
    warmup: float,
    rate: float,
    tag: str,
) -> Run:
    count, warm = int(rate * seconds), max(1, int(rate * warmup))
    requests = _direct(sandbox_url, count + warm, tag)
    return await _measure(
        session,
        requests[warm:],
        requests[:warm],
        rate=rate,
        check=_expect_authorized(None),
        pids=sandbox_pids,
    )


async def _capacity(
    session: aiohttp.ClientSession, gw: Gateway, *, seconds: float, concurrency: int, tag: str
) -> tuple[float, float, float]:
    """Closed loop, ``concurrency`` payments in flight for ``seconds``: (payments/s, p50, CPU)."""
    tokens = await _tokens(session, gw, int(seconds * 1000))  # far more than one worker does
    requests = iter(_payments(gw, tokens, tag))
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def worker() -> None:
        for url, body, headers in requests:
            if loop.time() >= end:
                return
            started = loop.time()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
            latencies.append(loop.time() - started)

    with CpuWindow(tree_pids(gw.proc.pid)) as cpu:
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), seconds + REQUEST_TIMEOUT
        )
    rate = len(latencies) / cpu.wall_s
    p50 = statistics.median(latencies) * 1000 if latencies else math.nan
    return rate, p50, cpu.cpu_s / max(len(latencies), 1) * 1e6


# -- main ---------------------------------------------------------------------------------------


def _specs(sandbox_url: str, dead_url: str, workers: int) -> list[GatewaySpec]:
    live = _connector_section("sandbox", sandbox_url)
    return [
        GatewaySpec("gateway", live, ["sandbox"], backup=False, workers=workers),
        GatewaySpec(
            "breaker open",
            _connector_section("sandbox", dead_url, breaker_fail_max=2, retry_attempts=1),
            ["sandbox"],
            backup=False,
        ),
        GatewaySpec(
            "failover: backup", _connector_section("backup", sandbox_url), ["backup"], backup=True
        ),
        GatewaySpec(
            "failover: open",
            _connector_section("sandbox", dead_url, breaker_fail_max=2, retry_attempts=1)
            + _connector_section("backup", sandbox_url),
            ["sandbox", "backup"],
            backup=True,
        ),
        GatewaySpec(
            "failover: closed",
            _connector_section("sandbox", dead_url, breaker_fail_max=10**9, retry_attempts=1)
            + _connector_section("backup", sandbox_url),
            ["sandbox", "backup"],
            backup=True,
        ),
    ]


CHECKS: dict[str, Check] = {
    "gateway": _expect_authorized("sandbox"),
    "breaker open": _expect_refused,
    "failover: backup": _expect_authorized("backup"),
    "failover: open": _expect_authorized("backup"),
    "failover: closed": _expect_authorized("backup"),
}


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


async def _start_all(
    args: argparse.Namespace, workdir: Path, bao: DevServer, stack: ExitStack
) -> tuple[str, subprocess.Popen[bytes], dict[str, Gateway]]:
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sandbox = stack.enter_context(
        _process(
            [
                sys.executable,
                "-m",
                "connectors.sandbox.server",
                "--port",
                str(sandbox_port),
                "--api-key",
                SANDBOX_API_KEY,
            ],
            workdir / "sandbox.log",
        )
    )
    gateways: dict[str, Gateway] = {}
    for number, spec in enumerate(_specs(sandbox_url, dead_url, args.workers)):
        db_url = f"sqlite:///{workdir / f'gw{number}.db'}"
        merchant_id, key = await _create_merchant(db_url)
        ensure_tenant_keys(bao.addr, bao.root_token, merchant_id)
        port = free_port()
        config = workdir / f"gw{number}.toml"
        _write_config(config, spec, port=port, db_url=db_url, bao=bao, encryption=args.encryption)
        if spec.backup:
            cmd = [sys.executable, __file__, "--gateway", str(config)]
            cmd += ["--log-level", args.log_level]
        else:
            cmd = [sys.executable, "-m", "gateway.cli", "--log-level", args.log_level, "serve"]
            cmd += ["--config", str(config)]
        proc = stack.enter_context(_process(cmd, workdir / f"gw{number}.log"))
        gateways[spec.name] = Gateway(spec, f"http://127.0.0.1:{port}", key, proc)
    return sandbox_url, sandbox, gateways


async def _bench(args: argparse.Namespace, workdir: Path, bao: DevServer, stack: ExitStack) -> None:
    sandbox_url, sandbox, gateways = await _start_all(args, workdir, bao, stack)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    # Idle keep-alive connections are dropped well before the gateway's 15 s keep-alive timeout
    # would close them: reusing one the server is closing at that moment loses the request.
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=5)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await _wait_ready(session, f"{sandbox_url}/__sandbox/health")
        for gw in gateways.values():
            await _wait_ready(session, f"{gw.url}/readyz")
        for name in ("breaker open", "failover: open"):
            await _trip(session, gateways[name])

        async def reset() -> None:
            async with session.post(f"{sandbox_url}/__sandbox/reset") as resp:
                await resp.read()

        hi, lo = args.rate, args.low_rate
        results: dict[str, list[Run]] = {}
        capacity: list[tuple[float, float, float]] = []
        for number in range(1, args.rounds + 1):
            print(f"round {number}:", flush=True)
            plan: list[tuple[str, str, float, float]] = [
                (f"direct @{hi:g}/s", "direct", hi, args.seconds),
                (f"gateway @{hi:g}/s", "gateway", hi, args.seconds),
                (f"direct @{lo:g}/s", "direct", lo, args.low_seconds),
                *((f"{name} @{lo:g}/s", name, lo, args.low_seconds) for name in gateways),
            ]
            for label, target, rate, seconds in plan:
                await reset()
                common = {"seconds": seconds, "warmup": args.warmup, "rate": rate}
                if target == "direct":
                    pids = tree_pids(sandbox.pid)
                    run = await _direct_run(
                        session, sandbox_url, pids, tag=f"r{number}{label[-5:]}", **common
                    )
                else:
                    run = await _gateway_run(
                        session, gateways[target], check=CHECKS[target], tag=f"r{number}", **common
                    )
                results.setdefault(label, []).append(run)
                _print_run(label, run)
            await reset()
            capacity.append(
                await _capacity(
                    session,
                    gateways["gateway"],
                    seconds=args.capacity_seconds,
                    concurrency=args.capacity_concurrency,
                    tag=f"cap{number}",
                )
            )
            rate, p50, cpu_us = capacity[-1]
            print(
                f"  capacity (closed loop, {args.capacity_concurrency} in flight): "
                f"{rate:,.0f} payments/s, p50 {p50:.2f} ms, gateway CPU/payment {cpu_us:,.0f} us",
                flush=True,
            )
        rss = {name: peak_rss_mb(tree_pids(gw.proc.pid)) for name, gw in gateways.items()}
    _summary(args, results, capacity, rss)


def _print_run(name: str, run: Run) -> None:
    s = run.samples
    statuses = ", ".join(f"{k}: {v}" for k, v in s.statuses.most_common())
    if s.errors:
        statuses += "; lost: " + ", ".join(f"{k}: {v}" for k, v in s.errors.most_common())
    server = ""
    if run.server:
        server = (
            f"\n      gateway metrics: POST /v1/payments p50 ~{run.server['http_p50_ms']:.2f} ms "
            f"p99 ~{run.server['http_p99_ms']:.2f} ms, {run.server['http_le_1ms']:.0%} <= 1 ms"
        )
        for connector in ("sandbox", "backup"):
            if f"{connector}_calls" in run.server:
                server += (
                    f"; {connector}: {run.server[f'{connector}_calls']:.0f} calls, mean "
                    f"{run.server[f'{connector}_call_mean_ms']:.3f} ms in the connector runtime"
                )
            if f"{connector}_breaker_rejections" in run.server:
                server += f", {run.server[f'{connector}_breaker_rejections']:.0f} breaker_open"
    print(
        f"  {name:<28} p50 {s.pct(50):8.2f} ms  p99 {s.pct(99):8.2f} ms  max {s.pct(100):8.2f} ms"
        f"  n={len(s.latency)} lost={s.lost} unexpected={s.unexpected}"
        f"  completed {len(s.latency) / s.wall_s if s.wall_s else 0:,.0f}/s"
        f"  generator lag p99 {s.pct(99, s.lag):.2f} ms  CPU/req {run.cpu_us:,.0f} us"
        f"  machine busy {run.busy:.0%}\n      replies: {statuses}{server}",
        flush=True,
    )


def _summary(
    args: argparse.Namespace,
    results: dict[str, list[Run]],
    capacity: list[tuple[float, float, float]],
    rss: dict[str, float],
) -> None:
    def med(name: str, q: float) -> float:
        return _median([r.samples.pct(q) for r in results[name]])

    def added(name: str, base: str, q: float) -> float:
        return _median(
            [
                a.samples.pct(q) - b.samples.pct(q)
                for a, b in zip(results[name], results[base], strict=True)
            ]
        )

    hi, lo = f"@{args.rate:g}/s", f"@{args.low_rate:g}/s"
    n = len(capacity)
    print(f"\nmedians of {n} round(s) (added = minus the baseline's percentile in the same round):")
    print(f"  {'run':<28} {'p50 ms':>9} {'p99 ms':>9} {'added p50':>10} {'added p99':>10}")
    bases = {
        f"gateway {hi}": f"direct {hi}",
        f"gateway {lo}": f"direct {lo}",
        f"failover: backup {lo}": f"direct {lo}",
        f"failover: open {lo}": f"failover: backup {lo}",
        f"failover: closed {lo}": f"failover: backup {lo}",
    }
    for name in results:
        base = bases.get(name)
        extra = ""
        if base:
            extra = f" {added(name, base, 50):>+10.2f} {added(name, base, 99):>+10.2f}  vs {base}"
        print(f"  {name:<28} {med(name, 50):>9.2f} {med(name, 99):>9.2f}{extra}")
    lost = sum(r.samples.lost + r.samples.unexpected for r in results[f"gateway {hi}"])
    open_runs = results[f"breaker open {lo}"]
    in_runtime = _median([r.server.get("sandbox_call_mean_ms", math.nan) for r in open_runs])
    server_p50 = _median([r.server.get("http_p50_ms", math.nan) for r in open_runs])
    cap_rate = _median([c[0] for c in capacity])
    cap_cpu = _median([c[2] for c in capacity])
    print()
    print(
        f"forwarding {hi}: added p50 {added(f'gateway {hi}', f'direct {hi}', 50):+.2f} ms "
        f"(target <= 1 ms), added p99 {added(f'gateway {hi}', f'direct {hi}', 99):+.2f} ms "
        f"(target <= 5 ms); {lost} payment(s) lost or not authorized over {n} round(s)"
    )
    print(
        f"forwarding {lo}: added p50 {added(f'gateway {lo}', f'direct {lo}', 50):+.2f} ms, "
        f"added p99 {added(f'gateway {lo}', f'direct {lo}', 99):+.2f} ms"
    )
    print(
        f"gateway capacity ({args.workers} worker(s), closed loop): {cap_rate:,.0f} payments/s, "
        f"{cap_cpu:,.0f} us gateway CPU per payment"
    )
    # Since 2c0665d the gateway refuses before calling the runtime when every breaker is open
    # (the rejection is still counted): no runtime time to report then.
    refusal = (
        f"of which the refusal in the connector runtime {in_runtime:.3f} ms mean"
        if not math.isnan(in_runtime)
        else "refused before the connector runtime (no call)"
    )
    print(
        f"breaker open {lo}: client p50 {med(f'breaker open {lo}', 50):.2f} ms / p99 "
        f"{med(f'breaker open {lo}', 99):.2f} ms for the whole request; gateway metrics: request "
        f"p50 ~{server_p50:.2f} ms, {refusal}, nothing sent (target <= 1 ms)"
    )
    fo = f"failover: open {lo}"
    fc = f"failover: closed {lo}"
    fb = f"failover: backup {lo}"
    print(
        f"failover {lo} (breaker open): adds p50 {added(fo, fb, 50):+.2f} ms, p99 "
        f"{added(fo, fb, 99):+.2f} ms; (connection refused each time): p50 "
        f"{added(fc, fb, 50):+.2f} ms, p99 {added(fc, fb, 99):+.2f} ms (target <= 2 ms)"
    )
    print("peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items()))


def _serve_with_backup(config: str, log_level: str) -> None:
    """``--gateway`` mode: register a copy of the sandbox connector as ``backup``, then serve."""
    from gateway.config import load_settings
    from gateway.observability import configure_logging
    from gateway.server import run_gateway
    from sdk import register_connector
    from sdk.registry import load_connectors

    base = load_connectors()["sandbox"]
    manifest = base.manifest.model_copy(update={"id": "backup", "display_name": "Backup"})
    register_connector(type("BackupSandbox", (base,), {"manifest": manifest}))
    configure_logging(log_level)
    asyncio.run(run_gateway(load_settings(config)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=500.0, help="payments per second (500)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds at --rate (2)")
    parser.add_argument(
        "--low-rate", type=float, default=50.0, help="a rate one gateway worker sustains (50)"
    )
    parser.add_argument(
        "--low-seconds", type=float, default=8.0, help="measured seconds at --low-rate (8)"
    )
    parser.add_argument("--capacity-seconds", type=float, default=3.0)
    parser.add_argument("--capacity-concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds first (0.5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of the measured gateway (1); with more, a payment reaching\n"
        "another worker than its token's goes without the CVC (vault/cvv.py)",
    )
    parser.add_argument("--log-level", default="INFO", help="gateways' log level (INFO)")
    parser.add_argument(
        "--encryption",
        choices=("envelope", "transit"),
        default="envelope",
        help="[tokenization] encryption of every gateway (default: envelope, the default)",
    )
    parser.add_argument("--gateway", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gateway:
        _serve_with_backup(args.gateway, args.log_level)
        return
    if not 1 <= args.workers <= 8:
        parser.error("--workers: 1 to 8")
    rates_ok = 0 < args.low_rate <= args.rate <= 5000
    if not rates_ok or not 0 < args.seconds <= 30 or not 0 < args.low_seconds <= 60:
        parser.error("keep it bounded: 0 < low-rate <= rate <= 5000, seconds <= 30, <= 60 low")
    print(f"tessera forwarding benchmark: {machine_facts()}")
    print(
        f"settings: open loop at {args.rate:g} payments/s for {args.seconds:g} s and at "
        f"{args.low_rate:g}/s for {args.low_seconds:g} s (+ {args.warmup:g} s warm-up each), "
        f"closed loop {args.capacity_concurrency} in flight for {args.capacity_seconds:g} s; "
        f"{args.rounds} round(s); gateways: SQLite, 1 worker ('gateway': {args.workers}), "
        f"log level {args.log_level}, encryption {args.encryption}, "
        "an Idempotency-Key on every payment; the sandbox simulator, OpenBao, 5 gateways and "
        "this generator share the 2 cores with other people's work\n"
    )
    with tempfile.TemporaryDirectory() as tmp, DevServer() as bao, ExitStack() as stack:
        provision(bao.addr, bao.root_token)
        asyncio.run(_bench(args, Path(tmp), bao, stack))


if __name__ == "__main__":
    main()
