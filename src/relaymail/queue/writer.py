"""The writer thread: one write connection, group commit, a verdict per write.

See the theory of operation in `sqlite.py`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    # Imported where used at run time: the `relaymail queue` commands need no event loop.
    import asyncio

from ..errors import QueueFull, QueueUnavailable, RelaymailError
from .files import QueueFiles
from .ids import shard_id
from .schema import BLOB_HANDLES_PER_CONNECTION

log = logging.getLogger("relaymail.queue")

# A batch stops growing at this many writes or bytes of message data: bounds the
# latency of the first caller in it and the memory of one transaction.
DEFAULT_MAX_BATCH = 1000
MAX_BATCH_BYTES = 32 * 1024 * 1024


# SQLite primary result codes that mean "the storage cannot take this now".
_STORAGE_CONDITIONS = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot open",
    sqlite3.SQLITE_BUSY: "locked by another process",
    sqlite3.SQLITE_LOCKED: "locked",
    sqlite3.SQLITE_NOMEM: "out of memory",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_CORRUPT: "database corrupt",
    sqlite3.SQLITE_NOTADB: "not a database",
    sqlite3.SQLITE_PROTOCOL: "locking protocol error",
}

_JOB_INDEPENDENT = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
}


def storage_error(exc: BaseException) -> BaseException:
    """The exception a caller sees for a failed write."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _STORAGE_CONDITIONS:
            name = getattr(exc, "sqlite_errorname", "")
            reason = _STORAGE_CONDITIONS[code & 0xFF]
            error = QueueFull(f"queue storage {reason}: {exc} ({name})")
            error.__cause__ = exc
            return error
    return exc


