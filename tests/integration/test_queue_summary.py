"""The queue's counts (`queue stats`, `queue list`) come from a summary the triggers keep.

Whatever changes the queue (enqueue, delivery outcomes, admin changes from the
daemon's store or from another process), the summary equals a full count; and
the queries that read it and the listing read O(1) and O(limit) rows, which
their plans show: no scan of `message` or `recipient`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from relaymail.message import Envelope
from relaymail.queue import AdminAction, RecipientState, SqliteStore
from relaymail.queue.schema import EXPIRED_EVENTS_SQL
from relaymail.queue.selection import Selection
from relaymail.queue.store import QueueStats, RecipientCounts
from tests.queue_samples import ENVELOPE, body, raw, update


def recount(directory: Path) -> tuple[int, int, int, RecipientCounts, float | None]:
    """What the summary must say, counted row by row."""
    with contextlib.closing(raw(directory)) as conn:
        messages, held, size, oldest = conn.execute(
            "SELECT count(*), coalesce(sum(held != 0), 0), coalesce(sum(size), 0),"
            " min(received_at) FROM message"
        ).fetchone()
        states = dict(conn.execute("SELECT state, count(*) FROM recipient GROUP BY state"))
    counts = RecipientCounts(*(states.get(s.value, 0) for s in RecipientState))
    return messages, held, size, counts, oldest


def summarised(stats: QueueStats) -> tuple[int, int, int, RecipientCounts, float | None]:
    return (
        stats.messages, stats.held, stats.total_bytes, stats.recipients,
        stats.oldest_received_at,
    )  # fmt: skip


async def test_the_summary_follows_every_kind_of_change(
    store: SqliteStore, queue_dir: Path
) -> None:
    three = Envelope("alice@example.org", ("a@example.com", "b@example.com", "c@example.net"))
    first = await store.enqueue(three, body(1, size=5000), received_at=1000.0)
    second = await store.enqueue(ENVELOPE, body(2), received_at=900.0)
    third = await store.enqueue(ENVELOPE, body(3, size=300), received_at=1100.0)
    doomed = await store.enqueue(ENVELOPE, body(4), received_at=1200.0)
    assert summarised(store.stats()) == recount(queue_dir)
    assert store.stats().recipients == RecipientCounts(queued=9)

    # Outcomes: one of each state; the second message ends (its rows go).
    await store.record([
        update(first.id, "a@example.com", RecipientState.DELIVERED),
        update(first.id, "b@example.com", RecipientState.DEFERRED, next_attempt=2000.0),
        update(first.id, "c@example.net", RecipientState.BOUNCED),
        update(second.id, "bob@example.com", RecipientState.DELIVERED),
        update(second.id, "carol@example.net", RecipientState.BOUNCED),
    ])  # fmt: skip
    # The same state again (a retry deferred once more) changes no count.
    await store.record([update(first.id, "b@example.com", RecipientState.DEFERRED, attempts=2)])
    assert summarised(store.stats()) == recount(queue_dir)
    assert store.stats().recipients == RecipientCounts(4, 1, 1, 1)
    assert store.stats().oldest_received_at == 1000.0

    assert await store.set_hold(third.id, True)
    assert await store.set_hold(third.id, True)  # held twice is held once
    assert summarised(store.stats()) == recount(queue_dir)
    assert store.stats().held == 1

    # Another process (the CLI) changes the same queue through its own store.
    other = SqliteStore.open(queue_dir)
    try:
        outcome = await other.change(AdminAction.DELETE, Selection(ids=(doomed.id, third.id)))
        await other.change(AdminAction.HOLD, Selection())
    finally:
        await other.close()
    assert set(outcome.changed) == {doomed.id, third.id}
    assert summarised(store.stats()) == recount(queue_dir)
    assert (store.stats().messages, store.stats().held) == (1, 1)
    assert store.count_messages() == 1

    assert await store.delete(first.id)
    assert summarised(store.stats()) == recount(queue_dir) == (0, 0, 0, RecipientCounts(), None)


async def test_an_older_queue_is_counted_once_when_it_gains_the_summary(queue_dir: Path) -> None:
    store = SqliteStore.open(queue_dir)
    for n in range(5):
        queued = await store.enqueue(ENVELOPE, body(n), received_at=1000.0 + n)
    await store.record([update(queued.id, "bob@example.com", RecipientState.DEFERRED)])
    assert await store.set_hold(queued.id, True)
    await store.close()
    with contextlib.closing(raw(queue_dir)) as conn:  # as version 5 left it
        for trigger in [r[0] for r in conn.execute("SELECT name FROM sqlite_master"
                                                   " WHERE type = 'trigger'")]:  # fmt: skip
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE queue_summary")
        conn.execute("DROP INDEX message_by_received")
        conn.execute("DROP INDEX admin_event_by_time")
        conn.execute("UPDATE schema_version SET version = 5")

    store = SqliteStore.open(queue_dir)
    try:
        stats = store.stats()
        await store.enqueue(ENVELOPE, body(9), received_at=999.0)  # and it follows on
        after = store.stats()
    finally:
        await store.close()
    assert (stats.messages, stats.held, stats.recipients) == (5, 1, RecipientCounts(9, 1))
    assert summarised(after) == recount(queue_dir)
    assert after.oldest_received_at == 999.0


def plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> list[str]:
    return [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


async def test_stats_the_listing_and_the_start_read_no_table_from_end_to_end(
    store: SqliteStore, queue_dir: Path
) -> None:
    queued = [await store.enqueue(ENVELOPE, body(n), time.time()) for n in range(3)]
    listed = store.list_messages(limit=2)
    assert [m.id for m in listed] == [q.id for q in queued[:2]]
    assert store.count_messages() == 3

    with contextlib.closing(raw(queue_dir)) as conn:  # no ANALYZE: as the daemon leaves it
        plans = {
            "summary": plan(conn, SqliteStore._SUMMARY_SQL),
            "oldest": plan(conn, SqliteStore._OLDEST_SQL),
            "list": sorted(plan(conn, SqliteStore._list_sql(None), (100, 0))),
            "recipients": sorted(plan(conn, SqliteStore._RECIPIENTS_SQL, ("[1, 2]",))),
            "start": plan(conn, EXPIRED_EVENTS_SQL, (0.0,)),
        }
    assert plans == {
        "summary": ["SCAN queue_summary"],  # its one row
        "oldest": ["SEARCH message USING COVERING INDEX message_by_received"],
        # The page scans `message` in id order and stops at its LIMIT; the rest is by key
        # (the grouping sorts the page's rows only).
        "list": [
            "MATERIALIZE page", "SCAN message", "SCAN page",
            "SEARCH m USING INTEGER PRIMARY KEY (rowid=?)",
            "SEARCH r USING PRIMARY KEY (message_id=?)", "USE TEMP B-TREE FOR GROUP BY",
        ],
        "recipients": [
            "LIST SUBQUERY 1", "SCAN json_each VIRTUAL TABLE INDEX 1:",
            "SEARCH recipient USING PRIMARY KEY (message_id=?)",
        ],
        # What a start does with the admin events of the last week is by time, not a scan.
        "start": ["SEARCH admin_event USING INDEX admin_event_by_time (at<?)"],
    }  # fmt: skip
