"""The queue database file: opening it (WAL, fsync at commit), its schema and its version."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..errors import QueueUnusable, RelaymailError
from ..queue_problem import QueueProblem
from ..sqlite_wal import switch_to_wal
from .files import open_failure, prepare_directory
from .store import RecipientState

DB_FILENAME = "queue.db"
SCHEMA_VERSION = 6
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock
ADMIN_EVENT_RETENTION = 7 * 24 * 3600.0

_SCHEMA_V1 = """
CREATE TABLE schema_version (
    version    INTEGER NOT NULL,
    applied_at REAL NOT NULL
);
CREATE TABLE queue_id_state (last_id INTEGER NOT NULL);
INSERT INTO queue_id_state (last_id) VALUES (0);
-- Bodies live in their own table so that scans of `message` (listing,
-- counting, stats) read small rows only.
CREATE TABLE message (
    id          INTEGER PRIMARY KEY,
    sender      TEXT NOT NULL,
    received_at REAL NOT NULL,
    size        INTEGER NOT NULL,
    held        INTEGER NOT NULL DEFAULT 0,
    warned      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE body (
    message_id INTEGER PRIMARY KEY,
    data       BLOB NOT NULL
);
CREATE TABLE recipient (
    message_id   INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    address      TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_attempt REAL,
    last_reply   TEXT,
    last_error   TEXT,
    tls          TEXT,
    host         TEXT,
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
CREATE INDEX recipient_by_state ON recipient (state, message_id);
CREATE TABLE admin_event (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER,
    action     TEXT NOT NULL,
    at         REAL NOT NULL
);
"""

# Version 2: the maildrop files already queued. The daemon unlinks a file only
# after the transaction that queued it (and recorded its name here) committed;
# a crash in between leaves the file, and its name here says not to queue it again.
_SCHEMA_V2 = """
CREATE TABLE pickup (
    name       TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL,
    at         REAL NOT NULL
) WITHOUT ROWID;
"""
# Version 3: the scheduler's active window is refilled in due order (sqlite_reads.py,
# `due_messages`), so a restart or a refill reads the due messages, not the whole queue.
# Partial: final recipients waiting for their message's last one are not in it; the
# queries that use it must say `state IN ('queued', 'deferred')` with these literals.
_SCHEMA_V3 = """
CREATE INDEX recipient_due ON recipient (next_attempt, message_id)
    WHERE state IN ('queued', 'deferred');
"""
# Version 4: RFC 8689's REQUIRETLS, a property of the envelope (MAIL FROM), kept
# with the message so a restart delivers it under the same requirement.
_SCHEMA_V4 = """
ALTER TABLE message ADD COLUMN requiretls INTEGER NOT NULL DEFAULT 0;
"""
# Version 5: RFC 3461's DSN parameters, each in its wire form, NULL when not given:
# RET and ENVID (xtext, as received) of MAIL; NOTIFY and ORCPT ("type;xtext") of each RCPT.
_SCHEMA_V5 = """
ALTER TABLE message ADD COLUMN ret TEXT;
ALTER TABLE message ADD COLUMN envid TEXT;
ALTER TABLE recipient ADD COLUMN notify TEXT;
ALTER TABLE recipient ADD COLUMN orcpt TEXT;
"""
# Version 6: the counts `queue stats` and `queue list` show, kept by triggers in the
# transactions that change them (one row, so reading them costs the same at any queue
# size), the index that finds the oldest message, and one that keeps the start's
# cleanup of old admin events (a `delete --all` writes one per message) off a scan.
# The migration counts the queue once.
_SCHEMA_V6 = """
CREATE TABLE IF NOT EXISTS queue_summary (
    messages  INTEGER NOT NULL,
    held      INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    queued    INTEGER NOT NULL,
    deferred  INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    bounced   INTEGER NOT NULL
);
DELETE FROM queue_summary;
INSERT INTO queue_summary
    SELECT m.n, m.held, m.bytes, r.queued, r.deferred, r.delivered, r.bounced
    FROM (SELECT count(*) AS n, coalesce(sum(held != 0), 0) AS held,
                 coalesce(sum(size), 0) AS bytes FROM message) AS m,
         (SELECT coalesce(sum(state = 'queued'), 0) AS queued,
                 coalesce(sum(state = 'deferred'), 0) AS deferred,
                 coalesce(sum(state = 'delivered'), 0) AS delivered,
                 coalesce(sum(state = 'bounced'), 0) AS bounced FROM recipient) AS r;
CREATE TRIGGER IF NOT EXISTS summary_message_in AFTER INSERT ON message BEGIN
    UPDATE queue_summary SET messages = messages + 1, held = held + (NEW.held != 0),
        bytes = bytes + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS summary_message_out AFTER DELETE ON message BEGIN
    UPDATE queue_summary SET messages = messages - 1, held = held - (OLD.held != 0),
        bytes = bytes - OLD.size;
END;
CREATE TRIGGER IF NOT EXISTS summary_message_change AFTER UPDATE OF held, size ON message BEGIN
    UPDATE queue_summary SET held = held + (NEW.held != 0) - (OLD.held != 0),
        bytes = bytes + NEW.size - OLD.size;
END;
CREATE TRIGGER IF NOT EXISTS summary_recipient_in AFTER INSERT ON recipient BEGIN
    UPDATE queue_summary SET queued = queued + (NEW.state = 'queued'),
        deferred = deferred + (NEW.state = 'deferred'),
        delivered = delivered + (NEW.state = 'delivered'),
        bounced = bounced + (NEW.state = 'bounced');
END;
CREATE TRIGGER IF NOT EXISTS summary_recipient_out AFTER DELETE ON recipient BEGIN
    UPDATE queue_summary SET queued = queued - (OLD.state = 'queued'),
        deferred = deferred - (OLD.state = 'deferred'),
        delivered = delivered - (OLD.state = 'delivered'),
        bounced = bounced - (OLD.state = 'bounced');
END;
CREATE TRIGGER IF NOT EXISTS summary_recipient_change AFTER UPDATE OF state ON recipient
    WHEN NEW.state IS NOT OLD.state BEGIN
    UPDATE queue_summary
        SET queued = queued + (NEW.state = 'queued') - (OLD.state = 'queued'),
        deferred = deferred + (NEW.state = 'deferred') - (OLD.state = 'deferred'),
        delivered = delivered + (NEW.state = 'delivered') - (OLD.state = 'delivered'),
        bounced = bounced + (NEW.state = 'bounced') - (OLD.state = 'bounced');
END;
CREATE INDEX IF NOT EXISTS message_by_received ON message (received_at);
CREATE INDEX IF NOT EXISTS admin_event_by_time ON admin_event (at);
"""
# From version n to n + 1.
_MIGRATIONS = {1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4, 4: _SCHEMA_V5, 5: _SCHEMA_V6}

EXPIRED_EVENTS_SQL = "DELETE FROM admin_event WHERE at < ?"
# Python's sqlite3 keeps a weak reference for every blob handle a connection ever
# opened until the connection closes (CPython gh-144424: ~88 bytes each, per message
# for ever); a connection that opened this many is replaced by a new one.
BLOB_HANDLES_PER_CONNECTION = 10_000
PENDING = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)


def connect(
    path: Path, *, check_same_thread: bool = True, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=check_same_thread, cached_statements=64
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


def open_database(
    directory: Path, max_bytes: int | None, busy_timeout: float, *, check_same_thread: bool
) -> tuple[Path, sqlite3.Connection]:
    """The queue database in `directory`, created if needed, in WAL with fsync at commit.

    QueueUnusable when the directory or the database cannot be a queue.
    """
    prepare_directory(directory)
    path = directory / DB_FILENAME
    try:
        conn = connect(path, check_same_thread=check_same_thread, busy_timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise open_failure(path, exc) from None
    try:
        _writer_settings(conn, path, max_bytes, busy_timeout)
        _create_or_check_schema(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise open_failure(path, exc) from None
    except BaseException:
        conn.close()
        raise
    return path, conn


def reopen_writer(path: Path, max_bytes: int | None, busy_timeout: float) -> sqlite3.Connection:
    """A new write connection to a queue `open_database` opened: sqlite3.Error if it fails."""
    conn = connect(path, check_same_thread=False, busy_timeout=busy_timeout)
    try:
        _writer_settings(conn, path, max_bytes, busy_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _writer_settings(
    conn: sqlite3.Connection, path: Path, max_bytes: int | None, busy_timeout: float
) -> None:
    mode = switch_to_wal(conn, busy_timeout)
    if mode.lower() != "wal":
        raise RelaymailError(f"{path}: cannot switch to WAL mode (got {mode})")
    # FULL: in WAL mode, fsync the WAL at every commit; NORMAL would not.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    # 4 MiB of pages: the indexes' hot pages fit; a large body written through the
    # cache spills to the WAL early rather than holding 16 MiB of pages no one reads.
    conn.execute("PRAGMA cache_size = -4096")
    if max_bytes is not None:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")


def _create_or_check_schema(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if exists is None:
            _run(conn, _SCHEMA_V1 + "".join(_MIGRATIONS.values()), SCHEMA_VERSION)
        else:
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            while version in _MIGRATIONS:
                _run(conn, _MIGRATIONS[version], version + 1)
                version += 1
            if version != SCHEMA_VERSION:
                raise QueueUnusable(
                    path,
                    QueueProblem.NEWER_SCHEMA,
                    f"queue schema version {version}, this relaymail knows {SCHEMA_VERSION};"
                    " refusing to touch it",
                )
        cutoff = time.time() - ADMIN_EVENT_RETENTION
        conn.execute(EXPIRED_EVENTS_SQL, (cutoff,))
        # Names left by a crash between unlinking a file and forgetting its name.
        conn.execute("DELETE FROM pickup WHERE at < ?", (cutoff,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run(conn: sqlite3.Connection, script: str, version: int) -> None:
    # Not executescript: it would commit the open transaction first. A trigger's
    # body holds semicolons, so a statement ends where SQLite says it is complete.
    statement = ""
    for part in script.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                conn.execute(statement)
            statement = ""
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time())
    )
