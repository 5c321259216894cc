"""The queue in one PostgreSQL database, shared by every node of a cluster.

Theory of operation
-------------------
The tables (postgres_schema.py) hold what the SQLite queue holds, bodies
included (bytea rows, postgres_schema.BODY_ROW octets each), so one commit
makes a message durable on the database server, whichever node took it.

Writes go through one async connection per node doing group commit
(postgres_writer.py): one transaction per batch of concurrent writes, one
statement per kind of write in it. Reads use a small pool of sync connections
(postgres_reads.py). Which node delivers what is decided by claims with leases
(postgres_claims.py); the store renews its own leases while deliveries run,
and listens for admin events (LISTEN/NOTIFY), so a change made on any node is
applied by every daemon at once; the event table covers what a node missed
while its listening connection was down.

The same class serves the CLI, which never starts the writer: its changes run
on a sync connection (`change_now`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..body import CHUNK_SIZE, MessageBody
from ..errors import QueueFull, QueueUnusable, RelaymailError
from ..message import Envelope
from ..message_data import MessageData
from ..queue_problem import QueueProblem
from . import postgres_writes as writes
from .ids import format_queue_id, parse_queue_id
from .postgres_admin import change, run_async, run_sync
from .postgres_claims import RenewedLeases, claim_due, claim_messages, renew_leases
from .postgres_connect import connect, connect_async, describe, storage_error
from .postgres_reads import PostgresReads, open_pool
from .postgres_schema import ADMIN_CHANNEL, SchemaProblem, prepare
from .postgres_writer import Operation, PostgresWriter, Transaction
from .rows import queued_envelope, update_rows
from .store import DueBatch, QueuedMessage, RecipientUpdate, TraceHeader

if TYPE_CHECKING:
    import psycopg

    from .selection import AdminOutcome, Selection
    from .store import AdminAction, Store

__all__ = ["DEFAULT_LEASE", "PostgresStore"]

log = logging.getLogger("relaymail.queue")

DEFAULT_LEASE = 60.0
# The listening connection, lost, is made again after this pause (and the events it
# missed are read from the table meanwhile by the scheduler's poll).
RELISTEN_PAUSE = 1.0


class PostgresStore(PostgresReads):
    """The `Store` protocol on PostgreSQL. Construct with `PostgresStore.open(dsn, node=...)`."""

    def __init__(self, dsn: str, node: str, lease: float) -> None:
        self._dsn = dsn
        self.node = node
        self.lease = lease
        self._closed = False
        self._pool = open_pool(dsn, node)
        self._writer = PostgresWriter(dsn, node, lease)
        self._delivering: set[int] = set()  # claimed for a delivery, not recorded yet
        self._fresh = FreshBodies()
        self._renewer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._notified = asyncio.Event()

    @classmethod
    def open(cls, dsn: str, *, node: str, lease: float = DEFAULT_LEASE) -> PostgresStore:
        """Connect, create or migrate the tables, open the readers.

        QueueUnusable when the database cannot be reached or is not this queue.
        """
        try:
            with contextlib.closing(connect(dsn, node, "schema", autocommit=True)) as conn:
                prepare(conn)
        except QueueFull as exc:
            raise QueueUnusable(
                describe(dsn), QueueProblem.UNREACHABLE, str(exc), key="queue.dsn"
            ) from None
        except SchemaProblem as exc:
            raise QueueUnusable(describe(dsn), exc.problem, str(exc), key="queue.dsn") from None
        except Exception as exc:  # psycopg: a role without CREATE, a broken database
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problem = QueueProblem.NOT_A_QUEUE
            raise QueueUnusable(describe(dsn), problem, reason, key="queue.dsn") from None
        return cls(dsn, node, lease)

    async def close(self) -> None:
        renewing = self._renewer is not None
        for task in (self._renewer, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if renewing:  # a daemon stopping: not alive any more for `queue retry`
            with contextlib.suppress(QueueFull):
                await self._single(functools.partial(writes.leave_cluster))
        await self._writer.close()
        self._closed = True
        await asyncio.to_thread(self._pool.close)

    def close_now(self) -> None:
        """Close a store that only read and changed synchronously (the CLI)."""
        self._closed = True
        self._pool.close()

    @property
    def commits(self) -> int:
        return self._writer.commits

    async def _write(self, operation: Operation, item: Any, weight: int = 0) -> Any:
        return await self._writer.submit(operation, item, weight)

    async def _single(self, apply: Callable[[Transaction], Awaitable[Any]]) -> Any:
        return await self._write(writes.run_each, apply)

    # -- writes --------------------------------------------------------------

    async def enqueue(
        self,
        envelope: Envelope,
        data: bytes | MessageData,
        received_at: float,
        *,
        trace: TraceHeader | None = None,
        pickup: str | None = None,
    ) -> QueuedMessage:
        envelope = queued_envelope(envelope)
        recipients = envelope.recipients
        body = data if isinstance(data, MessageData) else MessageData.of(data)
        new = writes.NewMessage(envelope.sender, recipients, body, received_at, trace, pickup,
                                envelope.requiretls, envelope.dsn)  # fmt: skip
        qid, header = await self._write(writes.insert_messages, new, weight=body.size)
        size = len(header) + body.size
        if size <= CHUNK_SIZE and (kept := body.in_memory(header)) is not None:
            self._fresh.put(qid, kept)
        return QueuedMessage(format_queue_id(qid), envelope, size, received_at, header)

    async def record(self, updates: Sequence[RecipientUpdate]) -> None:
        if not updates:
            return
        rows = update_rows(updates)
        await self._write(writes.record_outcomes, writes.Outcomes(tuple(rows), time.time()))
        self._delivering.difference_update(row[8] for row in rows)

    async def claim(self, message_id: str) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        won: bool = await self._write(claim_messages, qid)
        if won:
            self._delivering.add(qid)
            self._start_renewing()
        return won

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew())

    async def mark_warned(self, message_id: str) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return bool(await self._single(functools.partial(writes.mark_warned, qid=qid)))

    async def set_hold(self, message_id: str, held: bool) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return bool(await self._single(functools.partial(writes.hold, qid=qid, held=held)))

    async def delete(self, message_id: str) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return bool(await self._single(functools.partial(writes.delete, qid=qid)))

    async def forget_pickups(self, names: Sequence[str]) -> None:
        if names:
            await self._single(functools.partial(writes.forget_pickups, names=tuple(names)))

    async def retry(self, message_id: str | None = None, *, now: float | None = None) -> int:
        qid = None
        if message_id is not None:
            qid = parse_queue_id(message_id)
            if qid is None:
                return 0
        when = time.time() if now is None else now
        return int(await self._single(functools.partial(writes.retry, qid=qid, now=when)))

    async def change(
        self, action: AdminAction, selection: Selection, *, now: float | None = None
    ) -> AdminOutcome:
        procedure = change(action, selection, time.time() if now is None else now)

        async def apply(txn: Transaction) -> AdminOutcome:
            return await run_async(txn.conn, procedure)

        outcome: AdminOutcome = await self._single(apply)
        return outcome

    def change_now(
        self, action: AdminAction, selection: Selection, *, now: float | None = None
    ) -> AdminOutcome:
        """`change` on a sync connection of its own, for the CLI."""
        import psycopg

        procedure = change(action, selection, time.time() if now is None else now)
        try:
            with contextlib.closing(connect(self._dsn, self.node, "admin")) as conn:
                return run_sync(conn, procedure)
        except psycopg.Error as exc:
            raise storage_error(exc, self._dsn) from None

    def open_body(self, message_id: str) -> MessageBody:
        # Most mail is delivered by the node that took it, moments later: a small body
        # it still has is sent from memory, with no round trip on the event loop. Only
        # once claimed for delivery, which proved the message is still queued.
        qid = parse_queue_id(message_id)
        if qid is not None and qid in self._delivering and (data := self._fresh.pop(qid)):
            return MessageBody.of(data)
        return super().open_body(message_id)

    # -- claims ------------------------------------------------------------------

    def due_messages(
        self, now: float, limit: int, exclude: frozenset[str] = frozenset()
    ) -> DueBatch:
        """As the protocol says, and each message returned is claimed by this node."""
        skip = {q for q in map(parse_queue_id, exclude) if q is not None}
        with self._connection() as conn, conn.transaction():
            ids, more, next_due = claim_due(conn, self.node, self.lease, now, limit, skip)
            found = {m.id: m for m in self.pending_of(conn, ids)} if ids else {}
        ordered = (found.get(format_queue_id(qid)) for qid in ids)
        return DueBatch(tuple(m for m in ordered if m is not None), more, next_due)

    async def _renew(self) -> None:
        """Every third of the lease: renew the leases of the deliveries in flight, say alive."""
        while True:
            held = frozenset(self._delivering)
            try:
                renewed: RenewedLeases = await self._write(renew_leases, held)
            except QueueFull as exc:
                log.warning("renewing this node's leases failed (%s); trying again", exc)
            except RelaymailError:  # closed
                return
            else:
                # Not renewed: recorded meanwhile (gone), or lost to another node.
                self._delivering.difference_update(held - renewed.kept)
                for qid in sorted(renewed.lost):
                    log.warning("id=%s: claim lost while delivering: another node's now",
                                format_queue_id(qid))  # fmt: skip
            await asyncio.sleep(self.lease / 3)

    def live_nodes(self) -> list[str]:
        """The nodes that said they are alive within the last lease, by name."""
        rows = self._rows(
            "SELECT name FROM node WHERE seen_at > %s ORDER BY name", (time.time() - self.lease,)
        )
        return [row[0] for row in rows]

    # -- admin events ----------------------------------------------------------

    async def wait_admin_event(self, timeout: float) -> None:
        # Only a daemon waits for events: it is also what says this node is alive.
        self._start_renewing()
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._notified.wait()
        self._notified.clear()

    async def _listen(self) -> None:
        import psycopg

        while not self._closed:
            conn: psycopg.AsyncConnection | None = None
            try:
                conn = await connect_async(self._dsn, self.node, "listen", autocommit=True)
                await conn.execute(f"LISTEN {ADMIN_CHANNEL}")
                self._notified.set()  # what came while not listening is in the table
                async for _ in conn.notifies():
                    self._notified.set()
            except (QueueFull, psycopg.Error) as exc:
                log.debug("admin event listener: %s; listening again shortly", exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(RELISTEN_PAUSE)


class FreshBodies:
    """Small bodies of the mail this node queued, kept until delivered (or crowded out)."""

    LIMIT = 16 * 1024 * 1024  # octets, all bodies together

    def __init__(self) -> None:
        self._bodies: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._size = 0

    def put(self, qid: int, data: bytes) -> None:
        self._bodies[qid] = data
        self._size += len(data)
        while self._size > self.LIMIT:
            self._size -= len(self._bodies.popitem(last=False)[1])

    def pop(self, qid: int) -> bytes | None:
        data = self._bodies.pop(qid, None)
        if data is not None:
            self._size -= len(data)
        return data


if TYPE_CHECKING:
    _IMPLEMENTS_STORE: type[Store] = PostgresStore  # mypy proves the protocol is met
