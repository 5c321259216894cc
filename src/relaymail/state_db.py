"""The small SQLite files beside the queue: the MTA-STS policy cache, the TLS report
counters, the downgrade memory.

They share one way to be opened, because they share the same needs:

* WAL, so the CLI can read (or `relaymail tls forget` write) while the daemon works, and a
  busy timeout, so the two wait for each other instead of failing with "database is locked";
* `synchronous=NORMAL`: each file is a cache or a set of counters, and the last commit lost
  to a power cut costs a refetch, a few counts or one "saw TLS" that the next session writes
  again, never mail. The queue, which must not lose a commit, opens its own file its own way;
* a schema version in `user_version`: a file written by a newer relaymail is refused with
  its path, rather than misread;
* one connection shared by threads under a lock, so event-loop code can hand slow work to a
  worker thread (`run`) while quick lookups stay inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from .errors import RelaymailError

__all__ = ["BUSY_TIMEOUT_MS", "StateDb"]

BUSY_TIMEOUT_MS = 5000

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StateDb:
    """`<directory>/<filename>`, created with `schema` and stamped with `version`.

    `schema` must be idempotent (CREATE ... IF NOT EXISTS): it runs at every open, so a
    file from an older version that lacks a table gets it.
    """

    def __init__(self, directory: Path, filename: str, schema: str, *, version: int = 1) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / filename
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            self._prepare(schema, version)
        except BaseException:
            self._conn.close()
            raise

    def _prepare(self, schema: str, version: int) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > version:
            raise RelaymailError(
                f"{self.path}: schema version {found} is newer than this relaymail"
            )
        conn.executescript(schema)
        if found != version:
            conn.execute(f"PRAGMA user_version = {version}")

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread alone; each statement commits by itself."""
        with self._lock:
            yield self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction: committed on exit, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    async def run(self, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`work(*args)` on a worker thread, for event-loop code: it may wait on the lock."""
        return await asyncio.to_thread(work, *args, **kwargs)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
