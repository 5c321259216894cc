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
    queue_stats,
    recipients_by_message,
)
from .store import (
    AdminEvent,
    MessageDetail,
    MessageSummary,
    PendingBreakdown,
    PendingMessage,
    QueueStats,
    RecipientDetail,
    RecipientState,
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
        " r.address, r.state, r.attempts, r.next_attempt, m.requiretls,"
        " m.ret, m.envid, r.notify, r.orcpt"
        " FROM message AS m JOIN recipient AS r ON r.message_id = m.id"
        " WHERE r.state IN (%s, %s) {where} ORDER BY m.id, r.idx"
    )

    def load_pending(self) -> list[PendingMessage]:
        return group_pending(self._rows(self._PENDING_SQL.format(where=""), PENDING))

    def load_pending_message(self, message_id: str) -> PendingMessage | None:
        qid = parse_queue_id(message_id)
        if qid is None:
            return None
        sql = self._PENDING_SQL.format(where="AND m.id = %s")
        pending = group_pending(self._rows(sql, (*PENDING, qid)))
        return pending[0] if pending else None

    def pending_of(self, conn: psycopg.Connection, qids: list[int]) -> list[PendingMessage]:
        sql = self._PENDING_SQL.format(where="AND m.id = ANY(%s)")
        return group_pending(conn.execute(sql, (*PENDING, qids)).fetchall())

    def latest_admin_event_id(self) -> int:
        [(latest,)] = self._rows("SELECT coalesce(max(id), 0) FROM admin_event")
        return int(latest)

    def fetch_admin_events(self, after_id: int) -> list[AdminEvent]:
        rows = self._rows(
            f"SELECT {EVENT_COLUMNS} FROM admin_event WHERE id > %s ORDER BY id", (after_id,)
        )
        return [admin_event(row) for row in rows]

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
        return [message_summary(row) for row in rows]

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
                f"SELECT {MESSAGE_COLUMNS} FROM message WHERE id = %s", (qid,)
            ).fetchone()
            recipients = conn.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM recipient WHERE message_id = %s ORDER BY idx",
                (qid,),
            ).fetchall()
        return None if message is None else message_detail(qid, message, recipients)

    def recipients_of(self, message_ids: Sequence[str]) -> dict[str, tuple[RecipientDetail, ...]]:
        qids = [q for q in map(parse_queue_id, message_ids) if q is not None]
        return recipients_by_message(self._rows(
            f"SELECT message_id, {RECIPIENT_COLUMNS} FROM recipient"
            " WHERE message_id = ANY(%s) ORDER BY message_id, idx",
            (qids,),
        ))  # fmt: skip

    def stats(self, now: float | None = None) -> QueueStats:
        with self._snapshot() as conn:
            totals = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE held), coalesce(sum(size), 0),"
                " min(received_at) FROM message"
            ).fetchone()
            by_state = dict(
                conn.execute("SELECT state, count(*) FROM recipient GROUP BY state").fetchall()
            )
        return queue_stats(totals, by_state, time.time() if now is None else now)

    def pending_breakdown(self, limit: int = 10) -> PendingBreakdown:
        # The domain follows the last '@' (a quoted local part may hold one).
        domain = ascii_lower("substring(address FROM '@([^@]*)$')")
        with self._snapshot() as conn:
            destinations, reasons = (conn.execute(sql, params).fetchall()
                                     for sql, params in breakdown_queries(domain, "%s", limit))
        return pending_breakdown(destinations, reasons)
