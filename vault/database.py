"""One small async SQL interface with two backends: SQLite (embedded default) and PostgreSQL.

The token store, the audit log and the gateway's stores all speak this interface, so every store
runs unchanged on either backend:

- SQL is written once, with PostgreSQL's numbered placeholders (``$1``, ``$2``); the SQLite
  backend rewrites them to ``?`` and reorders the arguments.
- ``Database.transaction()`` yields a connection on which statements run atomically. SQLite has
  one writer at a time, so its backend keeps a single connection guarded by a lock (WAL mode);
  PostgreSQL uses an asyncpg pool.
- ``migrate(db, component, migrations)`` applies numbered migrations once, recording them in
  ``schema_migrations``; on PostgreSQL an advisory lock keeps two gateway processes that start
  together from applying the same migration twice.

URLs: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite://:memory:``,
``postgresql://user@host:5432/db``.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiosqlite
import asyncpg

__all__ = [
    "Connection",
    "Database",
    "Dialect",
    "Migration",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "migrate",
    "open_database",
]

Dialect = Literal["sqlite", "postgresql"]
Row = Mapping[str, Any]

_PLACEHOLDER_RE = re.compile(r"\$(\d+)")


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


def _to_qmark(sql: str, args: Sequence[Any]) -> tuple[str, list[Any]]:
    order: list[int] = []

    def substitute(match: re.Match[str]) -> str:
        order.append(int(match.group(1)) - 1)
        return "?"

    rewritten = _PLACEHOLDER_RE.sub(substitute, sql)
    if not order:
        return rewritten, list(args)
    return rewritten, [args[i] for i in order]


class _SqliteConnection:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        query, params = _to_qmark(sql, args)
        await self._conn.execute(query, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        query, _ = _to_qmark(sql, rows[0])
        await self._conn.executemany(query, [_to_qmark(sql, row)[1] for row in rows])

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        query, params = _to_qmark(sql, args)
        async with self._conn.execute(query, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else dict(row)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        query, params = _to_qmark(sql, args)
        async with self._conn.execute(query, params) as cursor:
            rows = await cursor.fetchall()
        return [dict(row) for row in rows]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else next(iter(row.values()))


class SqliteDatabase:
    """SQLite through aiosqlite: one connection, one writer at a time, WAL journal."""

    dialect: Dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._plain = _SqliteConnection(conn)

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        return cls(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
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
        async with self._lock:
            return await self._plain.fetchval(sql, *args)

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._conn.close()


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
