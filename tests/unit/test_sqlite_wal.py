"""switch_to_wal, and the state databases the workers of one daemon open together."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import pytest

from relaymail.sqlite_wal import switch_to_wal
from relaymail.state_db import StateDb


def test_the_switch_waits_while_another_connection_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    # busy_timeout 0: SQLite answers "database is locked" at once, as in a deadlock.
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    assert switch_to_wal(conn, timeout=10) == "wal"
    conn.close()
    holder.close()


def test_the_switch_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        switch_to_wal(conn, timeout=0.2)
    conn.close()
    holder.close()


def _open(directory: Path, start: Any, results: Queue[str]) -> None:
    start.wait()
    try:
        StateDb(directory, "shared.db", "CREATE TABLE t (a INTEGER);").close()
        results.put("ok")
    except Exception as exc:  # the outcome is what the test looks at
        results.put(repr(exc))


def test_workers_opening_a_new_state_database_together_all_get_it(tmp_path: Path) -> None:
    """Four processes open one new file at the same moment, twenty times: none fails
    (without the wait, about one round in fifteen had a "database is locked")."""
    context = multiprocessing.get_context("fork")
    for round_number in range(20):
        directory = tmp_path / str(round_number)
        start, results = context.Barrier(4), context.Queue()
        args = (directory, start, results)
        workers = [context.Process(target=_open, args=args) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert [results.get(timeout=5) for _ in workers] == ["ok"] * 4
