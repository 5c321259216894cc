"""The queue in one SQLite database, written by one thread doing group commit.

Theory of operation
-------------------
Everything lives in `<directory>/queue.db`: envelopes, recipient states and
message bodies (BLOBs), so one fsync makes a message durable. The database is
in WAL mode with `synchronous=FULL`: a commit appends to the WAL and fsyncs it.

One writer thread owns the only write connection. Coroutines on the event loop
submit a write (a function of the open transaction) and await a future. The
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

import base64
import contextlib
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    # Imported where used at run time: `sendmail` (submit_now) never needs an event loop.
    import asyncio

from ..errors import QueueFull, QueueProblem, QueueUnavailable, QueueUnusable, RelaymailError
from ..message import Envelope
from .files import QueueFiles, open_failure, prepare_directory
from .store import (
    AdminAction,
    AdminEvent,
    MessageDetail,
    MessageSummary,
    PendingMessage,
    PendingRecipient,
    QueuedMessage,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    RecipientUpdate,
)

if TYPE_CHECKING:
    from .store import Store

__all__ = ["DB_FILENAME", "SCHEMA_VERSION", "SqliteStore", "format_queue_id", "parse_queue_id"]

log = logging.getLogger("relaymail.queue")

DB_FILENAME = "queue.db"
SCHEMA_VERSION = 1

# A batch stops growing at this many writes or bytes of message data: bounds the
# latency of the first caller in it and the memory of one transaction.
DEFAULT_MAX_BATCH = 1000
MAX_BATCH_BYTES = 32 * 1024 * 1024
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock
ADMIN_EVENT_RETENTION = 7 * 24 * 3600.0
INLINE_READ_LIMIT = 128 * 1024  # bytes read_data() reads on the event loop itself

_SCHEMA_V1 = """
CREATE TABLE schema_version (
    version    INTEGER NOT NULL,
    applied_at REAL NOT NULL
);
CREATE TABLE queue_id_state (last_id INTEGER NOT NULL);
INSERT INTO queue_id_state (last_id) VALUES (0);
-- Bodies live in their own table so that scans of `message` (listing,
-- counting, stats) read small rows only.
CREATE TABLE message (
    id          INTEGER PRIMARY KEY,
    sender      TEXT NOT NULL,
    received_at REAL NOT NULL,
    size        INTEGER NOT NULL,
    held        INTEGER NOT NULL DEFAULT 0,
    warned      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE body (
    message_id INTEGER PRIMARY KEY,
    data       BLOB NOT NULL
);
CREATE TABLE recipient (
    message_id   INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    address      TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_attempt REAL,
    last_reply   TEXT,
    last_error   TEXT,
    tls          TEXT,
    host         TEXT,
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
CREATE INDEX recipient_by_state ON recipient (state, message_id);
CREATE TABLE admin_event (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER,
    action     TEXT NOT NULL,
    at         REAL NOT NULL
);
"""

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

_PENDING = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)
_STATE = {state.value: state for state in RecipientState}

# ---------------------------------------------------------------------------
# Queue ids

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_DIGIT = {c: i for i, c in enumerate(_ALPHABET)}
_ID_CHARS = 11  # 55 bits: microseconds until the year 3111
# base64's base32 does the bit work in C; only its alphabet (which does not
# sort like the numbers) is swapped for Crockford's.
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


def format_queue_id(number: int) -> str:
    # 10 bytes are 16 base32 digits; the last 11 are the low 55 bits.
    digits = base64.b32encode(number.to_bytes(10, "big"))[-_ID_CHARS:]
    return digits.translate(_FROM_RFC4648).decode("ascii")


def parse_queue_id(text: str) -> int | None:
    """The number behind a queue id, or None if `text` is not one (user input)."""
    if len(text) != _ID_CHARS:
        return None
    number = 0
    for char in text.upper():
        digit = _DIGIT.get(char)
        if digit is None:
            return None
        number = number << 5 | digit
    return number


# ---------------------------------------------------------------------------
# Connections


def _connect(
    path: Path, *, check_same_thread: bool = True, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=check_same_thread, cached_statements=64
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


def _storage_error(exc: BaseException) -> BaseException:
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


class _Readers:
    """A pool of read-only connections, usable from any thread one at a time."""

    def __init__(self, path: Path, files: QueueFiles) -> None:
        self._path = path
        self._files = files
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise RelaymailError("the queue store is closed")
        self._files.verify(shm_only=True)  # a reader writes its read mark through the map
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = _connect(self._path, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction:  # an exception inside a read transaction
                conn.execute("ROLLBACK")
            self._idle.put(conn)

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


# ---------------------------------------------------------------------------
# The writer thread

T = TypeVar("T")


class _Transaction:
    """What a write sees: the connection inside BEGIN IMMEDIATE, and id allocation."""

    __slots__ = ("_issued", "_last_id", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._last_id: int | None = None
        self._issued = False

    def new_queue_id(self) -> int:
        if self._last_id is None:
            self._last_id = int(
                self.conn.execute("SELECT last_id FROM queue_id_state").fetchone()[0]
            )
        self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        self._issued = True
        return self._last_id

    def finish(self) -> None:
        if self._issued:
            self.conn.execute("UPDATE queue_id_state SET last_id = ?", (self._last_id,))


@dataclass(slots=True)
class _Job(Generic[T]):
    apply: Callable[[_Transaction], T]
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


class _Writer:
    def __init__(self, conn: sqlite3.Connection, max_batch: int, files: QueueFiles) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._files = files
        self._inbox: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._closing = False
        self._died: str | None = None  # why the thread ended other than by close()
        self.commits = 0  # successful transactions, for metrics and benchmarks
        self._thread = threading.Thread(
            target=self._run, name="relaymail-queue-writer", daemon=True
        )
        self._thread.start()

    def submit(self, apply: Callable[[_Transaction], T], weight: int = 0) -> asyncio.Future[T]:
        import asyncio

        if self._died is not None:
            raise QueueUnavailable(self._died)
        if self._closing:
            raise RelaymailError("the queue store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._inbox.put(_Job(apply, loop, future, weight))
        return future

    async def close(self) -> None:
        import asyncio

        if not self._closing:
            self._closing = True
            self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        batch: list[_Job[Any]] = []
        try:
            stop = False
            while not stop:
                job = self._inbox.get()
                if job is None:
                    break
                batch = [job]
                weight = job.weight
                while len(batch) < self._max_batch and weight < MAX_BATCH_BYTES:
                    try:
                        job = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                    weight += job.weight
                self._deliver(batch, self._execute(batch))
                batch = []
        except BaseException as exc:
            # A bug, not the storage. Without this thread nothing is written, so
            # every caller from now on must hear "not kept" (452), never hang.
            self._died = f"queue storage unusable: the queue writer stopped ({exc!r})"
            log.critical("%s; mail is refused until relaymail restarts", self._died, exc_info=True)
            self._deliver(batch, [(False, QueueUnavailable(self._died))] * len(batch))
        finally:
            self._closing = True
            self._conn.close()
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
                return [(False, _storage_error(exc))] * len(batch)
        # Something in the batch failed and the transaction is gone: give every
        # write its own transaction so each caller gets its own verdict (the
        # write too big for the disk fails, the small ones around it go in).
        outcomes: list[_Outcome] = []
        for job in batch:
            try:
                outcomes.extend(self._transaction([job]))
            except Exception as exc:
                outcomes.append((False, _storage_error(exc)))
        return outcomes

    def _transaction(self, batch: list[_Job[Any]]) -> list[_Outcome]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            txn = _Transaction(conn)
            results = [job.apply(txn) for job in batch]
            txn.finish()
            conn.execute("COMMIT")
            self.commits += 1
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return [(True, result) for result in results]

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
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftovers.append(job)
        closed = (
            RelaymailError("the queue store is closed")
            if self._died is None
            else QueueUnavailable(self._died)
        )
        self._deliver(leftovers, [(False, closed)] * len(leftovers))


# ---------------------------------------------------------------------------
# Writes: functions of the open transaction, run on the writer thread


def _insert_message(
    txn: _Transaction,
    sender: str,
    recipients: tuple[str, ...],
    data: bytes,
    received_at: float,
    announce: bool = False,
) -> int:
    qid = txn.new_queue_id()
    conn = txn.conn
    conn.execute(
        "INSERT INTO message (id, sender, received_at, size) VALUES (?, ?, ?, ?)",
        (qid, sender, received_at, len(data)),
    )
    conn.execute("INSERT INTO body (message_id, data) VALUES (?, ?)", (qid, data))
    conn.executemany(
        "INSERT INTO recipient (message_id, idx, address, state, next_attempt)"
        " VALUES (?, ?, ?, 'queued', ?)",
        [(qid, idx, rcpt, received_at) for idx, rcpt in enumerate(recipients)],
    )
    if announce:
        _append_event(conn, qid, AdminAction.SUBMIT)
    return qid


def _delete_message(conn: sqlite3.Connection, qid: int) -> bool:
    conn.execute("DELETE FROM recipient WHERE message_id = ?", (qid,))
    conn.execute("DELETE FROM body WHERE message_id = ?", (qid,))
    return conn.execute("DELETE FROM message WHERE id = ?", (qid,)).rowcount > 0


def _apply_updates(txn: _Transaction, rows: list[tuple[Any, ...]]) -> None:
    conn = txn.conn
    conn.executemany(
        "UPDATE recipient SET state = ?, attempts = ?, next_attempt = ?, last_attempt = ?,"
        " last_reply = ?, last_error = ?, tls = ?, host = ?"
        " WHERE message_id = ? AND address = ?",
        rows,
    )
    for qid in dict.fromkeys(row[8] for row in rows):
        still_pending = conn.execute(
            "SELECT 1 FROM recipient WHERE message_id = ? AND state IN (?, ?) LIMIT 1",
            (qid, *_PENDING),
        ).fetchone()
        if still_pending is None:
            _delete_message(conn, qid)


def _append_event(conn: sqlite3.Connection, qid: int | None, action: AdminAction) -> None:
    conn.execute(
        "INSERT INTO admin_event (message_id, action, at) VALUES (?, ?, ?)",
        (qid, action.value, time.time()),
    )


def _set_flag(txn: _Transaction, qid: int, column: str, value: bool) -> bool:
    sql = f"UPDATE message SET {column} = ? WHERE id = ?"  # column: one of ours, not input
    return txn.conn.execute(sql, (int(value), qid)).rowcount > 0


def _hold(txn: _Transaction, qid: int, held: bool) -> bool:
    found = _set_flag(txn, qid, "held", held)
    if found:
        _append_event(txn.conn, qid, AdminAction.HOLD if held else AdminAction.RELEASE)
    return found


def _delete(txn: _Transaction, qid: int) -> bool:
    found = _delete_message(txn.conn, qid)
    if found:
        _append_event(txn.conn, qid, AdminAction.DELETE)
    return found


def _retry(txn: _Transaction, qid: int | None, now: float) -> int:
    sql = "UPDATE recipient SET next_attempt = ? WHERE state IN (?, ?) AND next_attempt > ?"
    params: tuple[Any, ...] = (now, *_PENDING, now)
    if qid is not None:
        exists = txn.conn.execute("SELECT 1 FROM message WHERE id = ?", (qid,)).fetchone()
        if exists is None:
            return 0
        sql += " AND message_id = ?"
        params += (qid,)
    moved = txn.conn.execute(sql, params).rowcount
    _append_event(txn.conn, qid, AdminAction.RETRY)
    return moved


# ---------------------------------------------------------------------------
# Opening


def _create_or_check_schema(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if exists is None:
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (SCHEMA_VERSION, time.time()),
            )
        else:
            version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise QueueUnusable(
                    path,
                    QueueProblem.NEWER_SCHEMA,
                    f"queue schema version {version}, this relaymail knows {SCHEMA_VERSION};"
                    " refusing to touch it",
                )
        conn.execute("DELETE FROM admin_event WHERE at < ?", (time.time() - ADMIN_EVENT_RETENTION,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteStore:
    """The `Store` protocol on SQLite. Construct with `SqliteStore.open(directory)`."""

    def __init__(self, path: Path, writer: _Writer, readers: _Readers, files: QueueFiles) -> None:
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
    ) -> SqliteStore:
        """Open (creating if needed) the queue in `directory` and start its writer.

        `max_bytes` caps the database size: writes past it fail with QueueFull
        (SQLite's own SQLITE_FULL), as they would on a full disk. A cap below
        the current size keeps the current size. `max_batch` bounds how many
        writes share one commit (1 means one commit per write). `busy_timeout`
        is how long a write waits while another process (the CLI) holds the
        write lock before it fails with QueueFull.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        path, conn = _open_database(
            Path(directory), max_bytes, busy_timeout, check_same_thread=False
        )
        try:
            files = QueueFiles(path)
        except BaseException:
            conn.close()
            raise
        return cls(path, _Writer(conn, max_batch, files), _Readers(path, files), files)

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
        self, envelope: Envelope, data: bytes, received_at: float, *, announce: bool = False
    ) -> QueuedMessage:
        recipients = tuple(dict.fromkeys(envelope.recipients))
        if recipients != envelope.recipients:
            envelope = Envelope(envelope.sender, recipients)
        apply = functools.partial(
            _insert_message,
            sender=envelope.sender,
            recipients=recipients,
            data=data,
            received_at=received_at,
            announce=announce,
        )
        qid = await self._writer.submit(apply, weight=len(data))
        return QueuedMessage(format_queue_id(qid), envelope, len(data), received_at)

    async def record(self, updates: Sequence[RecipientUpdate]) -> None:
        if not updates:
            return
        rows = []
        for update in updates:
            qid = parse_queue_id(update.message_id)
            if qid is None:
                raise ValueError(f"not a queue id: {update.message_id!r}")
            rows.append(
                (
                    update.state.value,
                    update.attempts,
                    update.next_attempt,
                    update.last_attempt,
                    update.last_reply,
                    update.last_error,
                    update.tls,
                    update.host,
                    qid,
                    update.recipient,
                )
            )
        await self._writer.submit(functools.partial(_apply_updates, rows=rows))

    async def mark_warned(self, message_id: str) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return await self._writer.submit(
            functools.partial(_set_flag, qid=qid, column="warned", value=True)
        )

    async def set_hold(self, message_id: str, held: bool) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return await self._writer.submit(functools.partial(_hold, qid=qid, held=held))

    async def delete(self, message_id: str) -> bool:
        qid = parse_queue_id(message_id)
        if qid is None:
            return False
        return await self._writer.submit(functools.partial(_delete, qid=qid))

    async def retry(self, message_id: str | None = None, *, now: float | None = None) -> int:
        qid = None
        if message_id is not None:
            qid = parse_queue_id(message_id)
            if qid is None:
                return 0
        when = time.time() if now is None else now
        return await self._writer.submit(functools.partial(_retry, qid=qid, now=when))

    # -- reads for the daemon ------------------------------------------------

    def load_data(self, message_id: str) -> bytes:
        qid = parse_queue_id(message_id)
        if qid is not None:
            with self._readers.connection() as conn:
                row = conn.execute("SELECT data FROM body WHERE message_id = ?", (qid,)).fetchone()
            if row is not None:
                return bytes(row[0])
        raise KeyError(message_id)

    async def read_data(self, message_id: str) -> bytes:
        # Measured: a 64 KiB body reads in ~10 µs, a hop to a thread costs ~45 µs;
        # only bodies past INLINE_READ_LIMIT (~60 µs) are worth taking off the loop.
        qid = parse_queue_id(message_id)
        if qid is not None:
            with self._readers.connection() as conn:
                row = conn.execute(
                    "SELECT m.size, CASE WHEN m.size <= ? THEN b.data END"
                    " FROM message AS m JOIN body AS b ON b.message_id = m.id WHERE m.id = ?",
                    (INLINE_READ_LIMIT, qid),
                ).fetchone()
            if row is not None and row[1] is not None:
                return bytes(row[1])
            if row is not None:
                import asyncio

                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, self.load_data, message_id)
        raise KeyError(message_id)

    _PENDING_SQL = (
        "SELECT m.id, m.sender, m.received_at, m.size, m.held, m.warned,"
        " r.address, r.state, r.attempts, r.next_attempt"
        " FROM message AS m JOIN recipient AS r ON r.message_id = m.id"
        # The unary + keeps the planner on the primary keys (already in output
        # order) instead of the state index plus a sort of the whole queue.
        " WHERE +r.state IN (?, ?) {where}"
        " ORDER BY m.id, r.idx"
    )

    def load_pending(self) -> list[PendingMessage]:
        with self._readers.connection() as conn:
            rows = conn.execute(self._PENDING_SQL.format(where=""), _PENDING).fetchall()
        return _group_pending(rows)

    def load_pending_message(self, message_id: str) -> PendingMessage | None:
        qid = parse_queue_id(message_id)
        if qid is None:
            return None
        sql = self._PENDING_SQL.format(where="AND m.id = ?")
        with self._readers.connection() as conn:
            rows = conn.execute(sql, (*_PENDING, qid)).fetchall()
        pending = _group_pending(rows)
        return pending[0] if pending else None

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

    # -- reads for the CLI ---------------------------------------------------

    def list_messages(
        self, limit: int = 50, offset: int = 0, state: RecipientState | None = None
    ) -> list[MessageSummary]:
        if state is None:
            page = "SELECT id FROM message ORDER BY id LIMIT ? OFFSET ?"
            params: tuple[Any, ...] = (limit, offset)
        else:
            page = (
                "SELECT DISTINCT message_id AS id FROM recipient WHERE state = ?"
                " ORDER BY message_id LIMIT ? OFFSET ?"
            )
            params = (state.value, limit, offset)
        sql = (
            f"WITH page AS ({page})"
            " SELECT m.id, m.sender, m.size, m.received_at, m.held, m.warned,"
            " sum(r.state = 'queued'), sum(r.state = 'deferred'),"
            " sum(r.state = 'delivered'), sum(r.state = 'bounced'),"
            " min(CASE WHEN r.state IN ('queued', 'deferred') THEN r.next_attempt END)"
            " FROM page JOIN message AS m ON m.id = page.id"
            " JOIN recipient AS r ON r.message_id = m.id"
            " GROUP BY m.id ORDER BY m.id"
        )
        with self._readers.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
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
                row = conn.execute("SELECT count(*) FROM message").fetchone()
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
                "SELECT sender, size, received_at, held, warned FROM message WHERE id = ?", (qid,)
            ).fetchone()
            recipients = conn.execute(
                "SELECT address, state, attempts, next_attempt, last_attempt, last_reply,"
                " last_error, tls, host FROM recipient WHERE message_id = ? ORDER BY idx",
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
            recipients=tuple(
                RecipientDetail(
                    address=row[0],
                    state=RecipientState(row[1]),
                    attempts=row[2],
                    next_attempt=row[3],
                    last_attempt=row[4],
                    last_reply=row[5],
                    last_error=row[6],
                    tls=row[7],
                    host=row[8],
                )
                for row in recipients
            ),
        )

    def stats(self, now: float | None = None) -> QueueStats:
        with self._readers.snapshot() as conn:
            messages, held, total_bytes, oldest = conn.execute(
                "SELECT count(*), coalesce(sum(held), 0), coalesce(sum(size), 0),"
                " min(received_at) FROM message"
            ).fetchone()
            by_state = dict(
                conn.execute("SELECT state, count(*) FROM recipient GROUP BY state").fetchall()
            )
        when = time.time() if now is None else now
        return QueueStats(
            messages=messages,
            held=held,
            total_bytes=total_bytes,
            recipients=RecipientCounts(
                queued=by_state.get(RecipientState.QUEUED.value, 0),
                deferred=by_state.get(RecipientState.DEFERRED.value, 0),
                delivered=by_state.get(RecipientState.DELIVERED.value, 0),
                bounced=by_state.get(RecipientState.BOUNCED.value, 0),
            ),
            oldest_received_at=oldest,
            oldest_age=None if oldest is None else max(0.0, when - oldest),
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
        recipients.append(PendingRecipient(row[6], _STATE[row[7]], row[8], row[9]))
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
    )


