"""The SQLite queue against a real database file: durability, group commit, admin, failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaymail.dsn_request import DsnRequest, Notify, RecipientDsn, Ret
from relaymail.errors import QueueFull, QueueUnavailable, RelaymailError
from relaymail.message import Envelope
from relaymail.queue import (
    AdminAction,
    RecipientState,
    SqliteStore,
    parse_queue_id,
)
from relaymail.queue.ids import shard_id
from relaymail.queue.schema import DB_FILENAME, SCHEMA_VERSION
from tests.queue_samples import ENVELOPE, body, orphans, raw, update

SRC = Path(__file__).resolve().parents[2] / "src"


# -- enqueue -----------------------------------------------------------------


async def test_enqueued_message_survives_a_reopen_with_its_body(queue_dir: Path) -> None:
    store = SqliteStore.open(queue_dir)
    queued = await store.enqueue(ENVELOPE, body(1), received_at=1000.0)
    await store.close()

    reopened = SqliteStore.open(queue_dir)
    try:
        assert reopened.load_data(queued.id) == body(1)
        [pending] = reopened.load_pending()
    finally:
        await reopened.close()
    assert pending.id == queued.id
    assert pending.sender == "alice@example.org"
    assert pending.received_at == 1000.0
    assert pending.size == len(body(1))
    assert [(r.address, r.state, r.attempts, r.next_attempt) for r in pending.recipients] == [
        ("bob@example.com", RecipientState.QUEUED, 0, 1000.0),
        ("carol@example.net", RecipientState.QUEUED, 0, 1000.0),
    ]


async def test_queue_ids_stay_unique_when_the_clock_goes_back(queue_dir: Path) -> None:
    future = (time.time_ns() // 1000) + 3600 * 10**6  # as if the last run's clock was 1 h ahead
    store = SqliteStore.open(queue_dir)
    await store.close()
    with contextlib.closing(raw(queue_dir)) as conn:
        conn.execute("UPDATE queue_id_state SET last_id = ?", (future,))

    store = SqliteStore.open(queue_dir)
    try:
        queued = await store.enqueue(ENVELOPE, body(1), time.time())
    finally:
        await store.close()
    # The first id above the mark that is shard 0's (ids carry their shard, queue/ids.py).
    assert parse_queue_id(queued.id) == shard_id(future + 1, 0)


async def test_concurrent_enqueues_share_commits(store: SqliteStore) -> None:
    before = store.commits
    queued = await asyncio.gather(
        *(store.enqueue(ENVELOPE, body(n), time.time()) for n in range(300))
    )

    assert len({q.id for q in queued}) == 300
    assert store.commits - before < 300
    assert all(store.load_data(q.id) == body(n) for n, q in enumerate(queued))


async def test_the_writes_of_one_turn_of_the_loop_are_one_commit(store: SqliteStore) -> None:
    before = store.commits
    # gather starts every enqueue in the same turn: the writer gets them all at once.
    queued = await asyncio.gather(*(store.enqueue(ENVELOPE, body(n), 1.0) for n in range(50)))
    assert store.commits - before == 1
    await store.record([update(q.id, "bob@example.com", RecipientState.DELIVERED) for q in queued])
    assert store.commits - before == 2


async def test_close_finishes_writes_already_submitted(queue_dir: Path) -> None:
    store = SqliteStore.open(queue_dir)
    tasks = [asyncio.create_task(store.enqueue(ENVELOPE, body(n), time.time())) for n in range(100)]
    await asyncio.sleep(0)  # let every task submit its write
    await store.close()

    ids = [task.result().id for task in tasks]
    reopened = SqliteStore.open(queue_dir)
    try:
        assert reopened.count_messages() == 100
        assert all(reopened.load_data(i) for i in ids)
    finally:
        await reopened.close()


async def test_a_body_is_read_from_the_blob_a_chunk_at_a_time(store: SqliteStore) -> None:
    data = body(8, size=300_000)
    queued = await store.enqueue(ENVELOPE, data, time.time())

    opened = store.open_body(queued.id)
    chunks = list(opened.chunks())
    assert (opened.size, [len(c) for c in chunks]) == (300_000, [65536] * 4 + [37856])
    assert b"".join(chunks) == data
    assert opened.head() == b"Subject: message 8\r\n"
    for missing in ("00000000000", "not-an-id"):
        with pytest.raises(KeyError):
            store.open_body(missing)


async def test_an_older_queue_gets_the_due_index_and_the_refill_reads_through_it(
    queue_dir: Path,
) -> None:
    store = SqliteStore.open(queue_dir)
    await store.close()
    with contextlib.closing(raw(queue_dir)) as conn:  # as version 2 left it
        conn.execute("DROP INDEX recipient_due")
        drop_dsn_columns(conn)
        conn.execute("ALTER TABLE message DROP COLUMN requiretls")
        conn.execute("UPDATE schema_version SET version = 2")

    store = SqliteStore.open(queue_dir)
    await store.close()
    with contextlib.closing(raw(queue_dir)) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
        plan = conn.execute("EXPLAIN QUERY PLAN " + SqliteStore._DUE_SQL, (0.0,)).fetchall()
    assert versions[-1] == SCHEMA_VERSION == 6
    assert any("recipient_due" in row[-1] for row in plan)


async def test_a_version_3_queue_keeps_its_mail_and_gains_the_requiretls_flag(
    queue_dir: Path,
) -> None:
    store = SqliteStore.open(queue_dir)
    queued = await store.enqueue(ENVELOPE, body(1), time.time())
    await store.close()
    with contextlib.closing(raw(queue_dir)) as conn:  # as version 3 left it
        drop_dsn_columns(conn)
        conn.execute("ALTER TABLE message DROP COLUMN requiretls")
        conn.execute("UPDATE schema_version SET version = 3")

    store = SqliteStore.open(queue_dir)
    flagged = await store.enqueue(Envelope(*ENVELOPE[:2], requiretls=True), body(2), time.time())
    pending = {m.id: m.requiretls for m in store.load_pending()}
    await store.close()
    assert pending == {queued.id: False, flagged.id: True}


def drop_dsn_columns(conn: sqlite3.Connection) -> None:
    """The queue as version 4 left it: no DSN parameters."""
    for table, column in (("message", "ret"), ("message", "envid"),
                          ("recipient", "notify"), ("recipient", "orcpt")):  # fmt: skip
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


async def test_a_version_4_queue_keeps_its_mail_and_gains_the_dsn_parameters(
    queue_dir: Path,
) -> None:
    store = SqliteStore.open(queue_dir)
    queued = await store.enqueue(ENVELOPE, body(1), time.time())
    await store.close()
    with contextlib.closing(raw(queue_dir)) as conn:
        drop_dsn_columns(conn)
        conn.execute("UPDATE schema_version SET version = 4")

    store = SqliteStore.open(queue_dir)
    request = DsnRequest(Ret.HDRS, "x").with_recipients(
        [(ENVELOPE.recipients[0], RecipientDsn(Notify.NEVER))]
    )
    asked = await store.enqueue(ENVELOPE._replace(dsn=request), body(2), time.time())
    pending = {m.id: m.dsn for m in store.load_pending()}
    await store.close()
    assert pending == {queued.id: DsnRequest(), asked.id: request}


async def test_the_requiretls_flag_survives_a_restart(queue_dir: Path) -> None:
    store = SqliteStore.open(queue_dir)
    flagged = await store.enqueue(
        Envelope("a@example.org", ("b@example.com",), requiretls=True), body(1), time.time()
    )
    await store.close()

    store = SqliteStore.open(queue_dir)
    try:
        [pending] = store.load_pending()
        detail = store.get_message(flagged.id)
    finally:
        await store.close()
    assert (pending.id, pending.requiretls) == (flagged.id, True)
    assert detail is not None and detail.requiretls is True


# -- admin -------------------------------------------------------------------


async def test_admin_change_made_by_another_process_reaches_the_daemon(
    store: SqliteStore, queue_dir: Path
) -> None:
    queued = await store.enqueue(ENVELOPE, body(1), 0.0)
    cursor = store.latest_admin_event_id()
    cli = (
        "import asyncio, sys\n"
        "from relaymail.queue import SqliteStore\n"
        "async def main():\n"
        "    store = SqliteStore.open(sys.argv[1])\n"
        "    assert await store.set_hold(sys.argv[2], True)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run(
        [sys.executable, "-c", cli, str(queue_dir), queued.id],
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=60,
    )

    [event] = store.fetch_admin_events(cursor)
    assert (event.message_id, event.action) == (queued.id, AdminAction.HOLD)
    pending = store.load_pending_message(queued.id)
    assert pending is not None and pending.held


# -- storage failures --------------------------------------------------------


async def test_disk_full_fails_with_queue_full_and_never_half_writes(queue_dir: Path) -> None:
    # max_bytes makes SQLite itself answer SQLITE_FULL, the same path as a full disk.
    store = SqliteStore.open(queue_dir, max_bytes=400 * 1024)
    try:
        accepted: dict[str, int] = {}
        with pytest.raises(QueueFull, match="disk full"):
            for n in range(1000):
                accepted[(await store.enqueue(ENVELOPE, body(n), 0.0)).id] = n
        assert 10 < len(accepted) < 1000

        # A burst at the limit: some may fit, the rest fail; each caller learns which.
        numbers = range(2000, 2030)
        burst = await asyncio.gather(
            *(store.enqueue(ENVELOPE, body(n), 0.0) for n in numbers),
            return_exceptions=True,
        )
        for n, result in zip(numbers, burst, strict=True):
            if isinstance(result, BaseException):
                assert isinstance(result, QueueFull)
            else:
                accepted[result.id] = n

        assert store.count_messages() == len(accepted)
        assert orphans(queue_dir) == (0, 0, 0)
        assert all(store.load_data(i) == body(n) for i, n in accepted.items())

        # Delivering (and so deleting) frees pages: the queue takes mail again.
        await store.record(
            [
                update(i, rcpt, RecipientState.DELIVERED)
                for i in list(accepted)[:20]
                for rcpt in ENVELOPE.recipients
            ]
        )
        again = await store.enqueue(ENVELOPE, body(5000), 0.0)
        assert store.load_data(again.id) == body(5000)
    finally:
        await store.close()


async def test_a_failed_enqueue_does_not_take_down_its_batch_neighbours(queue_dir: Path) -> None:
    store = SqliteStore.open(queue_dir, max_bytes=400 * 1024)
    try:
        first = await store.enqueue(ENVELOPE, body(1), 0.0)
        huge = b"Subject: too big\r\n\r\n" + b"x" * 1_000_000 + b"\r\n"
        results = await asyncio.gather(
            store.enqueue(ENVELOPE, body(2), 0.0),
            store.enqueue(ENVELOPE, huge, 0.0),
            store.record([update(first.id, "bob@example.com", RecipientState.DELIVERED)]),
            store.enqueue(ENVELOPE, body(3), 0.0),
            return_exceptions=True,
        )
        ok_before, too_big, recorded, ok_after = results

        assert isinstance(too_big, QueueFull)
        assert recorded is None
        assert not isinstance(ok_before, BaseException)
        assert not isinstance(ok_after, BaseException)
        assert store.load_data(ok_before.id) == body(2)
        assert store.load_data(ok_after.id) == body(3)
        assert store.count_messages() == 3
        assert orphans(queue_dir) == (0, 0, 0)
    finally:
        await store.close()


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files refuse every write, even root's (ext4's immutable attribute)."""
    # Never a skip: a test that cannot make its condition is a failure (e2fsprogs is
    # essential on Debian; the queue directory lives on ext4 here).
    if shutil.which("chattr") is None:
        pytest.fail("chattr is not installed (Debian package e2fsprogs)")
    done: list[Path] = []
    try:
        for path in paths:
            result = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            if result.returncode != 0:
                pytest.fail(f"cannot set the immutable attribute here: {result.stderr!r}")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_write_refused_by_the_filesystem_gives_queue_full_then_recovers(
    store: SqliteStore, queue_dir: Path
) -> None:
    before = await store.enqueue(ENVELOPE, body(1), 0.0)
    db = queue_dir / DB_FILENAME

    with immutable(db, db.with_name(DB_FILENAME + "-wal")):
        with pytest.raises(QueueFull):
            await store.enqueue(ENVELOPE, body(2), 0.0)
        with pytest.raises(QueueFull):
            await store.set_hold(before.id, True)
        assert store.count_messages() == 1  # reads still work

    after = await store.enqueue(ENVELOPE, body(3), 0.0)
    assert store.load_data(after.id) == body(3)
    assert store.count_messages() == 2
    assert orphans(queue_dir) == (0, 0, 0)