def _affects_every_write(exc: Exception) -> bool:
    """Whether a failed batch would fail for each of its writes alone too.

    Retrying write by write after a lock timeout would wait out the timeout
    once per write; a read-only or broken database refuses them all anyway.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _JOB_INDEPENDENT


T = TypeVar("T")


class Transaction:
    """What a write sees: the connection inside BEGIN IMMEDIATE, and id allocation."""

    __slots__ = ("_issued", "_last_id", "_shard", "blobs", "conn")

    def __init__(self, conn: sqlite3.Connection, shard: int = 0) -> None:
        self.conn = conn
        self._shard = shard
        self._last_id: int | None = None
        self._issued = False
        self.blobs = 0  # blob handles opened (schema.BLOB_HANDLES_PER_CONNECTION)

    def open_blob(self, table: str, column: str, row: int) -> sqlite3.Blob:
        self.blobs += 1
        return self.conn.blobopen(table, column, row)

    def new_queue_id(self) -> int:
        if self._last_id is None:
            self._last_id = int(
                self.conn.execute("SELECT last_id FROM queue_id_state").fetchone()[0]
            )
        self._last_id = shard_id(max(self._last_id + 1, time.time_ns() // 1000), self._shard)
        self._issued = True
        return self._last_id

    def finish(self) -> None:
        if self._issued:
            self.conn.execute("UPDATE queue_id_state SET last_id = ?", (self._last_id,))


@dataclass(slots=True)
class _Job(Generic[T]):
    apply: Callable[[Transaction], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    weight: int  # bytes of message data it writes


# (succeeded, result or exception)
_Outcome = tuple[bool, Any]


def _settle(items: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for future, (ok, value) in items:
        if future.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Writer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        max_batch: int,
        files: QueueFiles,
        reopen: Callable[[], sqlite3.Connection],
        shard: int = 0,
    ) -> None:
        self._conn = conn
        self._shard = shard
        self._reopen = reopen  # a fresh connection like `conn` (see _transaction)
        self._blobs = 0
        self._max_batch = max_batch
        self._files = files
        self._inbox: queue.SimpleQueue[list[_Job[Any]] | None] = queue.SimpleQueue()
        # Writes submitted in the current turn of each event loop, handed over at its end.
        self._gathering: dict[asyncio.AbstractEventLoop, list[_Job[Any]]] = {}
        self._closing = False
        self._died: str | None = None  # why the thread ended other than by close()
        self.commits = 0  # successful transactions, for metrics and benchmarks
        self._thread = threading.Thread(
            target=self._run, name="relaymail-queue-writer", daemon=True
        )
        self._thread.start()

    def submit(self, apply: Callable[[Transaction], T], weight: int = 0) -> asyncio.Future[T]:
        import asyncio

        if self._died is not None:
            raise QueueUnavailable(self._died)
        if self._closing:
            raise RelaymailError("the queue store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        jobs = self._gathering.get(loop)
        if jobs is None:
            # The writes of one turn of the loop go to the thread together: one
            # wake-up for them all, and they share a commit.
            jobs = self._gathering[loop] = []
            loop.call_soon(self._hand_over, loop)
        jobs.append(_Job(apply, loop, future, weight))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._gathering.pop(loop, None)
        if jobs:
            self._inbox.put(jobs)

    async def close(self) -> None:
        import asyncio

        if not self._closing:
            self._closing = True
            self._hand_over(asyncio.get_running_loop())  # written before the stop
            self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)
        self._conn.close()  # a thread that died left it open (see _run)

    def _run(self) -> None:
        waiting: collections.deque[_Job[Any]] = collections.deque()
        batch: list[_Job[Any]] = []
        try:
            stop = False
            while waiting or not stop:
                if not waiting:
                    jobs = self._inbox.get()
                    if jobs is None:
                        break
                    waiting.extend(jobs)
                while not stop:  # what else came meanwhile, up to a stop
                    try:
                        jobs = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if jobs is None:
                        stop = True
                    else:
                        waiting.extend(jobs)
                weight = 0
                while waiting and len(batch) < self._max_batch and weight < MAX_BATCH_BYTES:
                    batch.append(waiting.popleft())
                    weight += batch[-1].weight
                self._deliver(batch, self._execute(batch))
                batch = []
        except BaseException as exc:
            # A bug, not the storage. Without this thread nothing is written, so
            # every caller from now on must hear "not kept" (452), never hang.
            self._died = f"queue storage unusable: the queue writer stopped ({exc!r})"
            log.critical("%s; mail is refused until relaymail restarts", self._died, exc_info=True)
            batch += waiting
            self._deliver(batch, [(False, QueueUnavailable(self._died))] * len(batch))
        finally:
            self._closing = True
            if self._died is None:
                self._conn.close()
            # else kept open until close(): the last connection to close removes
            # the -wal and -shm, and the readers still read what was kept.
            self._fail_leftovers()

    def _execute(self, batch: list[_Job[Any]]) -> list[_Outcome]:
        try:
            self._files.verify()  # before the commit that would be acknowledged
        except QueueUnavailable as exc:
            return [(False, exc)] * len(batch)
        try:
            return self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1 or _affects_every_write(exc):
                return [(False, storage_error(exc))] * len(batch)
        # Something in the batch failed and the transaction is gone: give every
        # write its own transaction so each caller gets its own verdict (the
        # write too big for the disk fails, the small ones around it go in).
        outcomes: list[_Outcome] = []
        for job in batch:
            try:
                outcomes.extend(self._transaction([job]))
            except Exception as exc:
                outcomes.append((False, storage_error(exc)))
        return outcomes

    def _transaction(self, batch: list[_Job[Any]]) -> list[_Outcome]:
        conn = self._conn
        txn = Transaction(conn, self._shard)
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [job.apply(txn) for job in batch]
            txn.finish()
            conn.execute("COMMIT")
            self.commits += 1
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            self._blobs += txn.blobs
        if self._blobs >= BLOB_HANDLES_PER_CONNECTION:
            self._replace_connection()
        return [(True, result) for result in results]

    def _replace_connection(self) -> None:
        """Between transactions: the same database, without the old handles' leftovers."""
        try:
            fresh = self._reopen()
        except (sqlite3.Error, RelaymailError) as exc:
            log.warning("queue writer: keeping its connection, a new one failed: %s", exc)
        else:
            self._conn.close()  # SQLite keeps the file's locks for the other connections
            self._conn = fresh
        self._blobs = 0

    @staticmethod
    def _deliver(batch: list[_Job[Any]], outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
        for job, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, outcome))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, items)

    def _fail_leftovers(self) -> None:
        leftovers: list[_Job[Any]] = []
        while True:
            try:
                jobs = self._inbox.get_nowait()
            except queue.Empty:
                break
            if jobs is not None:
                leftovers += jobs
        closed = (
            RelaymailError("the queue store is closed")
            if self._died is None
            else QueueUnavailable(self._died)
        )
        self._deliver(leftovers, [(False, closed)] * len(leftovers))
