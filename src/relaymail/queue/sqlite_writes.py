"""The queue's writes: functions of the open transaction, run on the writer thread."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ..dsn_request import DsnRequest
from ..message_data import IN_MEMORY, MessageData
from .ids import format_queue_id
from .rows import stored_message_dsn, stored_recipient_dsn
from .schema import PENDING
from .store import AdminAction, TraceHeader
from .writer import Transaction


def insert_message(
    txn: Transaction,
    sender: str,
    recipients: tuple[str, ...],
    data: MessageData,
    received_at: float,
    trace: TraceHeader | None = None,
    pickup: str | None = None,
    requiretls: bool = False,
    dsn: DsnRequest | None = None,
) -> tuple[int, bytes]:
    """The new message's queue id and the trace header stored in front of its data.

    A body held in memory (MessageData.IN_MEMORY) goes in with the row; a larger one
    is a zeroblob of the final size filled in chunks through an incremental blob
    handle: SQLite never holds the whole body in one buffer, and neither do we.
    It is part of the transaction: a failure (or a crash) anywhere before the commit
    leaves no row at all, never a partial body.
    """
    qid = txn.new_queue_id()
    header = b"" if trace is None else trace(format_queue_id(qid))
    size = len(header) + data.size
    conn = txn.conn
    conn.execute(
        "INSERT INTO message (id, sender, received_at, size, requiretls, ret, envid)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (qid, sender, received_at, size, requiretls, *stored_message_dsn(dsn)),
    )
    if data.size <= IN_MEMORY and (held := data.in_memory(header)) is not None:
        # Small: one statement, and no blob handle (schema.py says why).
        conn.execute("INSERT INTO body (message_id, data) VALUES (?, ?)", (qid, held))
    else:
        conn.execute("INSERT INTO body (message_id, data) VALUES (?, zeroblob(?))", (qid, size))
        with txn.open_blob("body", "data", qid) as blob:
            blob.write(header)
            for chunk in data.chunks():
                blob.write(chunk)
    conn.executemany(
        "INSERT INTO recipient (message_id, idx, address, state, next_attempt, notify, orcpt)"
        " VALUES (?, ?, ?, 'queued', ?, ?, ?)",
        [
            (qid, idx, rcpt, received_at, *stored_recipient_dsn(dsn, rcpt))
            for idx, rcpt in enumerate(recipients)
        ],
    )
    if pickup is not None:
        conn.execute(
            "INSERT INTO pickup (name, message_id, at) VALUES (?, ?, ?)",
            (pickup, qid, time.time()),
        )
    return qid, header


def forget_pickups(txn: Transaction, names: tuple[str, ...]) -> None:
    txn.conn.executemany("DELETE FROM pickup WHERE name = ?", [(n,) for n in names])


def _delete_message(conn: sqlite3.Connection, qid: int) -> bool:
    conn.execute("DELETE FROM recipient WHERE message_id = ?", (qid,))
    conn.execute("DELETE FROM body WHERE message_id = ?", (qid,))
    return conn.execute("DELETE FROM message WHERE id = ?", (qid,)).rowcount > 0


def apply_updates(txn: Transaction, rows: list[tuple[Any, ...]]) -> None:
    """Rows of (state, attempts, next_attempt, last_attempt, last_reply, last_error, tls,
    host, message id, address); a message they leave with no pending recipient is deleted.

    Such a message is deleted without updating its rows first: the update would only
    be thrown away, and on a queue at its size limit it can need the very pages the
    delete frees (an outcome refused for want of space it was about to give back).
    """
    conn = txn.conn
    by_message: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_message.setdefault(row[8], []).append(row)
    kept: list[tuple[Any, ...]] = []
    for qid, updates in by_message.items():
        if any(row[0] in PENDING for row in updates):
            kept += updates  # still pending after this: the message stays
            continue
        pending = conn.execute(
            "SELECT address FROM recipient WHERE message_id = ? AND state IN (?, ?)",
            (qid, *PENDING),
        ).fetchall()
        if {address for (address,) in pending} <= {row[9] for row in updates}:
            _delete_message(conn, qid)  # its last ones: no row is updated only to go
        else:
            kept += updates
    conn.executemany(
        "UPDATE recipient SET state = ?, attempts = ?, next_attempt = ?, last_attempt = ?,"
        " last_reply = ?, last_error = ?, tls = ?, host = ?"
        " WHERE message_id = ? AND address = ?",
        kept,
    )


def _append_event(conn: sqlite3.Connection, qid: int | None, action: AdminAction) -> None:
    conn.execute(
        "INSERT INTO admin_event (message_id, action, at) VALUES (?, ?, ?)",
        (qid, action.value, time.time()),
    )


def set_flag(txn: Transaction, qid: int, column: str, value: bool) -> bool:
    sql = f"UPDATE message SET {column} = ? WHERE id = ?"  # column: one of ours, not input
    return txn.conn.execute(sql, (int(value), qid)).rowcount > 0


def hold(txn: Transaction, qid: int, held: bool) -> bool:
    found = set_flag(txn, qid, "held", held)
    if found:
        _append_event(txn.conn, qid, AdminAction.HOLD if held else AdminAction.RELEASE)
    return found


def delete(txn: Transaction, qid: int) -> bool:
    found = _delete_message(txn.conn, qid)
    if found:
        _append_event(txn.conn, qid, AdminAction.DELETE)
    return found


def retry(txn: Transaction, qid: int | None, now: float) -> int:
    sql = "UPDATE recipient SET next_attempt = ? WHERE state IN (?, ?) AND next_attempt > ?"
    params: tuple[Any, ...] = (now, *PENDING, now)
    if qid is not None:
        exists = txn.conn.execute("SELECT 1 FROM message WHERE id = ?", (qid,)).fetchone()
        if exists is None:
            return 0
        sql += " AND message_id = ?"
        params += (qid,)
    moved = txn.conn.execute(sql, params).rowcount
    _append_event(txn.conn, qid, AdminAction.RETRY)
    return moved
