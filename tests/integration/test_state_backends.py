"""The state databases on both backends: one schema text, one SQL, the same behaviour."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest

from relaymail.config_queue import QueueBackend, QueueSettings
from relaymail.state_db import Dialect, StateSchema, StateSchemaNewer, StateUnavailable, open_state

TABLES = """
CREATE TABLE IF NOT EXISTS seen (
    name TEXT PRIMARY KEY,   -- a comment; with a semicolon
    at   {REAL} NOT NULL
) {WITHOUT_ROWID};
CREATE TABLE IF NOT EXISTS counted (id {SERIAL_KEY}, name TEXT NOT NULL UNIQUE);
"""
SCHEMA = StateSchema("seen.db", TABLES, version=2)


def test_one_schema_text_makes_the_same_tables_in_both(state_queue: QueueSettings) -> None:
    db = open_state(state_queue, SCHEMA)
    try:
        with db.transaction() as conn:
            conn.execute("INSERT INTO seen (name, at) VALUES (?, ?)", ("a", 1764547200.123456))
            (first,) = conn.execute(
                "INSERT INTO counted (name) VALUES (?) RETURNING id", ("x",)
            ).fetchone()
            conn.executemany("INSERT INTO counted (name) VALUES (?)", [("y",), ("z",)])
        with db.connection() as conn:
            # A double on both sides: a timestamp keeps its microseconds.
            assert conn.execute("SELECT at FROM seen").fetchone() == (1764547200.123456,)
            assert conn.execute("SELECT name FROM counted ORDER BY id").fetchall() == [
                ("x",), ("y",), ("z",),
            ]  # fmt: skip
            assert first == 1
    finally:
        db.close()
    expected = (
        Dialect.POSTGRESQL if state_queue.backend is QueueBackend.POSTGRESQL else Dialect.SQLITE
    )
    assert db.dialect is expected


def test_a_failed_transaction_leaves_nothing_on_either(state_queue: QueueSettings) -> None:
    db = open_state(state_queue, SCHEMA)
    try:
        with (
            pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)) as info,
            db.transaction() as conn,
        ):
            conn.execute("INSERT INTO seen VALUES (?, ?)", ("a", 1.0))
            conn.execute("INSERT INTO seen VALUES (?, ?)", ("a", 2.0))
        assert "UNIQUE" in str(info.value).upper()
        with db.connection() as conn:
            assert conn.execute("SELECT count(*) FROM seen").fetchone() == (0,)
    finally:
        db.close()


def test_a_newer_schema_is_refused_and_an_older_one_upgraded(state_queue: QueueSettings) -> None:
    old = StateSchema("seen.db", "CREATE TABLE IF NOT EXISTS seen (name TEXT PRIMARY KEY);")
    db = open_state(state_queue, old)
    with db.connection() as conn:
        conn.execute("INSERT INTO seen (name) VALUES (?)", ("kept",))
    db.close()
    upgraded = StateSchema(
        "seen.db",
        "CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY);",
        version=2,
        upgrades={2: "INSERT INTO names SELECT name FROM seen WHERE true ON CONFLICT DO NOTHING;"},
    )
    db = open_state(state_queue, upgraded)
    with db.connection() as conn:
        assert conn.execute("SELECT name FROM names").fetchall() == [("kept",)]
    db.close()
    # PostgreSQL connects at first use, SQLite opens its file at once: either refuses then.
    with pytest.raises(StateSchemaNewer) as refused:
        refusing = open_state(state_queue, old)
        with refusing.connection():
            pass
    assert str(refused.value).endswith("schema version 2 is newer than this relaymail")


def test_two_stores_of_one_database_keep_their_own_versions(state_queue: QueueSettings) -> None:
    other = StateSchema("other.db", "CREATE TABLE IF NOT EXISTS o (x TEXT);")
    for schema, table in [(SCHEMA, "seen"), (other, "o"), (SCHEMA, "seen")]:  # v2, v1, v2
        db = open_state(state_queue, schema)
        try:
            with db.connection() as conn:
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        finally:
            db.close()


async def test_run_does_the_work_on_a_worker_thread(state_queue: QueueSettings) -> None:
    db = open_state(state_queue, SCHEMA)

    def count() -> tuple[int, bool]:
        with db.connection() as conn:
            (rows,) = conn.execute("SELECT count(*) FROM seen").fetchone()
        return rows, threading.current_thread() is threading.main_thread()

    try:
        assert await db.run(count) == (0, False)
    finally:
        db.close()


def test_a_lost_postgresql_connection_fails_one_call_and_the_next_reconnects(
    postgres_dsn: str, tmp_path
) -> None:
    queue = QueueSettings(directory=tmp_path, backend=QueueBackend.POSTGRESQL, dsn=postgres_dsn)
    db = open_state(queue, SCHEMA)
    try:
        with db.connection() as conn:
            (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StateUnavailable) as lost, db.connection() as conn:
            conn.execute("SELECT 1")
        assert str(lost.value).startswith("PostgreSQL 127.0.0.1/")
        assert "relaymail_test@" not in str(lost.value)  # never the DSN's user or password
        with db.connection() as conn:
            assert conn.execute("SELECT count(*) FROM seen").fetchone() == (0,)
    finally:
        db.close()


def test_the_state_tables_live_apart_from_the_queue_tables(postgres_dsn: str, tmp_path) -> None:
    queue = QueueSettings(directory=tmp_path, backend=QueueBackend.POSTGRESQL, dsn=postgres_dsn)
    db = open_state(queue, SCHEMA)
    with db.connection():
        pass
    db.close()
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 2"
        ).fetchall()
    assert rows == [
        ("relaymail_state", "counted"), ("relaymail_state", "seen"),
        ("relaymail_state", "state_version"),
    ]  # fmt: skip
