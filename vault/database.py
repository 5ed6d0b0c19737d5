"""One small async SQL interface with two backends: SQLite (embedded default) and PostgreSQL.

The token store, the audit log and the gateway's stores all speak this interface, so every store
runs unchanged on either backend:

- SQL is written once, with PostgreSQL's numbered placeholders (``$1``, ``$2``); the SQLite
  backend rewrites them to ``?`` and reorders the arguments.
- ``Database.transaction()`` yields a connection on which statements run atomically. SQLite has
  one writer at a time, so its backend keeps a single connection guarded by a lock (WAL mode),
  and runs statements on the event loop's thread, where they take microseconds (waits for other
  processes' locks, bulk statements and checkpoints go to threads: see "SQLite" below);
  PostgreSQL uses an asyncpg pool.
- ``migrate(db, component, migrations)`` applies numbered migrations once, recording them in
  ``schema_migrations``; on PostgreSQL an advisory lock keeps two gateway processes that start
  together from applying the same migration twice.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite://:memory:``,
``postgresql://user@host:5432/db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import asyncpg

__all__ = [
    "Connection",
    "Database",
    "Dialect",
    "Migration",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "in_transaction",
    "keyset_page",
    "migrate",
    "open_database",
]

Dialect = Literal["sqlite", "postgresql"]
Row = Mapping[str, Any]

_PLACEHOLDER_RE = re.compile(r"\$(\d+)")
_UNPACKS_RE = re.compile(r"\bjson_each\s*\(", re.IGNORECASE)


class Connection(Protocol):
    """The statements one can run, inside or outside a transaction."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchall(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class Database(Connection, Protocol):
    dialect: Dialect

    def transaction(self) -> Any:
        """``async with db.transaction() as tx:`` runs ``tx``'s statements atomically."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        ...


@asynccontextmanager
async def in_transaction(db: Database, tx: Connection | None) -> AsyncIterator[Connection]:
    """``tx``, the caller's transaction, when given; else a transaction of ``db``'s own. For
    methods that take an optional ``tx`` so that their writes commit with the caller's."""
    if tx is not None:
        yield tx
    else:
        async with db.transaction() as own:
            yield own


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. ``postgresql`` defaults to the SQLite text where the two agree."""

    version: int
    sqlite: str
    postgresql: str | None = None

    def sql_for(self, dialect: Dialect) -> str:
        if dialect == "postgresql" and self.postgresql is not None:
            return self.postgresql
        return self.sqlite


# -- SQLite -------------------------------------------------------------------------------------
#
# Statements run on the event loop's own thread, straight through the stdlib ``sqlite3``: on a
# local file in WAL mode with ``synchronous=NORMAL`` a small statement or a commit takes a few
# microseconds and never waits for the disk. What can take long is kept off the loop:
#
# - Another process's write lock (``tessera serve --workers N`` share one file). On the loop the
#   busy timeout is zero, so a statement that meets the lock fails at once with SQLITE_BUSY; it is
#   then run again in a thread of this database's own, which waits for the lock (up to
#   ``busy_timeout`` seconds, retrying after sleeps of 0.2-2 ms, so that neither a released lock
#   nor a cancelled caller is waited for long). The asyncio lock is held meanwhile, so only one
#   thread ever uses the connection.
# - WAL checkpoints, which copy the log into the database file and fsync both. SQLite runs them on
#   the committing connection (every 1,000 pages by default): that would be a commit on the loop
#   that stalls for the disk now and then. The loop's connection has ``wal_autocheckpoint`` off; a
#   thread with a connection of its own looks at the log every ``checkpoint_interval`` seconds
#   and, when it has changed, runs PASSIVE checkpoints, which never block a reader or a writer:
#   one after another while writes that came in during the last one remain (each has less to
#   copy than the one before), up to ``_CATCH_UP_PASSES``. The log starts over from its beginning
#   at the first write after a checkpoint that copied all of it, if no reader is in the log at
#   that moment; under steady writes from several processes that seldom happens, so once a
#   fully copied log is ``_TRY_RESTART_FRAMES`` long the thread starts it over itself with a
#   RESTART checkpoint that waits for no one (busy timeout 0: it gives up at once if a writer or
#   a reader is in the way, and holds the write lock only to sync and reset the log). Should the
#   log still reach ``_WAL_RESTART_FRAMES``, a RESTART checkpoint that does wait holds writers
#   off (they wait in their threads, not on their loops) until it can start the log over.
# - Opening and closing (the last close checkpoints) run in a thread too.

_log = logging.getLogger(__name__)

#: How long a statement waits for another connection's write lock before failing with
#: ``sqlite3.OperationalError: database is locked``.
_BUSY_TIMEOUT = 5.0
#: Off the loop, a statement that meets another connection's write lock is tried again after a
#: sleep that doubles from the first to the last of these (seconds). SQLite's own busy handler
#: sleeps 1, 2, 5, 10, 15, 20, 25, ... ms, so a lock released just after one of its longer sleeps
#: began could be waited for up to ~20 ms longer than needed; these sleeps overshoot by 2 ms at
#: most, and let a cancelled caller go within 2 ms. (Measured: the waits themselves are set by
#: the holder: RESTART checkpoints in the third pass, the other worker's own transactions since
#: the fourth; docs/performance.md.)
_BUSY_FIRST_SLEEP = 0.0002
_BUSY_MAX_SLEEP = 0.002
#: Seconds between two looks at the WAL by the checkpointer. A look costs a ``stat``; what it
#: finds to copy is what was written since the last one, so a short interval keeps each
#: checkpoint, and the log, small (tokenizing flat out writes ~15,000 frames a second).
_CHECKPOINT_INTERVAL = 0.1
#: PASSIVE checkpoints run back to back at most this many times per look, while the one before
#: left frames written during it: each copies and syncs fewer pages than the last, so the log
#: usually ends fully copied and starts over at the next write.
_CATCH_UP_PASSES = 8
#: A WAL of this many frames (pages, 4 KiB each by default) after the PASSIVE ones gets a
#: RESTART checkpoint that waits for writers and readers, and holds writers off meanwhile. (With
#: one-second looks and only these, tokenizing flat out met one every 1-3 s, and each held the
#: other worker's writes for 10-60 ms; docs/performance.md, fourth pass.)
_WAL_RESTART_FRAMES = 4096
#: After PASSIVE checkpoints copied all of a log this long (frames), a RESTART that waits for no
#: one (it gives up at once if a writer or reader is busy) starts it over.
_TRY_RESTART_FRAMES = 1024
#: How long a RESTART at ``_WAL_RESTART_FRAMES`` waits for the writer and readers of the moment.
_RESTART_TIMEOUT_MS = 1000
#: A WAL that grew past this during a burst is cut back to it when it is next reused (bytes).
_JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024
#: Bulk statements run in the database's thread rather than hold the loop for milliseconds:
#: ``executemany`` of this many rows or more, and a statement that unpacks rows from a JSON
#: argument (``json_each($n)``, the token store's bulk insert) whose text and bytes arguments add
#: up to this many bytes. The token store's insert costs 20-50 us of SQLite per row (random keys
#: in four indexes), so 16 KiB (about 40 rows of 390 bytes) is 1-2 ms, and a batch of 1,000 cards
#: would hold the loop for 20-60 ms. The hop to the thread and back costs 50-150 us of CPU here,
#: and a bulk statement takes 0-15 % more CPU there (bench/db.py).
_OFF_LOOP_ROWS = 256
_OFF_LOOP_BYTES = 16 * 1024

_T = TypeVar("_T")
_Op = Callable[[sqlite3.Connection, str, Any], _T]


@functools.lru_cache(maxsize=1024)
def _rewrite(sql: str) -> tuple[str, tuple[int, ...], int, bool]:
    """``sql`` with ``$n`` turned into ``?``; the argument index of each ``?``; how many
    arguments can be passed as they are (``$1..$n`` in order), or -1 if they must be reordered;
    and whether the statement unpacks rows from a JSON argument (so may be a bulk one).

    Cached per statement text: the stores send the same few dozen statements over and over, and
    the regular expressions cost more than a small statement does."""
    order = tuple(int(match.group(1)) - 1 for match in _PLACEHOLDER_RE.finditer(sql))
    as_given = len(order) if order == tuple(range(len(order))) else -1
    return _PLACEHOLDER_RE.sub("?", sql), order, as_given, _UNPACKS_RE.search(sql) is not None


def _to_qmark(sql: str, args: Sequence[Any]) -> tuple[str, Sequence[Any], bool]:
    """The ``?`` statement, its arguments, and whether to run it off the loop (bulk)."""
    query, order, as_given, unpacks = _rewrite(sql)
    if unpacks:
        unpacks = sum(len(a) for a in args if isinstance(a, str | bytes)) >= _OFF_LOOP_BYTES
    if as_given == len(args) or not order:
        return query, args, unpacks
    return query, [args[i] for i in order], unpacks


def _is_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY and its extended codes: another connection holds the lock. (Not
    SQLITE_LOCKED: that is a conflict within this connection, which waiting does not end.)"""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _op_execute(conn: sqlite3.Connection, query: str, params: Any) -> None:
    conn.execute(query, params).close()


