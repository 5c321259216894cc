"""Switching a SQLite file to WAL while other processes may be opening it too."""

from __future__ import annotations

import sqlite3
import time

__all__ = ["switch_to_wal"]

_WAITS = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def switch_to_wal(conn: sqlite3.Connection, timeout: float) -> str:
    """PRAGMA journal_mode = WAL, retried for up to `timeout` seconds; the mode now in force.

    The switch needs the file's exclusive lock, and where two connections would wait
    for each other (the workers of one daemon opening a new file at the same moment)
    SQLite answers "database is locked" at once instead of waiting out the busy
    timeout: so the waiting is done here. Once a file is in WAL mode it stays so, and
    later opens take no exclusive lock.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in _WAITS or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.1)
