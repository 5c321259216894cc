"""Sendmail's synchronous submission: one message into the queue without a writer thread."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ..message import Envelope
from .ids import format_queue_id
from .schema import DEFAULT_BUSY_TIMEOUT, open_database
from .sqlite_writes import insert_message
from .writer import Transaction, storage_error


def submit_now(
    directory: Path | str,
    envelope: Envelope,
    data: bytes,
    received_at: float,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> str:
    """Queue one message for a running (or the next) daemon, synchronously: postdrop's job.

    No writer thread and no event loop, so a short-lived `sendmail` starts fast; the
    SUBMIT admin event makes a running daemon schedule the message within a second.
    Durable (fsync'd) when it returns; QueueFull when the storage cannot take it.
    """
    recipients = tuple(dict.fromkeys(envelope.recipients))
    _, conn = open_database(Path(directory), None, busy_timeout, check_same_thread=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        txn = Transaction(conn)
        qid, _ = insert_message(txn, envelope.sender, recipients, data, received_at, announce=True)
        txn.finish()
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise storage_error(exc) from None
    finally:
        conn.close()
    return format_queue_id(qid)
