"""The PostgreSQL queue's group commit: one async connection, one transaction per batch.

Writes are submitted as (operation, item): an operation is an async function of
the open transaction and a list of items, returning one result per item. The
writer task takes everything queued, groups the items by operation, runs each
operation once for its whole group (one executemany, one COPY, one UPDATE ...
WHERE id = ANY) and commits: one round trip per operation and one commit for
the batch, whatever the number of writers waiting. As in SQLite's writer no
delay is added; while one commit is on its way the next batch piles up.

Failures. A conflict with another node's transaction (serialization failure,
deadlock) runs the batch again, up to CONFLICT_TRIES times. Any other failure
of a batch of several writes runs each write alone, so each caller gets its
own verdict. Server conditions (connection lost, disk full, read-only, lock
timeout) become `QueueFull`; a lost connection is made again for the next
batch. A commit whose answer was lost with the connection is ambiguous: the
caller hears QueueFull although the write may be stored (a possible duplicate
for `enqueue`, never a loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import QueueFull, QueueUnavailable, RelaymailError
from .postgres_connect import connect_async, is_conflict, storage_error

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("relaymail.queue")

MAX_BATCH = 1000
MAX_BATCH_BYTES = 32 * 1024 * 1024
CONFLICT_TRIES = 5
# After a failed connect, batches within this many seconds fail at once instead of each
# waiting out its own connect timeout against a database that is down.
RECONNECT_PAUSE = 1.0

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Transaction:
    """What an operation sees: the connection inside BEGIN, and who this node is."""

    conn: psycopg.AsyncConnection
    node: str
    lease: float


Operation = Callable[[Transaction, list[Any]], Awaitable[Sequence[Any]]]


@dataclass(slots=True)
class _Job(Generic[R]):
    operation: Operation
    item: Any
    future: asyncio.Future[R]
    weight: int


class PostgresWriter:
    def __init__(self, dsn: str, node: str, lease: float, max_batch: int = MAX_BATCH) -> None:
        self._dsn = dsn
        self._node = node
        self._lease = lease
        self._max_batch = max_batch
        self._conn: psycopg.AsyncConnection | None = None
        self._inbox: asyncio.Queue[_Job[Any] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failed_connect: tuple[float, BaseException] | None = None
        self.commits = 0

    def submit(self, operation: Operation, item: Any, weight: int = 0) -> asyncio.Future[Any]:
        """Queue one item for `operation`; the future settles after the commit."""
        if self._closing:
            raise RelaymailError("the queue store is closed")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._inbox = asyncio.Queue()
            self._task = loop.create_task(self._run(), name="relaymail-queue-writer")
        assert self._inbox is not None
        future: asyncio.Future[Any] = loop.create_future()
        self._inbox.put_nowait(_Job(operation, item, future, weight))
        return future

    async def close(self) -> None:
        self._closing = True
        if self._task is not None and self._inbox is not None:
            self._inbox.put_nowait(None)
            await asyncio.shield(self._task)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self) -> None:
        assert self._inbox is not None
        inbox = self._inbox
        batch: list[_Job[Any]] = []
        try:
            stop = False
            while not stop:
                job = await inbox.get()
                if job is None:
                    break
                batch, weight = [job], job.weight
                while len(batch) < self._max_batch and weight < MAX_BATCH_BYTES:
                    try:
                        job = inbox.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                    weight += job.weight
                _settle(batch, await self._execute(batch))
                batch = []
        except BaseException as exc:
            # A bug, not the storage: every caller from now on hears "not kept" (452).
            died = f"queue storage unusable: the queue writer stopped ({exc!r})"
            log.critical("%s; mail is refused until relaymail restarts", died, exc_info=True)
            self._closing = True
            _settle(batch, [(False, QueueUnavailable(died))] * len(batch))
            raise
        finally:
            self._closing = True
            leftovers = []
            while not inbox.empty():
                if (job := inbox.get_nowait()) is not None:
                    leftovers.append(job)
            closed = RelaymailError("the queue store is closed")
            _settle(leftovers, [(False, closed)] * len(leftovers))

    async def _connection(self) -> psycopg.AsyncConnection:
        conn = self._conn
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        self._conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        failed = self._failed_connect
        if failed is not None and time.monotonic() - failed[0] < RECONNECT_PAUSE:
            raise failed[1]
        try:
            self._conn = await connect_async(self._dsn, self._node, "writer")
        except QueueFull as exc:
            self._failed_connect = (time.monotonic(), exc)
            raise
        self._failed_connect = None
        return self._conn

    async def _execute(self, batch: list[_Job[Any]]) -> list[tuple[bool, Any]]:
        try:
            return await self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1 or self._conn is None or self._conn.broken:
                return [(False, storage_error(exc, self._dsn))] * len(batch)
        outcomes: list[tuple[bool, Any]] = []
        for job in batch:  # each write alone: the one at fault fails, the others go in
            try:
                outcomes.extend(await self._transaction([job]))
            except Exception as exc:
                outcomes.append((False, storage_error(exc, self._dsn)))
        return outcomes

    async def _transaction(self, batch: list[_Job[Any]]) -> list[tuple[bool, Any]]:
        groups: dict[Operation, list[int]] = {}
        for index, job in enumerate(batch):
            groups.setdefault(job.operation, []).append(index)
        for attempt in range(1, CONFLICT_TRIES + 1):
            conn = await self._connection()
            txn = Transaction(conn, self._node, self._lease)
            results: list[Any] = [None] * len(batch)
            try:
                async with conn.transaction():
                    for operation, indexes in groups.items():
                        done = await operation(txn, [batch[i].item for i in indexes])
                        for index, result in zip(indexes, done, strict=True):
                            results[index] = result
            except Exception as exc:
                if is_conflict(exc) and attempt < CONFLICT_TRIES:
                    continue
                raise
            self.commits += 1
            return [(True, result) for result in results]
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _settle(batch: list[_Job[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    for job, (ok, value) in zip(batch, outcomes, strict=True):
        if job.future.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
