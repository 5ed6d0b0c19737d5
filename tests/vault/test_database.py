"""The SQLite backend of ``vault.database``: statements on the event loop, waits off it.

Real database files under ``tmp_path``. "Another process" is a real one (a Python child holding
a write transaction for a while); the event loop's responsiveness is watched by a ticker task
that records the longest gap between its wake-ups.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vault import database
from vault.database import SqliteDatabase, _rewrite, _to_qmark, open_database

SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)"

#: A child process that takes the write lock, inserts a row, holds the lock, then commits. It
#: prints ``held`` once it holds the lock and ``committed <monotonic time>`` after the commit
#: (CLOCK_MONOTONIC is the same clock in every process here).
HOLDER = r"""
import sqlite3, sys, time
path, hold = sys.argv[1], float(sys.argv[2])
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO items (name) VALUES ('holder')")
print("held", flush=True)
time.sleep(hold)
conn.execute("COMMIT")
print("committed", time.monotonic(), flush=True)
conn.close()
"""


@contextmanager
def no_full_collections() -> Iterator[None]:
    """Keep the cycle collector's full collections, which walk every object the process has and
    stall the loop for as long (late in a long test session, 100 ms and more), out of a timed
    stretch: the objects that exist now are frozen (``gc.freeze()``, as ``gateway.server.tune_gc``
    does) until the end of it. Costs nothing, unlike a ``gc.collect()`` beforehand (70-120 ms
    even in a run of this file alone, which would eat into a holder's hold)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Ticker:
    """Wakes every 5 ms and records the longest gap between two wake-ups.

    The tests bound ``max_gap`` by a fraction of the stall the bug they target would cause (a
    wait or a statement of a second or so on the loop), not by an absolute few tens of ms: on a
    loaded CI machine preemption alone can stall the loop for 100 ms and more. Full garbage
    collections could too: they are kept out while the ticker runs (``no_full_collections``)."""

    def __init__(self) -> None:
        self.ticks = 0
        self._max_gap = 0.0
        self._last: float | None = None  # the last wake-up, while running
        self._task: asyncio.Task[None] | None = None

    @property
    def max_gap(self) -> float:
        """The longest gap, the one still open included: a stall that has just ended (a blocking
        call that returned, and the test went on without yielding to the loop) counts before
        the ticker has woken from it, or if it never does."""
        if self._last is None:
            return self._max_gap
        return max(self._max_gap, time.monotonic() - self._last)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()  # the loop's clock
            assert self._last is not None
            self._max_gap = max(self._max_gap, now - self._last)
            self.ticks += 1
            self._last = now

    async def __aenter__(self) -> Ticker:
        gc.freeze()  # as no_full_collections()
        self._last = time.monotonic()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            self._max_gap, self._last = self.max_gap, None  # the gap open at the end counts
            assert self._task is not None
            self._task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self._task
        finally:
            gc.unfreeze()


class Holder:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.committed_at: float | None = None

    async def wait_committed(self) -> float:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        word, at = line.decode().split()
        assert word == "committed"
        self.committed_at = float(at)
        return self.committed_at


@asynccontextmanager
async def other_process_holds_lock(path: Path, seconds: float) -> AsyncIterator[Holder]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(path), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"held\n"
        yield Holder(proc)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "db" / "test.db"  # a directory that open() must create


@pytest.fixture
async def db(path: Path) -> AsyncIterator[SqliteDatabase]:
    opened = await SqliteDatabase.open(str(path))
    await opened.execute(SCHEMA)
    try:
        yield opened
    finally:
        await opened.close()


def names(path: Path) -> list[str]:
    """The rows as another connection (another process would) sees them: committed only."""
    conn = sqlite3.connect(path)
    try:
        return [name for (name,) in conn.execute("SELECT name FROM items ORDER BY id")]
    finally:
        conn.close()


# -- statements ---------------------------------------------------------------------------------


async def test_statements_and_numbered_placeholders(db: SqliteDatabase, path: Path) -> None:
    await db.execute("INSERT INTO items (name, qty) VALUES ($1, $2)", "a", 1)
    await db.execute("INSERT INTO items (qty, name) VALUES ($2, $1)", "b", 2)  # reordered
    await db.executemany("INSERT INTO items (qty, name) VALUES ($2, $1)", [("c", 3), ("d", 4)])
    await db.executemany("INSERT INTO items (name, qty) VALUES ($1, $2)", [])

    assert await db.fetchone("SELECT name, qty FROM items WHERE name = $1", "b") == {
        "name": "b",
        "qty": 2,
    }
    assert await db.fetchone("SELECT name FROM items WHERE name = $1", "nope") is None
    rows = await db.fetchall("SELECT name, qty FROM items ORDER BY id")
    assert rows == [
        {"name": "a", "qty": 1},
        {"name": "b", "qty": 2},
        {"name": "c", "qty": 3},
        {"name": "d", "qty": 4},
    ]
    assert all(type(row) is dict for row in rows)
    assert await db.fetchall("SELECT name FROM items WHERE qty > $1", 99) == []
    # One argument used twice, and arguments in another order than they are numbered.
    assert await db.fetchval("SELECT count(*) FROM items WHERE qty >= $1 AND qty <= $1 + 1", 2) == 2
    assert await db.fetchval("SELECT $2 || '-' || $1", "x", "y") == "y-x"
    assert await db.fetchval("SELECT qty FROM items WHERE name = $1", "nope") is None
    await db.ping()
    assert names(path) == list("abcd")


def test_placeholder_rewrite_is_cached_per_statement() -> None:
    sql = "SELECT $3, $1, $1 -- test_placeholder_rewrite_is_cached_per_statement"
    expected = sql.replace("$3", "?").replace("$1", "?")
    assert _to_qmark(sql, ("a", "b", "c")) == (expected, ["c", "a", "a"], False)
    hits = _rewrite.cache_info().hits
    assert _to_qmark(sql, (1, 2, 3))[1] == [3, 1, 1]
    assert _rewrite.cache_info().hits == hits + 1
    # In order and as many as given: passed on as they are, not copied.
    args = ("a", "b")
    assert _to_qmark("SELECT $1, $2", args)[1] is args
    # Fewer placeholders than arguments: only the ones used go (as before the cache).
    assert _to_qmark("SELECT $2", ("a", "b"))[1] == ["b"]


async def test_errors_pass_through_and_leave_the_connection_usable(db: SqliteDatabase) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await db.execute("INSERT INTO missing VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError):
        await db.execute("INSERT INTO items (name) VALUES (NULL)")
    await db.execute("INSERT INTO items (name) VALUES ('ok')")
    assert await db.fetchval("SELECT count(*) FROM items") == 1


async def test_memory_database() -> None:
    db = await open_database("sqlite://:memory:")
    assert isinstance(db, SqliteDatabase)
    try:
        await db.execute(SCHEMA)
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ($1)", "m")
        assert await db.fetchall("SELECT name FROM items") == [{"name": "m"}]
        assert db._checkpointer is None  # no WAL, nothing to checkpoint
    finally:
        await db.close()


async def _loop_cpu_per_op(op: Callable[[], Awaitable[object]], n: int) -> float:
    """The event loop thread's CPU time per ``await op()``: the best of three rounds of ``n``,
    with the garbage collector off. Thread time, not process time, so that other threads of the
    process (checkpointers, threads other tests left behind) do not count, nor, being CPU time,
    other work on the machine; and the best round, so that a preemption's cache misses in one
    round do not either."""
    for _ in range(100):
        await op()
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            start = time.thread_time()
            for _ in range(n):
                await op()
            best = min(best, (time.thread_time() - start) / n)
    finally:
        gc.enable()
    return best


async def test_small_statements_cost_microseconds(db: SqliteDatabase) -> None:
    """A small statement runs on the loop: it costs the loop's thread a few microseconds. Handing
    each statement to a thread and back (aiosqlite) cost 50-240 us of CPU here, 35-80 us of it
    on the loop's thread; that hop is measured here too, as the bound's yardstick, so that a
    slower or busier machine moves both alike."""
    per_op = await _loop_cpu_per_op(lambda: db.fetchone("SELECT 1"), 2000)
    assert db.thread_runs == 0
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as executor:
        hop = await _loop_cpu_per_op(
            lambda: loop.run_in_executor(executor, database._op_fetchone, db._conn, "SELECT 1", ()),
            500,
        )
    # Here about 2 us against 35 us: a hop per statement could not come in under a third.
    assert per_op < hop / 3, f"{per_op * 1e6:.1f} us per fetchone, {hop * 1e6:.1f} us per hop"


# -- transactions -------------------------------------------------------------------------------


async def test_transaction_commits(db: SqliteDatabase, path: Path) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (name) VALUES ($1)", "one")
        await tx.executemany("INSERT INTO items (name) VALUES ($1)", [("two",), ("three",)])
        assert await tx.fetchval("SELECT count(*) FROM items") == 3
        assert names(path) == []  # not yet visible to anyone else
    assert names(path) == ["one", "two", "three"]


async def test_transaction_rolls_back_on_exception(db: SqliteDatabase, path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ($1)", "lost")
            raise RuntimeError("boom")
    assert names(path) == []
    assert not db._conn.in_transaction
    await db.execute("INSERT INTO items (name) VALUES ('after')")
    assert names(path) == ["after"]


async def test_failed_commit_rolls_back(db: SqliteDatabase, path: Path) -> None:
    """A deferred foreign key fails at COMMIT, which leaves SQLite's transaction open: the
    backend must roll it back, or the next statement would run inside it."""
    await db.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY, item INTEGER"
        " REFERENCES items (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('parent')")
            await tx.execute("INSERT INTO child (item) VALUES (999)")
    assert not db._conn.in_transaction
    assert names(path) == []
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (name) VALUES ('next')")
    assert names(path) == ["next"]


async def test_cancelled_transaction_rolls_back_and_releases_the_lock(
    db: SqliteDatabase, path: Path
) -> None:
    inside = asyncio.Event()

    async def stuck() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('cancelled')")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not db._conn.in_transaction
    assert not db._lock.locked()
    # The file's write lock is free: another connection writes at once (no busy wait).
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("INSERT INTO items (name) VALUES ('other')")
    finally:
        other.close()
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (name) VALUES ('mine')")
    assert names(path) == ["other", "mine"]


async def test_statement_outside_a_transaction_waits_for_it(db: SqliteDatabase, path: Path) -> None:
    """A plain statement issued while a transaction is open must not run inside it."""
    release = asyncio.Event()

    async def open_transaction() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('tx')")
            await release.wait()
            raise RuntimeError("roll back")

    task = asyncio.create_task(open_transaction())
    await asyncio.sleep(0.01)
    plain = asyncio.create_task(db.execute("INSERT INTO items (name) VALUES ('plain')"))
    await asyncio.sleep(0.01)
    assert not plain.done()
    release.set()
    with pytest.raises(RuntimeError):
        await task
    await plain
    assert names(path) == ["plain"]  # not rolled back with the transaction


# -- another connection holds the write lock ----------------------------------------------------


@pytest.mark.parametrize("kind", ["statement", "transaction"])
async def test_waiting_for_another_process_does_not_block_the_loop(
    db: SqliteDatabase, path: Path, kind: str
) -> None:
    hold = 1.5
    async with other_process_holds_lock(path, hold) as holder, Ticker() as ticker:
        start = time.monotonic()
        if kind == "statement":
            await db.execute("INSERT INTO items (name) VALUES ('mine')")
        else:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO items (name) VALUES ('mine')")
        done = time.monotonic()
        committed_at = await holder.wait_committed()
    assert done >= committed_at, "went ahead while the other process held the lock"
    assert done - start >= hold / 2
    # Had the loop waited for the lock itself, it would have stalled for about all of ``hold``.
    assert ticker.max_gap < hold / 3, f"the loop stalled for {ticker.max_gap * 1000:.0f} ms"
    assert ticker.ticks >= 20
    assert db.thread_runs == 1
    assert names(path) == ["holder", "mine"]
    # Back on the loop afterwards, with a zero busy timeout there.
    assert db._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    await db.execute("INSERT INTO items (name) VALUES ('again')")
    assert db.thread_runs == 1


async def test_lock_waits_retry_after_short_sleeps(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off the loop a busy statement is tried again after 0.2, 0.4, ... ms, never more than
    2 ms apart: SQLite's own busy handler slept up to 25 ms at a time, so a lock released just
    after such a sleep began was waited for needlessly (docs/performance.md, third pass)."""
    pauses: list[float] = []
    monkeypatch.setattr(database.time, "sleep", pauses.append)
    tries = 0

    def busy_six_times(conn: sqlite3.Connection, query: str, params: object) -> str:
        nonlocal tries
        tries += 1
        if tries <= 6:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
            raise busy
        return "ran"

    assert db._wait_and_run(busy_six_times, "", (), threading.Event()) == "ran"
    assert pauses == pytest.approx([0.0002, 0.0004, 0.0008, 0.0016, 0.002, 0.002])
    # The loop's connection never waits inside SQLite: busy comes back at once.
    assert db._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0


async def test_reads_do_not_wait_for_another_process(db: SqliteDatabase, path: Path) -> None:
    await db.execute("INSERT INTO items (name) VALUES ('before')")
    hold = 1.0
    async with other_process_holds_lock(path, hold) as holder:
        with no_full_collections():
            start = time.monotonic()
            assert await db.fetchall("SELECT name FROM items") == [{"name": "before"}]
            done = time.monotonic()
        assert done < await holder.wait_committed()  # read while the writer held its lock
    assert done - start < hold / 2  # not (most of) the time the writer holds its lock
    assert db.thread_runs == 0  # nor waited for it in the thread


async def test_lock_wait_gives_up_after_the_busy_timeout(path: Path) -> None:
    busy_timeout, hold = 1.0, 3.0
    db = await SqliteDatabase.open(str(path), busy_timeout=busy_timeout)
    try:
        await db.execute(SCHEMA)
        async with other_process_holds_lock(path, hold), Ticker() as ticker:
            start = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO items (name) VALUES ('never')")
            waited = time.monotonic() - start
            # Waiting on the loop would stall it for the whole busy timeout.
            assert ticker.max_gap < busy_timeout / 2, f"stalled {ticker.max_gap * 1000:.0f} ms"
        # Gave up after the busy timeout, well before the holder let go.
        assert 0.8 * busy_timeout <= waited < hold - 0.5
        assert not db._conn.in_transaction and not db._lock.locked()
        await db.execute("INSERT INTO items (name) VALUES ('later')")
        assert names(path) == ["holder", "later"]
    finally:
        await db.close()


async def test_cancel_while_waiting_for_the_lock(db: SqliteDatabase, path: Path) -> None:
    async with other_process_holds_lock(path, 2.0):
        task = asyncio.create_task(db.execute("INSERT INTO items (name) VALUES ('cancelled')"))
        await asyncio.sleep(0.2)
        assert not task.done()
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Let go within a retry's sleep (2 ms at most), not when the holder commits (1.8 s on) or
        # at the end of the busy timeout (5 s); the rest of the bound is for a loaded machine.
        assert time.monotonic() - start < 1.0
        assert not db._lock.locked()
    # The thread is done with the connection: the loop uses it again, at zero busy timeout.
    assert db._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    await db.execute("INSERT INTO items (name) VALUES ('after')")
    assert names(path) == ["holder", "after"]


async def test_two_databases_on_one_file_in_one_process(db: SqliteDatabase, path: Path) -> None:
    """The other writer on the same loop: waiting for it on the loop would never end."""
    other = await SqliteDatabase.open(str(path))
    try:
        first_in = asyncio.Event()
        order: list[str] = []

        async def first() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO items (name) VALUES ('first')")
                first_in.set()
                await asyncio.sleep(0.3)
                order.append("first commits")

        async def second() -> None:
            await first_in.wait()
            async with other.transaction() as tx:
                order.append("second begins")
                await tx.execute("INSERT INTO items (name) VALUES ('second')")

        async with Ticker() as ticker:
            await asyncio.wait_for(asyncio.gather(first(), second()), 10)
        assert order == ["first commits", "second begins"]
        # A wait on the loop never ends, or ends in "locked" after blocking the loop for the busy
        # timeout (5 s): ``wait_for`` and the order catch both, and the gap bound only has to
        # rule out the loop blocking for a while on the way (first holds its lock for 0.3 s).
        assert ticker.max_gap < 0.5, f"the loop stalled for {ticker.max_gap * 1000:.0f} ms"
        assert other.thread_runs == 1
        assert names(path) == ["first", "second"]
    finally:
        await other.close()


# -- bulk statements ----------------------------------------------------------------------------

BULK_INSERT = (
    "INSERT INTO items (name, qty) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')"
    " FROM json_each($1) RETURNING id"
)


async def test_bulk_statements_run_off_the_loop(db: SqliteDatabase, path: Path) -> None:
    # 300,000 rows unpacked from one JSON argument into a table with an index, in scattered
    # order (like the token store's random keys): a long statement, about 1-2 s here (it makes no
    # Python objects, so the garbage collector, which would stall the loop from any thread, stays
    # out of it).
    rows = 300_000
    await db.execute("CREATE INDEX items_name ON items (name)")
    bulk = json.dumps([[f"item-{i * 7919 % rows:06}", i] for i in range(rows)])
    async with Ticker() as ticker:
        start = time.monotonic()
        await db.execute(BULK_INSERT.removesuffix(" RETURNING id"), bulk)
        took = time.monotonic() - start
    assert db.thread_runs == 1
    # Had it run on the loop, the loop would have stalled for all of ``took``: long enough that a
    # third of it leaves room for a loaded machine's own stalls (which also make ``took`` longer).
    assert took > 0.5, f"the statement took only {took * 1000:.0f} ms: make it longer"
    assert ticker.max_gap < took / 3, f"the loop stalled for {ticker.max_gap * 1000:.0f} ms"
    # A few rows stay on the loop: the hop to the thread would cost more than the statement.
    few = json.dumps([["few", 1], ["few", 2], ["few", 3]])
    assert len(await db.fetchall(BULK_INSERT, few)) == 3
    await db.executemany("INSERT INTO items (name) VALUES ($1)", [("small",)] * 10)
    assert db.thread_runs == 1
    await db.executemany("INSERT INTO items (name) VALUES ($1)", [("big",)] * 300)
    assert db.thread_runs == 2
    assert await db.fetchval("SELECT count(*) FROM items") == rows + 3 + 10 + 300


# -- checkpoints and close ----------------------------------------------------------------------


def _size(file: Path) -> int:
    return file.stat().st_size


async def _write_for_a_while(db: SqliteDatabase, wal: Path, *, pause: float = 0.025) -> int:
    """About 8 MB of WAL frames (2,000 one-row commits of 1 KB) in 40 bursts ``pause`` seconds
    apart; return the largest WAL file size seen."""
    largest = 0
    for burst in range(40):
        for i in range(50):
            await db.execute("INSERT INTO items (name) VALUES ($1)", f"{burst}-{i}-" + "x" * 1000)
        largest = max(largest, _size(wal))
        await asyncio.sleep(pause)
    return largest


async def test_checkpointer_keeps_the_wal_bounded(path: Path) -> None:
    """Checkpoints run while writes keep coming: PASSIVE ones, and a RESTART one when the log
    passes the frame limit (lowered here to 200 frames, about 800 KB)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(database, "_WAL_RESTART_FRAMES", 200)
        db = await SqliteDatabase.open(str(path), checkpoint_interval=0.05)
        try:
            await db.execute(SCHEMA)
            assert db._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            largest = await _write_for_a_while(db, Path(f"{path}-wal"))
            assert db._checkpointer is not None and db._checkpointer.runs >= 5
            assert largest < 3_000_000, largest
            assert await db.fetchval("SELECT count(*) FROM items") == 2000
        finally:
            await db.close()


async def test_passive_checkpoints_in_quiet_moments_keep_the_wal_small(path: Path) -> None:
    """With pauses between bursts, PASSIVE checkpoints copy the whole log and the next write
    starts it over: the WAL stays at about one burst, and no writer is ever held off."""
    db = await SqliteDatabase.open(str(path), checkpoint_interval=0.02)
    try:
        await db.execute(SCHEMA)
        largest = await _write_for_a_while(db, Path(f"{path}-wal"), pause=0.1)
        assert db._checkpointer is not None and db._checkpointer.runs >= 20
        assert db._checkpointer.restarts == 0
        assert largest < 1_500_000, largest
    finally:
        await db.close()


def _log_frames(conn: sqlite3.Connection) -> int:
    """How many frames the WAL holds (a PASSIVE checkpoint reports it, copying what it can)."""
    return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


@dataclass
class LogWithReader:
    db: SqliteDatabase
    checkpointer: database._Checkpointer
    conn: sqlite3.Connection  # the test's own, to drive ``_checkpoint`` from a thread
    reader: sqlite3.Connection  # in a read transaction over the 40 rows


@asynccontextmanager
async def log_with_reader(path: Path) -> AsyncIterator[LogWithReader]:
    """40 one-row commits of 1 KB in the WAL, no checkpoint run yet (the checkpointer is idle
    and driven by hand), and a reader in the log."""
    db = await SqliteDatabase.open(str(path), checkpoint_interval=3600)
    checkpointer = db._checkpointer
    assert checkpointer is not None
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=0.0, check_same_thread=False)
    reader = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        await db.execute(SCHEMA)
        for i in range(40):
            await db.execute("INSERT INTO items (name) VALUES ($1)", f"{i}-" + "x" * 1000)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM items").fetchone()[0] == 40
        yield LogWithReader(db, checkpointer, conn, reader)
    finally:
        reader.close()
        conn.close()
        await db.close()


async def test_a_quick_restart_waits_for_no_reader(path: Path) -> None:
    """A fully copied log is started over by a RESTART that waits for no one: while a reader is
    in the log it gives up at once (one that waited would hold the write lock, so every writer,
    until the reader left), and once the reader is gone it starts the log over."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(database, "_TRY_RESTART_FRAMES", 20)
        # A RESTART that waited would wait out its timeout (the reader stays): make that 5 s.
        patch.setattr(database, "_RESTART_TIMEOUT_MS", 5000)
        async with log_with_reader(path) as log:
            checkpointer, conn = log.checkpointer, log.conn
            start = time.monotonic()
            assert await asyncio.to_thread(checkpointer._checkpoint, conn)  # all copied
            assert time.monotonic() - start < 2.5  # not the 5 s a waiting RESTART would take
            assert (checkpointer.quick_tries, checkpointer.quick_restarts) == (1, 0)
            assert checkpointer.restarts == 0
            assert _log_frames(conn) >= 40  # not started over: the reader is in it

            log.reader.execute("COMMIT")
            assert await asyncio.to_thread(checkpointer._checkpoint, conn)
            assert (checkpointer.quick_tries, checkpointer.quick_restarts) == (2, 1)
            await log.db.execute("INSERT INTO items (name) VALUES ('after')")
            assert _log_frames(conn) < 5  # the log started over from its beginning
            assert await log.db.fetchval("SELECT count(*) FROM items") == 41
            assert log.db.thread_runs == 0  # no write ever met a lock


async def test_a_long_log_gets_a_restart_that_waits_for_the_reader(path: Path) -> None:
    """Past ``_WAL_RESTART_FRAMES`` the RESTART waits (up to its timeout) for a reader to leave,
    then starts the log over."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(database, "_WAL_RESTART_FRAMES", 20)
        # A timeout well past the reader's 0.2 s, so that waiting it out shows (5 s, not ~0.3).
        patch.setattr(database, "_RESTART_TIMEOUT_MS", 5000)
        async with log_with_reader(path) as log:
            checkpointer, conn = log.checkpointer, log.conn
            leave = threading.Timer(0.2, log.reader.execute, ("COMMIT",))
            leave.start()
            start = time.monotonic()
            assert await asyncio.to_thread(checkpointer._checkpoint, conn)
            took = time.monotonic() - start  # before the join, which would wait the 0.2 s itself
            leave.join()
            # It waited for the reader (0.2 s), and no more (not its whole 5 s timeout).
            assert 0.15 < took < 2.5
            assert (checkpointer.restarts, checkpointer.quick_tries) == (1, 0)
            await log.db.execute("INSERT INTO items (name) VALUES ('after')")
            assert _log_frames(conn) < 5


async def test_without_checkpoints_the_wal_grows(path: Path) -> None:
    """The control for the tests above: with the checkpointer idle (and SQLite's automatic
    checkpoints off on the loop's connection) the same writes leave a large WAL."""
    db = await SqliteDatabase.open(str(path), checkpoint_interval=3600)
    try:
        await db.execute(SCHEMA)
        largest = await _write_for_a_while(db, Path(f"{path}-wal"))
        assert db._checkpointer is not None and db._checkpointer.runs == 0
        assert largest > 7_000_000, largest
    finally:
        await db.close()


def _exists(file: Path) -> bool:
    return file.exists()


def _threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


async def test_close_stops_everything(path: Path) -> None:
    db = await SqliteDatabase.open(str(path), checkpoint_interval=0.02)
    await db.execute(SCHEMA)
    async with other_process_holds_lock(path, 0.2):
        await db.execute("INSERT INTO items (name) VALUES ('waited')")  # starts the wait thread
    assert db.thread_runs == 1
    checkpointer = db._checkpointer
    assert checkpointer is not None and checkpointer.alive
    executor = db._executor
    assert executor is not None

    await db.close()
    await db.close()  # a second close is a no-op

    assert not checkpointer.alive
    assert not [t for t in getattr(executor, "_threads", ()) if t.is_alive()]
    assert not _threads_named(f"sqlite-checkpoint:{path.name}")
    with pytest.raises(sqlite3.ProgrammingError):
        await db.execute("SELECT 1")
    # The last connection to the file is gone: SQLite folded the WAL in and removed it.
    assert not _exists(Path(f"{path}-wal"))
    assert names(path) == ["holder", "waited"]


async def test_dropping_an_unclosed_database_stops_its_checkpointer(path: Path) -> None:
    db = await SqliteDatabase.open(str(path), checkpoint_interval=0.02)
    checkpointer = db._checkpointer
    assert checkpointer is not None and checkpointer.alive
    db._conn.close()
    del db
    gc.collect()  # the database and its transaction helper refer to each other
    for _ in range(100):
        if not checkpointer.alive:
            break
        await asyncio.sleep(0.02)
    assert not checkpointer.alive
