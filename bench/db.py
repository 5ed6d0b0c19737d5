"""Benchmark: CPU time per SQLite statement through ``vault.database``, before and after.

``old``  the backend as it was up to commit 26a1b15: aiosqlite, every statement handed to its
         thread and back (execute, then fetch, then close the cursor), a copy of which is kept
         below;
``new``  ``vault.database.SqliteDatabase``: the stdlib ``sqlite3`` on the event loop's thread,
         waits for other processes' locks and WAL checkpoints off the loop.

Each on its own fresh database file (WAL, ``synchronous=NORMAL``) in a temporary directory, in
the same run, one after the other, for several rounds; the medians are printed. Operations:

``fetchone SELECT 1``       ``await db.fetchone("SELECT 1")``
``INSERT autocommit``       ``await db.execute("INSERT ...", ...)`` outside a transaction
``transaction of 3``        ``async with db.transaction()``: INSERT, UPDATE, SELECT, then COMMIT
``token insert, 1 row``     ``TokenStore.insert_many`` of one record, as the insert batcher sends a
                            lone tokenization: one ``INSERT ... SELECT FROM json_each($1) ...
                            RETURNING`` statement, as ``fetchall``, in autocommit
``token insert, 1,000 rows``  the same with 1,000 records (the batch endpoint)
``executemany 1,000``       ``await db.executemany("INSERT ...", rows)`` (its own transaction)

Token records are shaped like real ones (random ids, fingerprints, ciphertexts), built before
the clock starts. The new backend runs the two 1,000-row statements in its thread
(``_OFF_LOOP_BYTES``, ``_OFF_LOOP_ROWS`` in ``vault/database.py``); they are also measured on the
loop, where their wall time is how long they would hold it.

The figure is CPU time (``time.process_time``: every thread of this process, so aiosqlite's
thread counts) per operation, which other people's work on the shared cores does not inflate
the way it does wall time.

    python bench/db.py [--n 5000] [--rounds 3]
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
import platform  # noqa: E402
import secrets  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from vault import database  # noqa: E402
from vault.database import Row, SqliteDatabase  # noqa: E402
from vault.token_store import TokenRecord, TokenStore  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL,"
    " ref TEXT NOT NULL, amount INTEGER NOT NULL, state TEXT NOT NULL, created_at INTEGER)"
)
INSERT = "INSERT INTO bench (tenant, ref, amount, state, created_at) VALUES ($1, $2, $3, $4, $5)"
BATCH = 1000


# -- the old backend (aiosqlite), as it was -----------------------------------------------------


class _OldConnection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        query, params = _old_qmark(sql, args)
        await self._conn.execute(query, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        query, _ = _old_qmark(sql, rows[0])
        await self._conn.executemany(query, [_old_qmark(sql, row)[1] for row in rows])

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        query, params = _old_qmark(sql, args)
        async with self._conn.execute(query, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        query, params = _old_qmark(sql, args)
        async with self._conn.execute(query, params) as cursor:
            rows = await cursor.fetchall()
        return [dict(row) for row in rows]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else next(iter(row.values()))


def _old_qmark(sql: str, args: Sequence[Any]) -> tuple[str, list[Any]]:
    # The old rewrite ran the regex on every call (the new one caches it per statement text).
    import re

    order: list[int] = []

    def substitute(match: re.Match[str]) -> str:
        order.append(int(match.group(1)) - 1)
        return "?"

    rewritten = re.sub(r"\$(\d+)", substitute, sql)
    if not order:
        return rewritten, list(args)
    return rewritten, [args[i] for i in order]


class OldSqliteDatabase:
    dialect = "sqlite"

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._plain = _OldConnection(conn)

    @classmethod
    async def open(cls, path: str) -> OldSqliteDatabase:
        import aiosqlite

        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        return cls(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_OldConnection]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._plain
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            else:
                await self._conn.execute("COMMIT")

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._lock:
            await self._plain.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        async with self._lock:
            return await self._plain.fetchone(sql, *args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return await self._plain.fetchall(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else next(iter(row.values()))

    async def close(self) -> None:
        await self._conn.close()


# -- the measurements ---------------------------------------------------------------------------


@dataclass
class Context:
    db: Any
    store: TokenStore


Op = Callable[[Context, Any], Awaitable[Any]]


async def op_select1(ctx: Context, i: int) -> Any:
    return await ctx.db.fetchone("SELECT 1")


async def op_insert(ctx: Context, i: int) -> Any:
    await ctx.db.execute(INSERT, "t1", f"ref-{i}", i, "new", i)


async def op_transaction(ctx: Context, i: int) -> Any:
    async with ctx.db.transaction() as tx:
        await tx.execute(INSERT, "t1", f"tx-{i}", i, "new", i)
        await tx.execute("UPDATE bench SET state = $1 WHERE ref = $2", "done", f"ref-{i}")
        return await tx.fetchone("SELECT amount, state FROM bench WHERE ref = $1", f"tx-{i}")


async def op_tokens(ctx: Context, records: list[TokenRecord]) -> Any:
    inserted = await ctx.store.insert_many(records)
    assert len(inserted) == len(records)


async def op_executemany(ctx: Context, rows: list[list[Any]]) -> Any:
    await ctx.db.executemany(INSERT, rows)


def token_record() -> TokenRecord:
    """A record shaped like a real one (random id, fingerprint and ciphertext)."""
    return TokenRecord(
        id=f"tok_{secrets.token_hex(12)}",
        tenant="mer_bench",
        fingerprint=f"fp_v1_{secrets.token_hex(32)}",
        ciphertext=f"vault:v1:{secrets.token_urlsafe(72)}",
        bin="424242",
        last4="4242",
        brand="visa",
        exp_month=12,
        exp_year=2031,
        format="random",
        created_at=datetime.now(UTC),
        expires_at=None,
        key_version=1,
        pan_length=16,
        dedup=True,
    )


def rows(count: int) -> list[list[Any]]:
    return [["t2", secrets.token_hex(8), k, "new", k] for k in range(count)]


#: label, operation, the inputs of ``count`` calls, bulk (1,000 rows: counted by --batches).
OPS: list[tuple[str, Op, Callable[[int], list[Any]], bool]] = [
    ("fetchone SELECT 1", op_select1, lambda count: list(range(count)), False),
    ("INSERT autocommit", op_insert, lambda count: list(range(count)), False),
    ("transaction of 3", op_transaction, lambda count: list(range(count)), False),
    (
        "token insert, 1 row",
        op_tokens,
        lambda count: [[token_record()] for _ in range(count)],
        False,
    ),
    (
        f"token insert, {BATCH:,} rows",
        op_tokens,
        lambda count: [[token_record() for _ in range(BATCH)] for _ in range(count)],
        True,
    ),
    (
        f"executemany {BATCH:,}",
        op_executemany,
        lambda count: [rows(BATCH) for _ in range(count)],
        True,
    ),
]
#: ``new`` runs bulk statements in its thread; ``loop`` is the same backend made to run them on
#: the event loop (its thresholds raised), to show what that would cost and how long it would
#: hold the loop.
KINDS = ["old", "new", "loop"]


async def measure(ctx: Context, op: Op, inputs: list[Any]) -> tuple[float, float]:
    """Run ``op`` on each of ``inputs``; return CPU µs and wall µs per call."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for item in inputs:
        await op(ctx, item)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    return cpu / len(inputs) * 1e6, wall / len(inputs) * 1e6


