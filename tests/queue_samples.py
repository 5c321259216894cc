"""Sample queue values, and the SQLite queue's row checks, shared by the store tests."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

from relaymail.message import Envelope
from relaymail.queue import RecipientState, RecipientUpdate
from relaymail.queue.schema import DB_FILENAME

ENVELOPE = Envelope("alice@example.org", ("bob@example.com", "carol@example.net"))


def body(n: int, size: int = 2048) -> bytes:
    head = b"Subject: message %d\r\n\r\n" % n
    filler = hashlib.sha256(b"%d" % n).hexdigest().encode()
    return head + (filler * (size // len(filler) + 1))[: size - len(head) - 2] + b"\r\n"


def update(
    message_id: str,
    recipient: str,
    state: RecipientState,
    *,
    attempts: int = 1,
    next_attempt: float = 0.0,
    **facts: str | float | None,
) -> RecipientUpdate:
    return RecipientUpdate(message_id, recipient, state, attempts, next_attempt, **facts)  # type: ignore[arg-type]


def raw(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(directory / DB_FILENAME, isolation_level=None)


def orphans(directory: Path) -> tuple[int, int, int]:
    """Rows that would mean a half-written or half-deleted message."""
    with contextlib.closing(raw(directory)) as conn:
        return (
            conn.execute(
                "SELECT count(*) FROM body WHERE message_id NOT IN (SELECT id FROM message)"
            ).fetchone()[0],
            conn.execute(
                "SELECT count(*) FROM recipient WHERE message_id NOT IN (SELECT id FROM message)"
            ).fetchone()[0],
            conn.execute(
                "SELECT count(*) FROM message WHERE id NOT IN (SELECT message_id FROM body)"
                " OR id NOT IN (SELECT message_id FROM recipient)"
            ).fetchone()[0],
        )
