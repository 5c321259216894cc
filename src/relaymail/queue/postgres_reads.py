"""The PostgreSQL queue's reads: a pool of sync connections and every query on it.

The Store's reads are sync (the scheduler calls the slow ones in a thread, the
CLI is sync), so they run on psycopg's sync connections from a small pool; each
query is its own autocommit statement, or one REPEATABLE READ snapshot where a
read takes several. A failure of the server (down, restarting) is QueueFull, as
for the writes; the pool replaces a broken connection by itself.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..body import CHUNK_SIZE, MessageBody
from ..errors import BodyUnreadable, QueueFull, RelaymailError
from .ids import format_queue_id, parse_queue_id
from .postgres_admin import ascii_lower
from .postgres_connect import CONNECT_TIMEOUT, connect_options, storage_error
from .postgres_schema import BODY_ROW, PENDING
from .sqlite_reads import _RECIPIENT_COLUMNS, _group_pending, _recipient_detail
from .store import (
    AdminAction,
    AdminEvent,
    MessageDetail,
    MessageSummary,
    PendingBreakdown,
    PendingMessage,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    Tally,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

READERS = 4  # connections at most: the scheduler's refill, the loop, the admin page


def open_pool(dsn: str, node: str) -> ConnectionPool:
    from psycopg_pool import ConnectionPool

    return ConnectionPool(
        dsn, min_size=1, max_size=READERS, timeout=CONNECT_TIMEOUT, open=True,
        kwargs={"autocommit": True, **connect_options(dsn, node, "reader")},
        name="relaymail-queue-readers",
    )  # fmt: skip


class PostgresReads:
    """The read half of `PostgresStore`: every query, on the reader pool."""

    _pool: ConnectionPool
    _dsn: str
    node: str
    _closed: bool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        import psycopg

        if self._closed:
            raise RelaymailError("the queue store is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                # The server went away (a restart): the other idle connections are as
                # dead as this one; drop them now rather than fail one read each.
                self._pool.check()
            error = storage_error(exc, self._dsn)
            if error is exc:
                raise
            raise error from exc

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection]:
        """One read-only transaction: several queries, one state."""
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement's rows; tried again once on a new connection if the old one was cut."""
        import psycopg

        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    return conn.execute(sql, params).fetchall()
            except QueueFull as exc:
                if attempt == 2 or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
        raise AssertionError("unreachable")

    # -- reads for the daemon ------------------------------------------------

    def load_data(self, message_id: str) -> bytes:
        qid = parse_queue_id(message_id)
        if qid is not None:
            with self._snapshot() as conn:
                found = conn.execute("SELECT 1 FROM message WHERE id = %s", (qid,)).fetchone()
                rows = conn.execute(
                    "SELECT data FROM body WHERE message_id = %s ORDER BY seq", (qid,)
                ).fetchall()
            if found is not None:
                return b"".join(bytes(row[0]) for row in rows)
        raise KeyError(message_id)

    def open_body(self, message_id: str) -> MessageBody:
        qid = parse_queue_id(message_id)
        if qid is not None:
            # A body of one chunk comes with its size: one round trip for the usual message.
            rows = self._rows(
                "SELECT m.size, CASE WHEN m.size <= %s THEN (SELECT b.data FROM body AS b"
                " WHERE b.message_id = m.id AND b.seq = 0) END FROM message AS m WHERE m.id = %s",
                (CHUNK_SIZE, qid),
            )
            if rows and rows[0][0] <= CHUNK_SIZE:
                return MessageBody.of(bytes(rows[0][1] or b""))
            if rows:
                # A row per read: each is a round trip, made on the event loop.
                read = functools.partial(self._read_body, qid)
                return MessageBody(rows[0][0], read, chunk_size=BODY_ROW)
        raise KeyError(message_id)

    def _read_body(self, qid: int, offset: int, length: int) -> bytes:
        # One chunk never spans two rows: a read at a row's end is short, the next
        # starts the next row (MessageBody takes short reads).
        seq, within = divmod(offset, BODY_ROW)
        length = min(length, BODY_ROW - within)
        try:
            rows = self._rows(
                "SELECT substring(data FROM %s FOR %s) FROM body"
                " WHERE message_id = %s AND seq = %s",
                (within + 1, length, qid, seq),
            )
        except (QueueFull, RelaymailError) as exc:
            raise BodyUnreadable(str(exc)) from None
        if not rows:
            raise BodyUnreadable(f"the body of {format_queue_id(qid)} is gone")
        return bytes(rows[0][0])

    _PENDING_SQL = (
        "SELECT m.id, m.sender, m.received_at, m.size, m.held, m.warned,"
        " r.address, r.state, r.attempts, r.next_attempt, m.requiretls"
        " FROM message AS m JOIN recipient AS r ON r.message_id = m.id"
        " WHERE r.state IN (%s, %s) {where} ORDER BY m.id, r.idx"
    )

    def load_pending(self) -> list[PendingMessage]:
        return _group_pending(self._rows(self._PENDING_SQL.format(where=""), PENDING))

    def load_pending_message(self, message_id: str) -> PendingMessage | None:
        qid = parse_queue_id(message_id)
        if qid is None:
            return None
        sql = self._PENDING_SQL.format(where="AND m.id = %s")
        pending = _group_pending(self._rows(sql, (*PENDING, qid)))
        return pending[0] if pending else None

    def pending_of(self, conn: psycopg.Connection, qids: list[int]) -> list[PendingMessage]:
        sql = self._PENDING_SQL.format(where="AND m.id = ANY(%s)")
        return _group_pending(conn.execute(sql, (*PENDING, qids)).fetchall())

    def latest_admin_event_id(self) -> int:
        [(latest,)] = self._rows("SELECT coalesce(max(id), 0) FROM admin_event")
        return int(latest)

    def fetch_admin_events(self, after_id: int) -> list[AdminEvent]:
        rows = self._rows(
            "SELECT id, message_id, action, at FROM admin_event WHERE id > %s ORDER BY id",
            (after_id,),
        )
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
        rows = self._rows(
            "SELECT name, message_id FROM pickup WHERE node = %s AND name = ANY(%s)",
            (self.node, list(names)),
        )
        return {name: format_queue_id(qid) for name, qid in rows}

    # -- reads for the CLI ---------------------------------------------------

    def list_messages(
        self, limit: int = 50, offset: int = 0, state: RecipientState | None = None
    ) -> list[MessageSummary]:
        if state is None:
            page = "SELECT id FROM message ORDER BY id LIMIT %s OFFSET %s"
            params: tuple[Any, ...] = (limit, offset)
        else:
            page = (
                "SELECT DISTINCT message_id AS id FROM recipient WHERE state = %s"
                " ORDER BY message_id LIMIT %s OFFSET %s"
            )
            params = (state.value, limit, offset)
        rows = self._rows(
            f"WITH page AS ({page})"
            " SELECT m.id, m.sender, m.size, m.received_at, m.held, m.warned,"
            " count(*) FILTER (WHERE r.state = 'queued'),"
            " count(*) FILTER (WHERE r.state = 'deferred'),"
            " count(*) FILTER (WHERE r.state = 'delivered'),"
            " count(*) FILTER (WHERE r.state = 'bounced'),"
            " min(r.next_attempt) FILTER (WHERE r.state IN ('queued', 'deferred'))"
            " FROM page JOIN message AS m ON m.id = page.id"
            " JOIN recipient AS r ON r.message_id = m.id"
            " GROUP BY m.id ORDER BY m.id",
            params,
        )
        return [
            MessageSummary(
                id=format_queue_id(row[0]),
                sender=row[1],
                size=row[2],
                received_at=row[3],
                held=row[4],
                warned=row[5],
                recipients=RecipientCounts(row[6], row[7], row[8], row[9]),
                next_attempt=row[10],
            )
            for row in rows
        ]

    def count_messages(self, state: RecipientState | None = None) -> int:
        if state is None:
            [(count,)] = self._rows("SELECT count(*) FROM message")
        else:
            [(count,)] = self._rows(
                "SELECT count(DISTINCT message_id) FROM recipient WHERE state = %s",
                (state.value,),
            )
        return int(count)

    def get_message(self, message_id: str) -> MessageDetail | None:
        qid = parse_queue_id(message_id)
        if qid is None:
            return None
        with self._snapshot() as conn:
            message = conn.execute(
                "SELECT sender, size, received_at, held, warned, requiretls"
                " FROM message WHERE id = %s",
                (qid,),
            ).fetchone()
            recipients = conn.execute(
                f"SELECT {_RECIPIENT_COLUMNS} FROM recipient WHERE message_id = %s ORDER BY idx",
                (qid,),
            ).fetchall()
        if message is None:
            return None
        return MessageDetail(
            id=format_queue_id(qid),
            sender=message[0],
            size=message[1],
            received_at=message[2],
            held=message[3],
            warned=message[4],
            recipients=tuple(map(_recipient_detail, recipients)),
            requiretls=message[5],
        )

    def recipients_of(self, message_ids: Sequence[str]) -> dict[str, tuple[RecipientDetail, ...]]:
        qids = [q for q in map(parse_queue_id, message_ids) if q is not None]
        rows = self._rows(
            f"SELECT message_id, {_RECIPIENT_COLUMNS} FROM recipient"
            " WHERE message_id = ANY(%s) ORDER BY message_id, idx",
            (qids,),
        )
        found: dict[str, list[RecipientDetail]] = {}
        for row in rows:
            found.setdefault(format_queue_id(row[0]), []).append(_recipient_detail(row[1:]))
        return {message_id: tuple(details) for message_id, details in found.items()}

    def stats(self, now: float | None = None) -> QueueStats:
        with self._snapshot() as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE held), coalesce(sum(size), 0),"
                " min(received_at) FROM message"
            ).fetchone()
            by_state = dict(
                conn.execute("SELECT state, count(*) FROM recipient GROUP BY state").fetchall()
            )
        assert row is not None
        messages, held, total_bytes, oldest = row
        when = time.time() if now is None else now
        return QueueStats(
            messages=messages,
            held=held,
            total_bytes=int(total_bytes),
            recipients=RecipientCounts(
                queued=by_state.get(RecipientState.QUEUED.value, 0),
                deferred=by_state.get(RecipientState.DEFERRED.value, 0),
                delivered=by_state.get(RecipientState.DELIVERED.value, 0),
                bounced=by_state.get(RecipientState.BOUNCED.value, 0),
            ),
            oldest_received_at=oldest,
            oldest_age=None if oldest is None else max(0.0, when - oldest),
        )

    def pending_breakdown(self, limit: int = 10) -> PendingBreakdown:
        # The domain follows the last '@' (a quoted local part may hold one).
        domain = ascii_lower("substring(address FROM '@([^@]*)$')")
        with self._snapshot() as conn:
            destinations = conn.execute(
                f"SELECT {domain} AS d, count(*) AS n FROM recipient WHERE state IN (%s, %s)"
                " GROUP BY d ORDER BY n DESC, d LIMIT %s",
                (*PENDING, limit),
            ).fetchall()
            reasons = conn.execute(
                "SELECT coalesce(last_error, last_reply, '-') AS why, count(*) AS n"
                " FROM recipient WHERE state = %s GROUP BY why ORDER BY n DESC, why LIMIT %s",
                (RecipientState.DEFERRED.value, limit),
            ).fetchall()
        return PendingBreakdown(
            tuple(Tally(row[0], row[1]) for row in destinations),
            tuple(Tally(row[0], row[1]) for row in reasons),
        )