def _op_executemany(conn: sqlite3.Connection, query: str, params: Any) -> None:
    before = conn.total_changes
    try:
        conn.executemany(query, params).close()
    except sqlite3.OperationalError as error:
        if _is_busy(error) and conn.total_changes != before:
            # Some rows are in: running it again would write them twice. (Inside a transaction
            # that holds the write lock, as ``executemany`` always is here, this does not happen.)
            raise sqlite3.OperationalError(f"{error} after part of executemany ran") from error
        raise


def _op_fetchone(conn: sqlite3.Connection, query: str, params: Any) -> Row | None:
    cursor = conn.execute(query, params)
    row = cursor.fetchone()
    cursor.close()  # ends the statement (and its read snapshot) even if rows were left
    return None if row is None else dict(row)


def _op_fetchall(conn: sqlite3.Connection, query: str, params: Any) -> list[Row]:
    return [dict(row) for row in conn.execute(query, params).fetchall()]


def _op_fetchval(conn: sqlite3.Connection, query: str, params: Any) -> Any:
    cursor = conn.execute(query, params)
    row = cursor.fetchone()
    cursor.close()
    return None if row is None else row[0]


async def _wait_out(future: asyncio.Future[_T], on_cancel: Callable[[], None] | None = None) -> _T:
    """Await ``future`` (work running in a thread). If the caller is cancelled, call
    ``on_cancel`` and wait for the thread to finish all the same before the cancellation goes on,
    so that nothing else uses the connection while the thread still does."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: the caller gets the cancellation
        raise


class _SqliteConnection:
    """The statements of a transaction: the database's lock is already held."""

    __slots__ = ("_db",)

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> None:
        query, params, bulk = _to_qmark(sql, args)
        await self._db._run(_op_execute, query, params, True, bulk)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        query, params = _many_params(sql, rows)
        await self._db._run(_op_executemany, query, params, True, len(rows) >= _OFF_LOOP_ROWS)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        query, params, bulk = _to_qmark(sql, args)
        return await self._db._run(_op_fetchone, query, params, True, bulk)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        query, params, bulk = _to_qmark(sql, args)
        return await self._db._run(_op_fetchall, query, params, True, bulk)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        query, params, bulk = _to_qmark(sql, args)
        return await self._db._run(_op_fetchval, query, params, True, bulk)