async def one_round(
    kind: str, directory: Path, n: int, batches: int
) -> dict[str, tuple[float, float]]:
    path = str(directory / f"{kind}-{time.monotonic_ns()}.db")
    db: Any = await (OldSqliteDatabase.open(path) if kind == "old" else SqliteDatabase.open(path))
    saved = database._OFF_LOOP_BYTES, database._OFF_LOOP_ROWS
    if kind == "loop":
        database._OFF_LOOP_BYTES = database._OFF_LOOP_ROWS = sys.maxsize
    try:
        ctx = Context(db, TokenStore(db))
        await db.execute(SCHEMA)
        await db.execute("CREATE INDEX IF NOT EXISTS bench_ref ON bench (ref)")
        await ctx.store.migrate()
        results = {}
        for label, op, make, bulk in OPS:
            if kind == "loop" and not bulk:
                continue
            count = batches if bulk else n // 5 if op is op_tokens else n
            await measure(ctx, op, make(max(1, count // 10)))  # warm up: caches, pages
            results[label] = await measure(ctx, op, make(count))
        return results
    finally:
        database._OFF_LOOP_BYTES, database._OFF_LOOP_ROWS = saved
        await db.close()


def facts(n: int, rounds: int, batches: int) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "vault/database.py", "bench/db.py"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    ).stdout.strip()
    modified = " (vault/database.py or bench/db.py modified)" if dirty else ""
    return (
        f"commit {commit or 'unknown'}{modified}"
        f", {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; a file in "
        f"{tempfile.gettempdir()}, WAL, synchronous=NORMAL; {n:,} of each small operation "
        f"({n // 5:,} token inserts) and {batches} of each 1,000-row one per round, {rounds} "
        "rounds, medians"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000, help="small operations per round")
    parser.add_argument("--batches", type=int, default=10, help="1,000-row operations per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import aiosqlite  # noqa: F401

        kinds = KINDS
    except ImportError:
        kinds = KINDS[1:]
        print("aiosqlite is not installed: the old backend is not measured")

    print(facts(args.n, args.rounds, args.batches))
    runs: dict[str, list[dict[str, tuple[float, float]]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="tessera-bench-db-") as directory:
        for _ in range(args.rounds):
            for kind in kinds:  # interleaved, so a busy spell on the machine hits all
                runs[kind].append(
                    asyncio.run(one_round(kind, Path(directory), args.n, args.batches))
                )

    def median(kind: str, label: str, index: int) -> float:
        return statistics.median(r[label][index] for r in runs[kind])

    print(f"\n{'CPU µs per operation':<28}{'old':>10}{'new':>10}{'old/new':>10}{'new wall µs':>14}")
    for label, _, _, bulk in OPS:
        old = f"{median('old', label, 0):>10.1f}" if "old" in kinds else f"{'-':>10}"
        new = median("new", label, 0)
        ratio = f"{median('old', label, 0) / new:>9.1f}x" if "old" in kinds else f"{'':>10}"
        where = "  (in the database's thread)" if bulk else ""
        print(f"{label:<28}{old}{new:>10.1f}{ratio}{median('new', label, 1):>14.1f}{where}")
        if bulk:
            print(
                f"{'  the same on the loop':<28}{'':>10}{median('loop', label, 0):>10.1f}{'':>10}"
                f"{median('loop', label, 1):>14.1f}  (the loop held that long)"
            )


if __name__ == "__main__":
    main()