async def test_a_lock_held_by_another_process_fails_the_batch_once_then_clears(
    queue_dir: Path,
) -> None:
    store = SqliteStore.open(queue_dir, busy_timeout=0.2)
    try:
        with contextlib.closing(raw(queue_dir)) as other:
            other.execute("BEGIN IMMEDIATE")  # e.g. a CLI stuck inside a write
            start = time.monotonic()
            results = await asyncio.gather(
                *(store.enqueue(ENVELOPE, body(n), 0.0) for n in range(20)),
                return_exceptions=True,
            )
            waited = time.monotonic() - start
            other.execute("ROLLBACK")

        assert all(isinstance(r, QueueFull) for r in results)
        assert "locked by another process" in str(results[0])
        assert waited < 2.0  # not one lock timeout per write
        queued = await store.enqueue(ENVELOPE, body(99), 0.0)
        assert store.load_data(queued.id) == body(99)
        assert store.count_messages() == 1
    finally:
        await store.close()


@pytest.mark.timeout(30)
async def test_a_writer_thread_that_dies_fails_its_batch_and_every_later_write(
    queue_dir: Path,
) -> None:
    store = SqliteStore.open(queue_dir)
    try:
        queued = await store.enqueue(ENVELOPE, body(1), 0.0)

        def bug(txn: object) -> None:
            raise SystemExit("a bug escaping the writer's own error handling")

        # A fault injected into the writer itself: it takes the thread down.
        with pytest.raises(QueueUnavailable):
            await store._writer.submit(bug)  # type: ignore[arg-type]
        with pytest.raises(QueueUnavailable):
            await store.enqueue(ENVELOPE, body(2), 0.0)
        store._writer._thread.join()  # its end, whatever it closes, comes before the read
        assert store.load_data(queued.id) == body(1)  # what was kept stays readable
    finally:
        await store.close()