def _many_params(sql: str, rows: Sequence[Sequence[Any]]) -> tuple[str, Sequence[Sequence[Any]]]:
    query, order, as_given, _ = _rewrite(sql)
    if not order or all(len(row) == as_given for row in rows):
        return query, rows
    return query, [[row[i] for i in order] for row in rows]


class _SqliteTransaction:
    """``async with db.transaction() as tx``: BEGIN IMMEDIATE under the lock, COMMIT on success,
    ROLLBACK on any exception (cancellation included)."""

    __slots__ = ("_db",)

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def __aenter__(self) -> Connection:
        db = self._db
        await db._lock.acquire()
        try:
            await db._run(_op_execute, "BEGIN IMMEDIATE", (), True, False)
        except BaseException:
            try:
                db._rollback()  # a BEGIN that won the lock as its waiter was cancelled
            finally:
                db._lock.release()
            raise
        return db._tx

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        db = self._db
        try:
            if exc_type is not None:
                db._rollback()
                return
            try:
                await db._run(_op_execute, "COMMIT", (), True, False)
            except BaseException:
                db._rollback()
                raise
        finally:
            db._lock.release()


class _Checkpointer:
    """Checkpoints of one WAL database, from a thread with a connection of its own.

    Every ``interval`` seconds, if the WAL file changed since the last checkpoint, PASSIVE
    checkpoints copy the committed frames into the database file: they take no lock that a
    reader or a writer waits for. While one leaves frames that were written during it, another
    runs at once (up to ``_CATCH_UP_PASSES``); once the whole log is copied, the next writer
    starts the WAL over from its beginning, so the log stays about as long as ``interval``
    seconds of writes. A fully copied log of ``_TRY_RESTART_FRAMES`` or more is started over by
    a RESTART that waits for no one (and gives up if anyone is in the way); one that reaches
    ``_WAL_RESTART_FRAMES`` all the same gets a RESTART that makes writers wait."""

    def __init__(self, path: str, interval: float) -> None:
        self._path = path
        self._wal = path + "-wal"
        self._interval = interval
        self._stop = threading.Event()
        #: For tests and diagnostics: PASSIVE checkpoints run (each catch-up pass counted);
        #: RESTARTs that held writers off; RESTARTs tried without waiting, and how many of
        #: those started the log over.
        self.runs = 0
        self.restarts = 0
        self.quick_tries = 0
        self.quick_restarts = 0
        self._thread = threading.Thread(
            target=self._main, name=f"sqlite-checkpoint:{Path(path).name}", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def signal_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop and wait for the thread (blocks: call it from a thread)."""
        self._stop.set()
        self._thread.join()

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        """PASSIVE checkpoints until one finds nothing new, then a RESTART if the log is long;
        whether all of it was copied."""
        frames, copied = -1, -1
        for _ in range(_CATCH_UP_PASSES):
            last = frames
            # ``frames`` is the log's length when the checkpoint began: a pass that finds it
            # unchanged copied everything there was (or a reader's snapshot holds the rest back).
            _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.runs += 1
            if frames == last or frames < 0 or self._stop.is_set():  # -1: another checkpoint
                break
        if frames >= _WAL_RESTART_FRAMES:
            # Writers never left a moment to start the log over: make them.
            self.restarts += 1
            conn.execute(f"PRAGMA busy_timeout={_RESTART_TIMEOUT_MS}")
            try:
                _, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                conn.execute("PRAGMA busy_timeout=0")
        elif frames >= _TRY_RESTART_FRAMES and copied >= frames:
            # All copied: start the log over now if no writer or reader is in the way, waiting
            # for none of them (busy timeout 0). Else the next writer may, or the next look.
            self.quick_tries += 1
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.quick_restarts += not busy
        return copied >= frames

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        seen: tuple[int, int] | None = None
        try:
            while not self._stop.wait(self._interval):
                try:
                    stat = os.stat(self._wal)
                except FileNotFoundError:
                    continue
                mark = (stat.st_size, stat.st_mtime_ns)
                if mark == seen:
                    continue
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, isolation_level=None, timeout=0.0)
                    complete = self._checkpoint(conn)
                except sqlite3.Error as error:
                    _log.warning(
                        "sqlite_checkpoint_failed",
                        extra={"path": str(self._path), "error": str(error)},
                    )
                    continue
                if complete:  # all of it (a reader's snapshot can hold frames back)
                    seen = mark  # as before the checkpoint: a write during it shows next time
        finally:
            if conn is not None:
                conn.close()


def _connect(path: str, busy_timeout: float, checkpoints: bool) -> tuple[sqlite3.Connection, bool]:
    conn = sqlite3.connect(
        path,
        isolation_level=None,  # autocommit; transactions are BEGIN IMMEDIATE ... COMMIT
        check_same_thread=False,  # the loop's thread, and this database's thread for waits
        timeout=busy_timeout,  # while opening (off the loop); zero on the loop afterwards
        cached_statements=512,
    )
    try:
        wal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if wal and checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
        conn.execute("PRAGMA busy_timeout=0")
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn, wal


class SqliteDatabase:
    """SQLite through the stdlib ``sqlite3`` on the event loop: one connection, one writer at a
    time (an asyncio lock), WAL journal; waits for other processes and checkpoints run in
    threads (see the comment at the top of this section)."""

    dialect: Dialect = "sqlite"

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        busy_timeout: float = _BUSY_TIMEOUT,
        checkpointer: _Checkpointer | None = None,
    ) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._tx = _SqliteConnection(self)
        self._busy_timeout = busy_timeout
        self._checkpointer = checkpointer
        if checkpointer is not None:  # a database dropped without close() stops it too
            weakref.finalize(self, checkpointer.signal_stop)
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        #: Statements run in the database's thread: bulk ones, and those that met another
        #: connection's lock and waited for it there (for tests and diagnostics).
        self.thread_runs = 0

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        busy_timeout: float = _BUSY_TIMEOUT,
        checkpoint_interval: float | None = _CHECKPOINT_INTERVAL,
    ) -> SqliteDatabase:
        """Open (creating) the database file at ``path``, or ``:memory:``.

        ``checkpoint_interval=None`` leaves checkpoints to SQLite (on the committing connection,
        so on the loop)."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn, wal = await asyncio.to_thread(
            _connect, path, busy_timeout, checkpoint_interval is not None
        )
        checkpointer = None
        if wal and checkpoint_interval is not None:
            checkpointer = _Checkpointer(path, checkpoint_interval)
        return cls(conn, busy_timeout=busy_timeout, checkpointer=checkpointer)

    def transaction(self) -> _SqliteTransaction:
        return _SqliteTransaction(self)

    async def execute(self, sql: str, *args: Any) -> None:
        query, params, bulk = _to_qmark(sql, args)
        await self._run(_op_execute, query, params, False, bulk)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        query, params, bulk = _to_qmark(sql, args)
        return await self._run(_op_fetchone, query, params, False, bulk)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        query, params, bulk = _to_qmark(sql, args)
        return await self._run(_op_fetchall, query, params, False, bulk)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        query, params, bulk = _to_qmark(sql, args)
        return await self._run(_op_fetchval, query, params, False, bulk)

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            loop = asyncio.get_running_loop()
            await _wait_out(loop.run_in_executor(None, self._shut))

    def _shut(self) -> None:
        # In a thread: joining the checkpointer, and the last close of a WAL database (which
        # checkpoints it), can wait for the disk.
        if self._checkpointer is not None:
            self._checkpointer.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._conn.close()

    # -- execution --------------------------------------------------------------------------

    async def _run(self, op: _Op[_T], query: str, params: Any, locked: bool, bulk: bool) -> _T:
        """Run ``op`` on the loop; if another connection holds the lock, wait for it off the
        loop. ``locked``: the caller holds ``self._lock`` (inside a transaction). ``bulk``: run
        it off the loop from the start."""
        if not locked:
            if self._lock.locked() or bulk:
                # A transaction is open on the connection (running now would put the statement
                # inside it), or the statement goes to the thread: take the lock first.
                async with self._lock:
                    return await self._run(op, query, params, True, bulk)
        elif bulk:
            return await self._off_loop(op, query, params)
        try:
            return op(self._conn, query, params)
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise
        if locked:
            return await self._off_loop(op, query, params)
        async with self._lock:
            return await self._off_loop(op, query, params)

    async def _off_loop(self, op: _Op[_T], query: str, params: Any) -> _T:
        """Run ``op`` in this database's thread, waiting up to the busy timeout for locks. The
        caller holds ``self._lock``."""
        self.thread_runs += 1
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-wait")
        give_up = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._wait_and_run, op, query, params, give_up
        )
        return await _wait_out(future, give_up.set)

    def _wait_and_run(self, op: _Op[_T], query: str, params: Any, give_up: threading.Event) -> _T:
        conn = self._conn  # its busy timeout is 0: SQLITE_BUSY comes back at once
        deadline = time.monotonic() + self._busy_timeout
        pause = _BUSY_FIRST_SLEEP
        while True:
            try:
                return op(conn, query, params)
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or give_up.is_set() or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, _BUSY_MAX_SLEEP)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


