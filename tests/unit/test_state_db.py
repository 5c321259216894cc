"""The small state files: pragmas, the schema version, the transaction, the worker thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from relaymail.errors import RelaymailError
from relaymail.state_db import (
    BUSY_TIMEOUT_MS,
    StateAccess,
    StateDb,
    StateMissing,
    StateUnavailable,
)

SCHEMA = "CREATE TABLE IF NOT EXISTS seen (name TEXT PRIMARY KEY);"


def test_a_new_file_gets_the_schema_the_version_and_the_pragmas(tmp_path: Path) -> None:
    db = StateDb(tmp_path / "state", "seen.db", SCHEMA, version=3)
    with db.connection() as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (BUSY_TIMEOUT_MS,)
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [
            ("seen",),
            ("sqlite_autoindex_seen_1",),
        ]
    db.close()
    assert db.path == tmp_path / "state" / "seen.db"


def test_an_older_file_is_upgraded_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "seen.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE seen (name TEXT PRIMARY KEY)")
    raw.execute("INSERT INTO seen VALUES ('kept')")
    raw.commit()
    raw.close()
    db = StateDb(tmp_path, "seen.db", SCHEMA, version=2)
    with db.connection() as conn:
        assert conn.execute("SELECT name FROM seen").fetchall() == [("kept",)]
    db.close()
    with pytest.raises(RelaymailError) as info:
        StateDb(tmp_path, "seen.db", SCHEMA, version=1)
    assert str(info.value) == f"{path}: schema version 2 is newer than this relaymail"


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = StateDb(tmp_path, "seen.db", SCHEMA)
    with pytest.raises(sqlite3.IntegrityError), db.transaction() as conn:
        conn.execute("INSERT INTO seen VALUES ('a')")
        conn.execute("INSERT INTO seen VALUES ('a')")
    with db.transaction() as conn:
        conn.execute("INSERT INTO seen VALUES ('b')")
    with db.connection() as conn:
        assert conn.execute("SELECT name FROM seen").fetchall() == [("b",)]
    db.close()


async def test_run_does_the_work_on_a_worker_thread(tmp_path: Path) -> None:
    db = StateDb(tmp_path, "seen.db", SCHEMA)

    def count(extra: int) -> tuple[int, bool]:
        with db.connection() as conn:
            (rows,) = conn.execute("SELECT count(*) FROM seen").fetchone()
        return rows + extra, threading.current_thread() is threading.main_thread()

    assert await db.run(count, 2) == (2, False)
    db.close()


@pytest.mark.parametrize("access", [StateAccess.READ, StateAccess.WRITE])
def test_an_admins_open_never_creates_the_file_nor_its_directory(
    tmp_path: Path, access: StateAccess
) -> None:
    with pytest.raises(StateMissing):
        StateDb(tmp_path / "state", "seen.db", SCHEMA, access=access)
    assert not (tmp_path / "state").exists()


def test_a_reader_writes_nothing_and_leaves_no_wal_behind(tmp_path: Path) -> None:
    StateDb(tmp_path, "seen.db", SCHEMA).close()
    db = StateDb(tmp_path, "seen.db", SCHEMA, access=StateAccess.READ)
    with pytest.raises(StateUnavailable), db.connection() as conn:
        conn.execute("INSERT INTO seen VALUES ('a')")
    db.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seen.db"]


def test_a_reader_leaves_an_older_file_to_the_daemon_to_upgrade(tmp_path: Path) -> None:
    StateDb(tmp_path, "seen.db", SCHEMA, version=1).close()
    with pytest.raises(StateUnavailable, match="older than this relaymail's 2"):
        StateDb(tmp_path, "seen.db", SCHEMA, version=2, access=StateAccess.READ)
    raw = sqlite3.connect(tmp_path / "seen.db")
    assert raw.execute("PRAGMA user_version").fetchone() == (1,)
    raw.close()