async def test_a_newer_schema_is_left_alone(queue_dir: Path) -> None:
    store = SqliteStore.open(queue_dir)
    await store.close()
    with contextlib.closing(raw(queue_dir)) as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")

    with pytest.raises(RelaymailError, match="schema version 99"):
        SqliteStore.open(queue_dir)


# -- crash safety ------------------------------------------------------------

ENQUEUER = r"""
import asyncio, hashlib, sys, time
from relaymail.message import Envelope
from relaymail.queue import SqliteStore

def body(n):
    head = b"Subject: message %d\r\n\r\n" % n
    filler = hashlib.sha256(b"%d" % n).hexdigest().encode()
    return head + (filler * (2048 // len(filler) + 1))[: 2048 - len(head) - 2] + b"\r\n"

async def enqueuer(store, out, n, step):
    envelope = Envelope("alice@example.org", ("bob@example.com",))
    while True:
        queued = await store.enqueue(envelope, body(n), time.time())
        # Printed only after the await: an acknowledged message.
        out.write(f"{queued.id} {n}\n".encode())
        n += step

async def main():
    store = SqliteStore.open(sys.argv[1])
    base, step = int(sys.argv[3]), 32
    with open(sys.argv[2], "ab", buffering=0) as out:
        await asyncio.gather(*(enqueuer(store, out, base + i, step) for i in range(step)))

asyncio.run(main())
"""


