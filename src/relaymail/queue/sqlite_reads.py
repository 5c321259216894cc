"""The queue's reads: a pool of read-only connections and every query on it."""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..body import CHUNK_SIZE, MessageBody
from ..errors import BodyUnreadable, RelaymailError
from .files import QueueFiles
from .ids import format_queue_id, parse_queue_id
from .rows import (
    EVENT_COLUMNS,
    MESSAGE_COLUMNS,
    RECIPIENT_COLUMNS,
    admin_event,
    breakdown_queries,
    group_pending,
    message_detail,
    message_summary,
    pending_breakdown,
    recipients_by_message,
)
from .schema import BLOB_HANDLES_PER_CONNECTION, PENDING, connect
from .store import (
    AdminEvent,
    DueBatch,
    MessageDetail,
    MessageSummary,
    PendingBreakdown,
    PendingMessage,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
)

_IN_LIST = 500  # ids per `IN (...)`, well below SQLite's limit on parameters


class Readers:
    """A pool of read-only connections, usable from any thread one at a time."""

    def __init__(self, path: Path, files: QueueFiles) -> None:
        self._path = path
        self._files = files
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._blobs: dict[sqlite3.Connection, int] = {}  # blob handles each one opened
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise RelaymailError("the queue store is closed")
        self._files.verify(shm_only=True)  # a reader writes its read mark through the map
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = connect(self._path, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction:  # an exception inside a read transaction
                conn.execute("ROLLBACK")
            if self._blobs.get(conn, 0) < BLOB_HANDLES_PER_CONNECTION:
                self._idle.put(conn)
            else:  # its handles' leftovers go with it; the next use opens a new one
                with self._lock:
                    self._all.remove(conn)
                    del self._blobs[conn]
                conn.close()

    @contextlib.contextmanager
    def blob(self, table: str, column: str, row: int) -> Iterator[sqlite3.Blob]:
        """A read-only handle on one value, counted against its connection."""
        with self.connection() as conn:
            with self._lock:
                self._blobs[conn] = self._blobs.get(conn, 0) + 1
            with conn.blobopen(table, column, row, readonly=True) as handle:
                yield handle

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one read transaction: several queries, one state."""
        with self.connection() as conn:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")

    def close(self) -> None:
        self._closed = True
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class SqliteReads:
    """The read half of `SqliteStore`: every query, on the reader pool."""

    _readers: Readers

    # -- reads for the daemon ------------------------------------------------

    def load_data(self, message_id: str) -> bytes:
        qid = parse_queue_id(message_id)
        if qid is not None:
            with self._readers.connection() as conn:
                row = conn.execute("SELECT data FROM body WHERE message_id = ?", (qid,)).fetchone()
            if row is not None:
                return bytes(row[0])
        raise KeyError(message_id)

    def open_body(self, message_id: str) -> MessageBody:
        qid = parse_queue_id(message_id)
        if qid is not None:
            with self._readers.connection() as conn:
                # A body of one chunk comes with its size: one read instead of several
                # (header section, 8-bit scan, DATA) for the usual small message. The
                # join alone does not read a larger BLOB's pages.
                row = conn.execute(
                    "SELECT m.size, CASE WHEN m.size <= ? THEN b.data END"
                    " FROM message AS m JOIN body AS b ON b.message_id = m.id WHERE m.id = ?",
                    (CHUNK_SIZE, qid),
                ).fetchone()
            if row is not None and row[1] is not None:
                return MessageBody.of(bytes(row[1]))
            if row is not None:
                return MessageBody(row[0], functools.partial(self._read_body, qid))
        raise KeyError(message_id)

    def _read_body(self, qid: int, offset: int, length: int) -> bytes:
        # Measured: a 64 KiB body reads in ~10 µs, a hop to a thread costs ~45 µs;
        # so chunks are read on the event loop itself.
        try:
            with self._readers.blob("body", "data", qid) as blob:
                blob.seek(offset)
                return blob.read(length)
        except (sqlite3.Error, RelaymailError) as exc:
            raise BodyUnreadable(str(exc) or type(exc).__name__) from None

    _PENDING_SQL = (
        "SELECT m.id, m.sender, m.received_at, m.size, m.held, m.warned,"
        " r.address, r.state, r.attempts, r.next_attempt, m.requiretls,"
        " m.ret, m.envid, r.notify, r.orcpt"
        " FROM message AS m JOIN recipient AS r ON r.message_id = m.id"
        # The unary + keeps the planner on the primary keys (already in output
        # order) instead of the state index plus a sort of the whole queue.
        " WHERE +r.state IN (?, ?) {where}"
        " ORDER BY m.id, r.idx"
    )

    def load_pending(self) -> list[PendingMessage]:
        with self._readers.connection() as conn:
            rows = conn.execute(self._PENDING_SQL.format(where=""), PENDING).fetchall()
        return group_pending(rows)

    def load_pending_message(self, message_id: str) -> PendingMessage | None:
        qid = parse_queue_id(message_id)
        if qid is None:
            return None
        sql = self._PENDING_SQL.format(where="AND m.id = ?")
        with self._readers.connection() as conn:
            rows = conn.execute(sql, (*PENDING, qid)).fetchall()
        pending = group_pending(rows)
        return pending[0] if pending else None

    # In due order through the partial index recipient_due (schema.py), named: left
    # to itself the planner takes the state index and sorts every pending recipient.
    # Its WHERE must appear here with the same literals for the index to apply.
    _DUE_SQL = (
        "SELECT r.message_id FROM recipient AS r INDEXED BY recipient_due"
        " JOIN message AS m ON m.id = r.message_id"
        " WHERE r.state IN ('queued', 'deferred') AND r.next_attempt <= ? AND m.held = 0"
        " ORDER BY r.next_attempt, r.message_id"
    )
    _NEXT_DUE_SQL = (
        "SELECT min(next_attempt) FROM recipient INDEXED BY recipient_due"
        " WHERE state IN ('queued', 'deferred') AND next_attempt > ?"
    )

    def due_messages(
        self, now: float, limit: int, exclude: frozenset[str] = frozenset()
    ) -> DueBatch:
        skip = {parse_queue_id(message_id) for message_id in exclude}
        chosen: dict[int, None] = {}  # in due order: a message's first row is its earliest
        more = False
        with self._readers.snapshot() as conn:
            for (qid,) in conn.execute(self._DUE_SQL, (now,)):
                if qid in chosen or qid in skip:
                    continue
                if len(chosen) == limit:
                    more = True
                    break
                chosen[qid] = None
            rows: list[Any] = []
            ids = list(chosen)
            for start in range(0, len(ids), _IN_LIST):
                part = ids[start : start + _IN_LIST]
                where = f"AND m.id IN ({', '.join('?' * len(part))})"
                sql = self._PENDING_SQL.format(where=where)
                rows += conn.execute(sql, (*PENDING, *part)).fetchall()
            (next_due,) = conn.execute(self._NEXT_DUE_SQL, (now,)).fetchone()
        found = {message.id: message for message in group_pending(rows)}
        ordered = (found.get(format_queue_id(qid)) for qid in ids)
        return DueBatch(tuple(m for m in ordered if m is not None), more, next_due)

    def latest_admin_event_id(self) -> int:
        with self._readers.connection() as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM admin_event").fetchone()
        return int(row[0])

    def fetch_admin_events(self, after_id: int) -> list[AdminEvent]:
        with self._readers.connection() as conn:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM admin_event WHERE id > ? ORDER BY id", (after_id,)
            ).fetchall()
        return [admin_event(row) for row in rows]

    def queued_pickups(self, names: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._readers.connection() as conn:
            for name in names:
                row = conn.execute(
                    "SELECT message_id FROM pickup WHERE name = ?", (name,)
                ).fetchone()
                if row is not None:
                    found[name] = format_queue_id(row[0])
        return found

    # -- reads for the CLI ---------------------------------------------------

    @staticmethod
    def _list_sql(state: RecipientState | None) -> str:
        """One page of the listing; its rows are found by key, in id order, LIMIT first."""
        if state is None:
            page = "SELECT id FROM message ORDER BY id LIMIT ? OFFSET ?"
        else:
            page = (
                "SELECT DISTINCT message_id AS id FROM recipient WHERE state = ?"
                " ORDER BY message_id LIMIT ? OFFSET ?"
            )
        return (
            f"WITH page AS ({page})"
            " SELECT m.id, m.sender, m.size, m.received_at, m.held, m.warned,"
            " sum(r.state = 'queued'), sum(r.state = 'deferred'),"
            " sum(r.state = 'delivered'), sum(r.state = 'bounced'),"
            " min(CASE WHEN r.state IN ('queued', 'deferred') THEN r.next_attempt END)"
            " FROM page JOIN message AS m ON m.id = page.id"
            " JOIN recipient AS r ON r.message_id = m.id"
            " GROUP BY m.id ORDER BY m.id"
        )

    def list_messages(
        self, limit: int = 50, offset: int = 0, state: RecipientState | None = None
    ) -> list[MessageSummary]:
        params: tuple[Any, ...] = (limit, offset) if state is None else (state.value, limit, offset)
        with self._readers.connection() as conn:
            rows = conn.execute(self._list_sql(state), params).fetchall()
        return [message_summary(row) for row in rows]

    def count_messages(self, state: RecipientState | None = None) -> int:
        with self._readers.connection() as conn:
            if state is None:
                row = conn.execute(self._SUMMARY_SQL).fetchone()
            else:
                row = conn.execute(
                    "SELECT count(DISTINCT message_id) FROM recipient WHERE state = ?",
                    (state.value,),
                ).fetchone()
        return int(row[0])

    def get_message(self, message_id: str) -> MessageDetail | None:
        qid = parse_queue_id(message_id)
        if qid is None:
            return None
        with self._readers.snapshot() as conn:
            message = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM message WHERE id = ?", (qid,)
            ).fetchone()
            recipients = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipient WHERE message_id = ? ORDER BY idx",
                (qid,),
            ).fetchall()
        return None if message is None else message_detail(qid, message, recipients)

    _RECIPIENTS_SQL = (
        f"SELECT message_id, {RECIPIENT_COLUMNS} FROM recipient"
        " WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY message_id, idx"
    )

    def recipients_of(self, message_ids: Sequence[str]) -> dict[str, tuple[RecipientDetail, ...]]:
        qids = [q for q in map(parse_queue_id, message_ids) if q is not None]
        with self._readers.connection() as conn:
            rows = conn.execute(self._RECIPIENTS_SQL, (json.dumps(qids),)).fetchall()
        return recipients_by_message(rows)

    # The counts come from the one row the triggers keep (schema.py), the oldest from
    # its index: `queue stats` and `queue list` cost the same at any queue size.
    _SUMMARY_SQL = (
        "SELECT messages, held, bytes, queued, deferred, delivered, bounced FROM queue_summary"
    )
    _OLDEST_SQL = "SELECT min(received_at) FROM message"

    def stats(self, now: float | None = None) -> QueueStats:
        with self._readers.snapshot() as conn:
            messages, held, total_bytes, *by_state = conn.execute(self._SUMMARY_SQL).fetchone()
            (oldest,) = conn.execute(self._OLDEST_SQL).fetchone()
        when = time.time() if now is None else now
        return QueueStats(
            messages=messages,
            held=held,
            total_bytes=total_bytes,
            recipients=RecipientCounts(*by_state),
            oldest_received_at=oldest,
            oldest_age=None if oldest is None else max(0.0, when - oldest),
        )

    def pending_breakdown(self, limit: int = 10) -> PendingBreakdown:
        # The domain follows the last '@' (a quoted local part may hold one): rtrim by every
        # other character of the address leaves it up to that '@'.
        domain = "lower(substr(address, length(rtrim(address, replace(address, '@', ''))) + 1))"
        with self._readers.snapshot() as conn:
            destinations, reasons = (conn.execute(sql, params).fetchall()
                                     for sql, params in breakdown_queries(domain, "?", limit))
        return pending_breakdown(destinations, reasons)
