"""The queue in one SQLite database, written by one thread doing group commit.

Theory of operation
-------------------
Everything lives in `<directory>/queue.db`: envelopes, recipient states and
message bodies (BLOBs), so one fsync makes a message durable. The database is
in WAL mode with `synchronous=FULL`: a commit appends to the WAL and fsyncs it.

One writer thread owns the only write connection. Coroutines on the event loop
submit a write (a function of the open transaction) and await a future; the
writes of one turn of the loop reach the thread together, at the turn's end. The
writer takes everything queued, runs it in ONE transaction, commits (one
fsync), then resolves all the futures with one `call_soon_threadsafe` per loop.
No delay is added: while one commit's fsync runs, the next batch piles up, so
the batch size follows the load by itself.

A write that fails takes its whole batch down (SQLite may roll back the whole
transaction by itself on SQLITE_FULL / SQLITE_IOERR), so the writer then re-runs
each write of that batch in its own transaction: each caller gets its own
verdict and nothing half-done is ever committed. Failures that do not depend
on the write (a lock timeout, a read-only or broken database) fail the whole
batch at once instead. Storage conditions (disk full, read-only, I/O error,
lock timeout) become `QueueFull`; the connection stays usable, so writes
succeed again once the condition clears.

Reads use separate connections from a small pool (WAL readers never block the
writer, and other processes such as the CLI read and write the same file).

Queue ids are 64-bit integers, the microseconds since the epoch, made strictly
increasing by a high-water mark stored in the database and allocated inside
the write transaction (so they are unique across restarts, clock steps and
processes). They are shown as 11 Crockford base32 characters, which sort in
the same order as the numbers: `1K1CBR3JRJT`.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..message import Envelope
from ..message_data import MessageData
from . import sqlite_admin
from . import sqlite_writes as writes
from .files import QueueFiles
from .ids import format_queue_id, parse_queue_id
from .rows import queued_envelope, update_rows
from .schema import DEFAULT_BUSY_TIMEOUT, open_database, reopen_writer
from .sqlite_reads import Readers, SqliteReads
from .store import QueuedMessage, RecipientUpdate, TraceHeader
from .writer import DEFAULT_MAX_BATCH, Writer

if TYPE_CHECKING:
    from .selection import AdminOutcome, Selection
    from .store import AdminAction, Store

__all__ = ["SqliteStore"]


class SqliteStore(SqliteReads):
    """The `Store` protocol on SQLite. Construct with `SqliteStore.open(directory)`."""

    def __init__(self, path: Path, writer: Writer, readers: Readers, files: QueueFiles) -> None:
        self.path = path
        self._writer = writer
        self._readers = readers
        self._files = files

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        max_bytes: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        shard: int = 0,
    ) -> SqliteStore:
        """Open (creating if needed) the queue in `directory` and start its writer.

        `max_bytes` caps the database size: writes past it fail with QueueFull
        (SQLite's own SQLITE_FULL), as they would on a full disk. A cap below
        the current size keeps the current size. `max_batch` bounds how many
        writes share one commit (1 means one commit per write). `busy_timeout`
        is how long a write waits while another process (the CLI) holds the
        write lock before it fails with QueueFull. `shard` is the queue shard
        (shards.py) whose ids this store issues.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        path, conn = open_database(
            Path(directory), max_bytes, busy_timeout, check_same_thread=False
        )
        try:
            files = QueueFiles(path)
        except BaseException:
            conn.close()
            raise
        reopen = functools.partial(reopen_writer, path, max_bytes, busy_timeout)
        writer = Writer(conn, max_batch, files, reopen, shard)
        return cls(path, writer, Readers(path, files), files)

    async def close(self) -> None:
        await self._writer.close()
        self._readers.close()
        self._files.close()  # last: it would drop the connections' POSIX locks

    @property
    def commits(self) -> int:
        """Transactions committed by this store's writer so far (each one fsync)."""
        return self._writer.commits

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
        apply = functools.partial(
            writes.insert_message,
            sender=envelope.sender,
            recipients=recipients,
            data=body,
            received_at=received_at,
            trace=trace,
            pickup=pickup,
            requiretls=envelope.requiretls,
            dsn=envelope.dsn,
        )
        qid, header = await self._writer.submit(apply, weight=body.size)
        size = len(header) + body.size
        return QueuedMessage(format_queue_id(qid), envelope, size, received_at, header)

    async def record(self, updates: Sequence[RecipientUpdate]) -> None:
        if not updates:
            return
        rows = update_rows(updates)
        await self._writer.submit(functools.partial(writes.apply_updates, rows=rows))

    async def claim(self, message_id: str) -> bool:
        return True  # one node's queue: every delivery is this node's

    async def wait_admin_event(self, timeout: float) -> None:
        await asyncio.sleep(timeout)  # nothing tells: the caller polls

    async def mark_warned(self, message_id: str) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return await self._writer.submit(
            functools.partial(writes.set_flag, qid=qid, column="warned", value=True)
        )

    async def set_hold(self, message_id: str, held: bool) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return await self._writer.submit(functools.partial(writes.hold, qid=qid, held=held))

    async def delete(self, message_id: str) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return await self._writer.submit(functools.partial(writes.delete, qid=qid))

    async def forget_pickups(self, names: Sequence[str]) -> None:
        if names:
            await self._writer.submit(functools.partial(writes.forget_pickups, names=tuple(names)))

    async def retry(self, message_id: str | None = None, *, now: float | None = None) -> int:
        qid = None
        if message_id is not None:
            qid = parse_queue_id(message_id)
            if qid is None:
                return 0
        when = time.time() if now is None else now
        return await self._writer.submit(functools.partial(writes.retry, qid=qid, now=when))

    async def change(
        self, action: AdminAction, selection: Selection, *, now: float | None = None
    ) -> AdminOutcome:
        when = time.time() if now is None else now
        apply = functools.partial(sqlite_admin.change, action=action, selection=selection, now=when)
        return await self._writer.submit(apply)

    async def import_messages(self, source: sqlite3.Connection, ids: list[int]) -> int:
        """Copy these messages of another shard's database here (sqlite_adopt.py)."""
        from .sqlite_adopt import import_messages

        return await self._writer.submit(functools.partial(import_messages, source=source, ids=ids))


if TYPE_CHECKING:
    _IMPLEMENTS_STORE: type[Store] = SqliteStore  # mypy proves the protocol is met