# -- PostgreSQL ---------------------------------------------------------------------------------


class _PostgresConnection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        row = await self._conn.fetchrow(sql, *args)
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return [dict(row) for row in await self._conn.fetch(sql, *args)]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args)


class PostgresDatabase:
    """PostgreSQL through an asyncpg pool: the scale-out backend."""

    dialect: Dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        return cls(pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PostgresConnection(conn)

    async def execute(self, sql: str, *args: Any) -> None:
        await self._pool.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._pool.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        row = await self._pool.fetchrow(sql, *args)
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return [dict(row) for row in await self._pool.fetch(sql, *args)]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._pool.fetchval(sql, *args)

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._pool.close()


async def open_database(url: str) -> SqliteDatabase | PostgresDatabase:
    """Open the database named by ``url`` (see the module docstring for the forms)."""
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresDatabase.open(url)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        path = path.removeprefix("/") if not path.startswith("//") else path[1:]
        return await SqliteDatabase.open(path or ":memory:")
    raise ValueError("Database URLs start with sqlite:// or postgresql://")


# -- pages ----------------------------------------------------------------------------------------


def keyset_page(
    sql: str,
    args: list[object],
    *,
    after: tuple[int, str] | None,
    limit: int | None,
    newest_first: bool = False,
) -> str:
    """``sql`` (a SELECT ending in its WHERE conditions) ordered by ``(created_at, id)`` and
    cut to one page: the rows after the position ``after`` (created at in microseconds, id: the
    last row of the previous page), at most ``limit``. Appends its parameters to ``args``.

    A position, not an offset: rows deleted or added before it move nothing. Ties on
    ``created_at`` go by ascending id either way, so a page boundary inside a tie is exact.
    """
    if after is not None:
        args += [after[0], after[1]]
        at, key = len(args) - 1, len(args)
        beyond = "<" if newest_first else ">"
        sql += f" AND (created_at {beyond} ${at} OR (created_at = ${at} AND id > ${key}))"
    sql += " ORDER BY created_at DESC, id" if newest_first else " ORDER BY created_at, id"
    if limit is not None:
        args.append(limit)
        sql += f" LIMIT ${len(args)}"
    return sql


# -- migrations ---------------------------------------------------------------------------------

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (component, version)
)
"""


async def migrate(
    db: SqliteDatabase | PostgresDatabase, component: str, migrations: Sequence[Migration]
) -> int:
    """Apply the not-yet-applied ``migrations`` of ``component``; return how many ran."""
    applied = 0
    async with db.transaction() as tx:
        if db.dialect == "postgresql":
            # One migrating process at a time, across every gateway instance.
            lock_id = zlib.crc32(f"tessera:{component}".encode())
            await tx.execute("SELECT pg_advisory_xact_lock($1)", lock_id)
        await tx.execute(_MIGRATIONS_TABLE)
        done = {
            row["version"]
            for row in await tx.fetchall(
                "SELECT version FROM schema_migrations WHERE component = $1", component
            )
        }
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            for statement in _statements(migration.sql_for(db.dialect)):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (component, version) VALUES ($1, $2)",
                component,
                migration.version,
            )
            applied += 1
    return applied


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
