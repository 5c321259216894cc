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
from ..dsn_request import RecipientDsn, Ret
from ..errors import BodyUnreadable, RelaymailError
from .files import QueueFiles
from .ids import format_queue_id, parse_queue_id
from .schema import BLOB_HANDLES_PER_CONNECTION, PENDING, connect
from .store import (
    AdminAction,
    AdminEvent,
    DueBatch,
    MessageDetail,
    MessageSummary,
    PendingBreakdown,
    PendingMessage,
    PendingRecipient,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    Tally,
)

_IN_LIST = 500  # ids per `IN (...)`, well below SQLite's limit on parameters

_STATE = {state.value: state for state in RecipientState}
_RECIPIENT_COLUMNS = (
    "address, state, attempts, next_attempt, last_attempt, last_reply, last_error, tls, host,"
    " notify, orcpt"
)


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
        return _group_pending(rows)

    def load_pending_message(self, message_id: str) -> PendingMessage | None:
        qid = parse_queue_id(message_id)
        if qid is None:
            return None
        sql = self._PENDING_SQL.format(where="AND m.id = ?")
        with self._readers.connection() as conn:
            rows = conn.execute(sql, (*PENDING, qid)).fetchall()
        pending = _group_pending(rows)
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
        found = {message.id: message for message in _group_pending(rows)}
        ordered = (found.get(format_queue_id(qid)) for qid in ids)
        return DueBatch(tuple(m for m in ordered if m is not None), more, next_due)

    def latest_admin_event_id(self) -> int:
        with self._readers.connection() as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM admin_event").fetchone()
        return int(row[0])

    def fetch_admin_events(self, after_id: int) -> list[AdminEvent]:
        with self._readers.connection() as conn:
            rows = conn.execute(
                "SELECT id, message_id, action, at FROM admin_event WHERE id > ? ORDER BY id",
                (after_id,),
            ).fetchall()
        return [
            AdminEvent(
                id=row[0],
                message_id=None if row[1] is None else format_queue_id(row[1]),
                action=AdminAction(row[2]),
                at=row[3],
            )
            for row in rows
        ]

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
        return [
            MessageSummary(
                id=format_queue_id(row[0]),
                sender=row[1],
                size=row[2],
                received_at=row[3],
                held=bool(row[4]),
                warned=bool(row[5]),
                recipients=RecipientCounts(row[6], row[7], row[8], row[9]),
                next_attempt=row[10],
            )
            for row in rows
        ]

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
                "SELECT sender, size, received_at, held, warned, requiretls, ret, envid"
                " FROM message WHERE id = ?",
                (qid,),
            ).fetchone()
            recipients = conn.execute(
                f"SELECT {_RECIPIENT_COLUMNS} FROM recipient WHERE message_id = ? ORDER BY idx",
                (qid,),
            ).fetchall()
        if message is None:
            return None
        return MessageDetail(
            id=format_queue_id(qid),
            sender=message[0],
            size=message[1],
            received_at=message[2],
            held=bool(message[3]),
            warned=bool(message[4]),
            recipients=tuple(map(_recipient_detail, recipients)),
            requiretls=bool(message[5]),
            ret=None if message[6] is None else Ret(message[6]),
            envid=message[7],
        )

    _RECIPIENTS_SQL = (
        f"SELECT message_id, {_RECIPIENT_COLUMNS} FROM recipient"
        " WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY message_id, idx"
    )

    def recipients_of(self, message_ids: Sequence[str]) -> dict[str, tuple[RecipientDetail, ...]]:
        qids = [q for q in map(parse_queue_id, message_ids) if q is not None]
        with self._readers.connection() as conn:
            rows = conn.execute(self._RECIPIENTS_SQL, (json.dumps(qids),)).fetchall()
        found: dict[str, list[RecipientDetail]] = {}
        for row in rows:
            found.setdefault(format_queue_id(row[0]), []).append(_recipient_detail(row[1:]))
        return {message_id: tuple(details) for message_id, details in found.items()}

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
            destinations = conn.execute(
                f"SELECT {domain} AS d, count(*) AS n FROM recipient WHERE state IN (?, ?)"
                " GROUP BY d ORDER BY n DESC, d LIMIT ?",
                (*PENDING, limit),
            ).fetchall()
            reasons = conn.execute(
                "SELECT coalesce(last_error, last_reply, '-') AS why, count(*) AS n"
                " FROM recipient WHERE state = ? GROUP BY why ORDER BY n DESC, why LIMIT ?",
                (RecipientState.DEFERRED.value, limit),
            ).fetchall()
        return PendingBreakdown(
            tuple(Tally(row[0], row[1]) for row in destinations),
            tuple(Tally(row[0], row[1]) for row in reasons),
        )


def _recipient_detail(row: Any) -> RecipientDetail:
    return RecipientDetail(
        address=row[0],
        state=RecipientState(row[1]),
        attempts=row[2],
        next_attempt=row[3],
        last_attempt=row[4],
        last_reply=row[5],
        last_error=row[6],
        tls=None if row[7] is None else json.loads(row[7]),
        host=row[8],
        dsn=RecipientDsn.from_stored(row[9], row[10]),
    )


def _group_pending(rows: list[Any]) -> list[PendingMessage]:
    """Rows of the pending query (ordered by message, then envelope order) as messages."""
    pending: list[PendingMessage] = []
    recipients: list[PendingRecipient] = []
    first = None
    for row in rows:
        if first is None or row[0] != first[0]:
            if first is not None:
                pending.append(_pending_message(first, recipients))
            first, recipients = row, []
        recipients.append(
            PendingRecipient(
                row[6], _STATE[row[7]], row[8], row[9], RecipientDsn.from_stored(row[13], row[14])
            )
        )
    if first is not None:
        pending.append(_pending_message(first, recipients))
    return pending


def _pending_message(row: Any, recipients: list[PendingRecipient]) -> PendingMessage:
    return PendingMessage(
        id=format_queue_id(row[0]),
        sender=row[1],
        received_at=row[2],
        size=row[3],
        held=bool(row[4]),
        warned=bool(row[5]),
        recipients=tuple(recipients),
        requiretls=bool(row[10]),
        ret=None if row[11] is None else Ret(row[11]),
        envid=row[12],
    )
