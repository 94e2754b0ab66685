"""One database interface over PostgreSQL (asyncpg) and embedded SQLite.

Queries are written once, in PostgreSQL's style with `$1` placeholders; the
SQLite backend rewrites them to SQLite's `?1`. Both backends return rows that
index by column name, TIMESTAMPTZ columns as aware UTC datetimes, JSONB
columns as decoded JSON and BOOLEAN columns as bool. Times are passed in from
Python rather than taken from the server's clock, so both backends agree.

DDL in migrations uses `{id}` for an auto-incrementing 64-bit primary key.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import asyncpg

from libs.config import Settings
from libs.errors import UnavailableError
from libs.telemetry import database_span

Dialect = Literal["postgresql", "sqlite"]
Row = Any  # asyncpg.Record or sqlite3.Row: both index by column name

_PLACEHOLDER = re.compile(r"\$(\d+)")

# PostgreSQL errors that mean the connection or the server went away.
_CONNECTION_LOST = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)


def _adapt_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime passed to the database; use UTC")
    # A fixed width keeps text comparison in SQLite equal to time order.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _convert_datetime(value: bytes) -> datetime:
    return datetime.fromisoformat(value.decode())


def _install_sqlite_types() -> None:
    sqlite3.register_adapter(datetime, _adapt_datetime)
    sqlite3.register_adapter(dict, json.dumps)
    sqlite3.register_adapter(list, json.dumps)
    sqlite3.register_converter("TIMESTAMPTZ", _convert_datetime)
    sqlite3.register_converter("JSONB", json.loads)
    sqlite3.register_converter("BOOLEAN", lambda value: value not in (b"0", b""))


_install_sqlite_types()


class Connection:
    """A connection inside a transaction, with the same methods as Database."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self._raw = raw
        self.dialect = dialect

    def _sql(self, query: str) -> str:
        if self.dialect == "sqlite":
            return _PLACEHOLDER.sub(r"?\1", query)
        return query

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        with database_span(self.dialect, query):
            if self.dialect == "postgresql":
                return list(await self._raw.fetch(query, *args))
            async with self._raw.execute(self._sql(query), args) as cursor:
                return list(await cursor.fetchall())

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        rows = await self.fetch(query, *args)
        return rows[0] if rows else None

    async def fetchval(self, query: str, *args: Any) -> Any:
        row = await self.fetchrow(query, *args)
        return None if row is None else row[0]

    async def execute(self, query: str, *args: Any) -> int:
        """Run a statement and return the number of rows it changed."""
        with database_span(self.dialect, query):
            if self.dialect == "postgresql":
                status = await self._raw.execute(query, *args)
                tail = status.rsplit(" ", 1)[-1]
                return int(tail) if tail.isdigit() else 0
            async with self._raw.execute(self._sql(query), args) as cursor:
                return int(cursor.rowcount)

    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        with database_span(self.dialect, query):
            if self.dialect == "postgresql":
                await self._raw.executemany(query, list(rows))
            else:
                await self._raw.executemany(self._sql(query), list(rows))


