"""Moving the messages of one SQLite queue shard into another (a shard left beyond N workers).

Two database files cannot share one atomic transaction (SQLite's ATTACH is
atomic per file in WAL mode), so a message moves in two commits: first it
is inserted into the destination under its own id (queue ids are unique
across a queue's shards, queue/ids.py), then deleted from the source. A
crash in between leaves it in both; the next move finds its id in the
destination already and only deletes it from the source. The move runs
before the destination's scheduler loads, so the copy cannot have been
delivered meanwhile: nothing is delivered twice, nothing is lost.

Rows move as they are (recipient states, attempts, replies): both files are
at this relaymail's schema version once opened, so their columns agree.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from .schema import DEFAULT_BUSY_TIMEOUT, open_database

if TYPE_CHECKING:
    from .sqlite import SqliteStore
    from .writer import Transaction

__all__ = ["adopt_shard"]

_BATCH = 100  # messages per pair of commits
_CHUNK = 1 << 20  # body octets copied at a time


async def adopt_shard(source: Path, destination: SqliteStore) -> int:
    """Move every message of the queue in `source` into `destination`; how many moved."""
    _, conn = open_database(source, None, DEFAULT_BUSY_TIMEOUT, check_same_thread=False)
    moved = 0
    try:
        while batch := [r[0] for r in conn.execute(
            "SELECT id FROM message ORDER BY id LIMIT ?", (_BATCH,)
        )]:  # fmt: skip
            moved += await destination.import_messages(conn, batch)
            conn.execute("BEGIN IMMEDIATE")
            marks = ",".join("?" * len(batch))
            for table, column in (("recipient", "message_id"), ("body", "message_id"),
                                  ("message", "id")):  # fmt: skip
                conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", batch)
            conn.execute("COMMIT")
    finally:
        conn.close()
    return moved


def import_messages(txn: Transaction, source: sqlite3.Connection, ids: list[int]) -> int:
    """The destination's half: insert the messages `ids` of `source` not here yet."""
    conn = txn.conn
    added = 0
    for qid in ids:
        row = source.execute("SELECT * FROM message WHERE id = ?", (qid,)).fetchone()
        if row is None or _copy_row(conn, "message", _columns(source, "message"), row) == 0:
            continue  # gone meanwhile, or moved before a crash: here already
        added += 1
        columns = _columns(source, "recipient")
        for recipient in source.execute("SELECT * FROM recipient WHERE message_id = ?", (qid,)):
            _copy_row(conn, "recipient", columns, recipient)
        found = source.execute("SELECT length(data) FROM body WHERE message_id = ?", (qid,))
        size = found.fetchone()
        if size is None:
            continue  # a message without its body stays as it was: held when loaded
        conn.execute("INSERT INTO body (message_id, data) VALUES (?, zeroblob(?))", (qid, size[0]))
        with (
            source.blobopen("body", "data", qid, readonly=True) as src,
            txn.open_blob("body", "data", qid) as dst,  # counted: a connection keeps each
        ):
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
    return added


def _columns(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})"))


def _copy_row(
    conn: sqlite3.Connection, table: str, columns: tuple[str, ...], row: tuple[object, ...]
) -> int:
    names = ", ".join(columns)
    marks = ", ".join("?" * len(columns))
    sql = f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})"
    return conn.execute(sql, row).rowcount
