"""Several SQLite queue shards read and changed as one queue; a shard's mail moved into another."""

from __future__ import annotations

from pathlib import Path

from relaymail.message import Envelope
from relaymail.queue.ids import ID_SHARDS, parse_queue_id
from relaymail.queue.schema import DEFAULT_BUSY_TIMEOUT, open_database
from relaymail.queue.selection import AddressPattern, Selection
from relaymail.queue.sharded import ShardedQueue
from relaymail.queue.sqlite import SqliteStore
from relaymail.queue.sqlite_adopt import adopt_shard
from relaymail.queue.store import AdminAction, RecipientState, RecipientUpdate


async def _fill(store: SqliteStore, count: int, sender: str, at: float) -> list[str]:
    ids = []
    for n in range(count):
        data = f"Subject: {sender}-{n}\r\n\r\n{'x' * 100}\r\n".encode()
        queued = await store.enqueue(Envelope(sender, ("u@dest.test",)), data, at + n)
        ids.append(queued.id)
    return ids


async def test_shards_list_count_and_change_as_one_queue(tmp_path: Path) -> None:
    zero, one = SqliteStore.open(tmp_path, shard=0), SqliteStore.open(tmp_path / "shard-1", shard=1)
    ids = await _fill(zero, 3, "a@zero.test", 100.0) + await _fill(one, 4, "b@one.test", 100.5)
    assert {parse_queue_id(i) % ID_SHARDS for i in ids[:3]} == {0}  # type: ignore[operator]
    assert {parse_queue_id(i) % ID_SHARDS for i in ids[3:]} == {1}  # type: ignore[operator]
    await one.record([RecipientUpdate(ids[3], "u@dest.test", RecipientState.DEFERRED, 1, 9e9)])
    queue = ShardedQueue(tmp_path, {0: zero})  # shard 1 is opened by the view itself
    try:
        assert [m.id for m in queue.list_messages(100)] == sorted(ids)
        assert [m.id for m in queue.list_messages(3, 2)] == sorted(ids)[2:5]
        assert queue.count_messages() == 7
        assert queue.count_messages(RecipientState.DEFERRED) == 1
        stats = queue.stats(now=200.0)
        assert (stats.messages, stats.recipients.queued, stats.recipients.deferred) == (7, 6, 1)
        assert stats.oldest_received_at == 100.0
        assert [t.count for t in queue.pending_breakdown().destinations] == [7]
        assert queue.get_message(ids[5]) is not None
        assert queue.load_data(ids[6]).startswith(b"Subject: b@one.test-3")

        held = await queue.change(AdminAction.HOLD, Selection(ids=(ids[0], ids[4], "1K1NOSUCH00")))
        assert held.changed == tuple(sorted((ids[0], ids[4])))
        assert held.missing == ("1K1NOSUCH00",)
        assert one.fetch_admin_events(0)[-1].message_id == ids[4]  # the owner's shard sees it
        gone = await queue.change(
            AdminAction.DELETE, Selection(sender=AddressPattern.parse("@one.test"))
        )
        assert len(gone.changed) == 4
        assert queue.count_messages() == 3
    finally:
        await queue.close()
        await zero.close()
        await one.close()


async def test_a_shard_is_moved_once_even_after_a_crash_between_its_commits(
    tmp_path: Path,
) -> None:
    source_dir = tmp_path / "shard-3"
    old = SqliteStore.open(source_dir, shard=3)
    moving = await _fill(old, 5, "a@old.test", 50.0)
    await old.record([RecipientUpdate(moving[1], "u@dest.test", RecipientState.DEFERRED, 2, 77.0)])
    await old.close()
    target = SqliteStore.open(tmp_path / "shard-1", shard=1)
    try:
        _, source = open_database(source_dir, None, DEFAULT_BUSY_TIMEOUT, check_same_thread=False)
        # The first half of a move that a crash interrupted: copied, not yet deleted.
        assert await target.import_messages(source, [parse_queue_id(moving[0])]) == 1  # type: ignore[list-item]
        source.close()
        assert await adopt_shard(source_dir, target) == 4  # the copy is not made twice
        assert [m.id for m in target.list_messages(10)] == moving
        deferred = target.get_message(moving[1])
        assert deferred is not None and deferred.recipients[0].attempts == 2
        assert target.load_data(moving[4]).startswith(b"Subject: a@old.test-4")
        assert await adopt_shard(source_dir, target) == 0
    finally:
        await target.close()