class Database:
    """A connection pool (PostgreSQL) or a single connection (SQLite)."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.dialect: Dialect = "sqlite" if url.startswith("sqlite:") else "postgresql"
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._sqlite: aiosqlite.Connection | None = None
        self._sqlite_lock = asyncio.Lock()

    @property
    def skip_locked(self) -> str:
        """Row-locking clause for queue reads; SQLite serialises writers instead."""
        return " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""

    async def connect(self) -> None:
        try:
            if self.dialect == "postgresql":
                self._pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    init=_init_postgres_connection,
                    reset=_reset_postgres_connection,
                    command_timeout=30,
                    # asyncpg prepares every statement, and PostgreSQL may
                    # keep a generic plan made while a table was empty: a
                    # sequential scan that it never replans as the table grows
                    # unless ANALYZE runs. Custom plans use the current size.
                    server_settings={"plan_cache_mode": "force_custom_plan"},
                )
            else:
                await self._connect_sqlite()
        except (OSError, asyncpg.PostgresError, sqlite3.Error) as exc:
            raise UnavailableError(f"cannot connect to the database: {exc}") from exc

    async def _connect_sqlite(self) -> None:
        path = sqlite_path(self.url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._sqlite = await aiosqlite.connect(
            path,
            detect_types=sqlite3.PARSE_DECLTYPES,
            isolation_level=None,
        )
        self._sqlite.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA busy_timeout=10000",
            "PRAGMA foreign_keys=ON",
        ):
            await self._sqlite.execute(pragma)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._sqlite is not None:
            await self._sqlite.close()
            self._sqlite = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Run the block in one transaction, committed when it returns."""
        try:
            if self.dialect == "postgresql":
                assert self._pool is not None, "Database.connect() was not called"
                async with self._pool.acquire() as raw:
                    try:
                        async with raw.transaction():
                            yield Connection(raw, "postgresql")
                    except asyncpg.exceptions.InterfaceError as exc:
                        # When the server ends the session mid-query (shutdown,
                        # pg_terminate_backend), the rollback fails with an
                        # InterfaceError that hides the connection error.
                        lost = exc.__context__
                        if not isinstance(lost, _CONNECTION_LOST):
                            raise
                        raise UnavailableError(f"database unavailable: {lost}") from exc
            else:
                assert self._sqlite is not None, "Database.connect() was not called"
                async with self._sqlite_lock:
                    await self._sqlite.execute("BEGIN IMMEDIATE")
                    try:
                        yield Connection(self._sqlite, "sqlite")
                    except BaseException:
                        await self._sqlite.rollback()
                        raise
                    await self._sqlite.commit()
        except _CONNECTION_LOST as exc:
            raise UnavailableError(f"database unavailable: {exc}") from exc
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise UnavailableError(f"database busy: {exc}") from exc
            raise

    async def run(self, work: Callable[[Connection], Any]) -> Any:
        async with self.transaction() as conn:
            return await work(conn)

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        async with self.transaction() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        async with self.transaction() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.transaction() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> int:
        async with self.transaction() as conn:
            return await conn.execute(query, *args)


async def _reset_postgres_connection(conn: asyncpg.Connection) -> None:
    """Make a released connection ready for the next caller.

    asyncpg's default reset runs a statement on every release to drop
    session state: advisory locks, cursors, LISTEN and SET. Pooled connections
    here only run transactions (SET LOCAL, transaction-scoped locks), which end
    with the transaction, so only a transaction left open needs ending. That
    saves a round trip per transaction.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _init_postgres_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def id_in(dialect: Dialect, column: str, parameter: int) -> str:
    """Return a condition "column is in the id list passed as $parameter".

    On SQLite the list is passed as JSON text.
    """
    if dialect == "postgresql":
        return f"{column} = ANY(${parameter}::bigint[])"
    return f"{column} IN (SELECT value FROM json_each(${parameter}))"


@functools.lru_cache(maxsize=256)
def values_list(rows: int, columns: int, first: int = 1) -> str:
    """Return "($1, $2), ($3, $4)" for `rows` rows of `columns` parameters."""
    numbers = itertools.count(first)
    return ", ".join(
        "(" + ", ".join(f"${next(numbers)}" for _ in range(columns)) + ")"
        for _ in range(rows)
    )


def sqlite_path(url: str) -> str:
    """Return the file path of a sqlite:///path URL (sqlite:///:memory: too)."""
    path = url.partition(":///")[2] or url.partition("://")[2]
    return path or ":memory:"


def database_url(settings: Settings, service: str) -> str:
    """Return the configured DATABASE_URL, or the service's SQLite file in DATA_DIR."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return f"sqlite:///{(settings.data_dir / f'{service}.db').resolve()}"


@dataclass(frozen=True)
class Migration:
    """One schema change, applied once, in version order."""

    version: int
    description: str
    statements: tuple[str, ...]


_ID_COLUMN = {
    "postgresql": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
}


async def migrate(db: Database, component: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations `component` lacks; return how many were applied.

    Safe when several replicas run it at once: on PostgreSQL a transaction
    advisory lock serialises them, and SQLite's BEGIN IMMEDIATE does the same.
    Each run applies all missing versions in one transaction.
    """
    async with db.transaction() as conn:
        if db.dialect == "postgresql":
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('alert-history-migrate'))"
            )
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL,"
            " version INTEGER NOT NULL,"
            " description TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL,"
            " PRIMARY KEY (component, version))"
        )
        rows = await conn.fetch(
            "SELECT version FROM schema_migrations WHERE component = $1", component
        )
        applied = {row[0] for row in rows}
        count = 0
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in applied:
                continue
            for statement in migration.statements:
                await conn.execute(statement.replace("{id}", _ID_COLUMN[db.dialect]))
            await conn.execute(
                "INSERT INTO schema_migrations"
                " (component, version, description, applied_at)"
                " VALUES ($1, $2, $3, $4)",
                component,
                migration.version,
                migration.description,
                datetime.now(UTC),
            )
            count += 1
        return count