def acknowledged(log: Path) -> dict[str, int]:
    lines = log.read_bytes().split(b"\n")[:-1]  # a line cut by the kill has no newline
    return {line.split()[0].decode(): int(line.split()[1]) for line in lines}


@pytest.mark.timeout(300)
def test_kill_9_never_loses_an_acknowledged_message(queue_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "acknowledged.log"
    rng = random.Random()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for run in range(5):
        before = len(acknowledged(log)) if log.exists() else 0
        child = subprocess.Popen(
            [sys.executable, "-c", ENQUEUER, str(queue_dir), str(log), str(run * 10**9)], env=env
        )
        try:
            deadline = time.monotonic() + 60
            while (not log.exists() or len(acknowledged(log)) <= before) and child.poll() is None:
                assert time.monotonic() < deadline, "the enqueuer acknowledged nothing"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.8))
        finally:
            child.kill()  # SIGKILL: no cleanup, no close()
            child.wait()
        assert child.returncode == -9

    expected = acknowledged(log)
    assert len(expected) > 500
    with contextlib.closing(raw(queue_dir)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert orphans(queue_dir) == (0, 0, 0)

    async def check() -> None:
        store = SqliteStore.open(queue_dir)
        try:
            assert store.count_messages() >= len(expected)
            lost = [i for i, n in expected.items() if store.load_data(i) != body(n)]
            assert lost == []
            assert len(store.load_pending()) == store.count_messages()
        finally:
            await store.close()

    asyncio.run(check())


async def test_connections_are_replaced_after_their_blob_handles_and_nothing_is_lost(
    queue_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each blob handle leaves a weak reference on its connection until it closes
    # (CPython gh-144424); a connection is replaced after so many. Here: after 3.
    monkeypatch.setattr("relaymail.queue.writer.BLOB_HANDLES_PER_CONNECTION", 3)
    monkeypatch.setattr("relaymail.queue.sqlite_reads.BLOB_HANDLES_PER_CONNECTION", 3)
    store = SqliteStore.open(queue_dir)
    try:
        first_writer = store._writer._conn
        large = [body(n, size=300_000) for n in range(7)]  # past MessageData's memory: a blob
        ids = [(await store.enqueue(ENVELOPE, data, time.time())).id for data in large]
        small = await store.enqueue(ENVELOPE, body(99), time.time())  # with its row
        replaced = store._writer._conn is not first_writer
        read = [b"".join(store.open_body(i).chunks()) for i in ids * 2]  # 5 chunks each
        readers = len(store._readers._all)
    finally:
        await store.close()
    assert replaced
    assert read == large * 2
    assert readers == 1  # one at a time, each replaced when spent
    reopened = SqliteStore.open(queue_dir)
    try:
        assert [reopened.load_data(i) for i in ids] == large
        assert reopened.load_data(small.id) == body(99)
        assert reopened.stats().messages == 8
    finally:
        await reopened.close()
