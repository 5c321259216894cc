"""The state tables in the queue's PostgreSQL database, shared by every node (state_db.py).

One synchronous psycopg connection per store, used under a lock, as the SQLite side
uses its file: the state is small and off the hot path except one indexed read per
session, so a pool or the async driver would buy nothing; event-loop code hands the
work to a worker thread (`run`). Autocommit, so each statement commits by itself, and
`transaction()` for the few writes that must go together.

The tables live in their own schema, `relaymail_state`, so they never meet the queue's
tables. A lost connection (a restarted server, a failover) raises `StateUnavailable`
for that call and is opened again by the next one: no store has to know about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .state_db import Dialect, Rows, StateSchema, StateSchemaNewer, StateUnavailable

_P = ParamSpec("_P")
_T = TypeVar("_T")

NAMESPACE = "relaymail_state"
# Every node creates the tables at start; this advisory lock makes them take turns
# (two concurrent CREATE TABLE IF NOT EXISTS can both miss and one then fails).
_SCHEMA_LOCK = 0x72656C61  # "rela"
CONNECT_TIMEOUT = 10


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """`?` as psycopg's `%s`; state SQL never holds a literal `%` or `?`."""
    if "%" in sql:
        raise ValueError("state SQL must not contain '%'")
    return sql.replace("?", "%s")


class _Connection:
    """A psycopg connection that speaks the state stores' SQL (`?` placeholders)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Rows:
        return self._conn.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> object:
        with self._conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), rows)
        return None


class PostgresStateDb:
    dialect = Dialect.POSTGRESQL

    def __init__(self, dsn: str, schema: StateSchema) -> None:
        self._dsn = dsn
        self._schema = schema
        self._prepared = False
        self._lock = threading.Lock()
        self.where = f"PostgreSQL {_describe(dsn)} ({schema.filename.removesuffix('.db')})"
        # Connected at first use, which event-loop code makes on a worker thread: a
        # server slow to answer must not stall the loop, nor one out of reach stop a start.
        self._conn: psycopg.Connection[Any] | None = None

    def _connected(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            conn.execute(f"SET search_path TO {NAMESPACE}")
            self._conn = conn
        if not self._prepared:
            self._prepare(self._conn, self._schema)
            self._prepared = True
        return self._conn

    def _prepare(self, conn: psycopg.Connection[Any], schema: StateSchema) -> None:
        name = schema.filename.removesuffix(".db")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {NAMESPACE}")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS state_version"
                " (name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = conn.execute(
                "SELECT version FROM state_version WHERE name = %s", (name,)
            ).fetchone()
            found = 0 if row is None else int(row[0])
            if found > schema.version:
                raise StateSchemaNewer(
                    f"{self.where}: schema version {found} is newer than this relaymail"
                )
            if found == schema.version:
                return
            for script in schema.scripts_from(found, self.dialect):
                conn.execute(script.encode())  # several statements, no parameters
            conn.execute(
                "INSERT INTO state_version (name, version) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                (name, schema.version),
            )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            raise StateUnavailable(f"{self.where}: {_first_line(exc)}") from exc

    @contextlib.contextmanager
    def connection(self) -> Iterator[_Connection]:
        with self._lock, self._errors():
            yield _Connection(self._connected())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Connection]:
        with self._lock, self._errors():
            conn = self._connected()
            with conn.transaction():
                yield _Connection(conn)

    async def run(self, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`work(*args)` on a worker thread: every statement is a round trip to the server."""
        return await asyncio.to_thread(work, *args, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _describe(dsn: str) -> str:
    """host/dbname of `dsn`, never its password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    return f"{parts.get('host', 'localhost')}/{parts.get('dbname', '')}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