if TYPE_CHECKING:
    _IMPLEMENTS_STORE: type[Store] = SqliteStore  # mypy proves the protocol is met


def _open_database(
    directory: Path, max_bytes: int | None, busy_timeout: float, *, check_same_thread: bool
) -> tuple[Path, sqlite3.Connection]:
    """The queue database in `directory`, created if needed, in WAL with fsync at commit.

    QueueUnusable when the directory or the database cannot be a queue.
    """
    prepare_directory(directory)
    path = directory / DB_FILENAME
    try:
        conn = _connect(path, check_same_thread=check_same_thread, busy_timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise open_failure(path, exc) from None
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RelaymailError(f"{path}: cannot switch to WAL mode (got {mode})")
        # FULL: in WAL mode, fsync the WAL at every commit; NORMAL would not.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("PRAGMA cache_size = -16384")
        if max_bytes is not None:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")
        _create_or_check_schema(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise open_failure(path, exc) from None
    except BaseException:
        conn.close()
        raise
    return path, conn


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
    _, conn = _open_database(Path(directory), None, busy_timeout, check_same_thread=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        txn = _Transaction(conn)
        qid = _insert_message(txn, envelope.sender, recipients, data, received_at, announce=True)
        txn.finish()
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise _storage_error(exc) from None
    finally:
        conn.close()
    return format_queue_id(qid)
