"""What every queue store promises (queue/store.py), against each backend: SQLite, memory and
PostgreSQL (a private cluster on loopback, a fresh database per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relaymail.body import CHUNK_SIZE
from relaymail.dsn_request import DsnRequest, Notify, Orcpt, RecipientDsn, Ret
from relaymail.errors import BodyUnreadable, RelaymailError
from relaymail.message import Envelope
from relaymail.message_data import MessageData
from relaymail.queue import AdminAction, RecipientState, SqliteStore, Store
from relaymail.queue.memory import MemoryStore
from relaymail.queue.postgres import PostgresStore
from relaymail.queue.selection import AddressPattern, Selection
from tests.queue_samples import ENVELOPE, body, orphans, update


@pytest.fixture
def queue_dir(tmp_path: Path) -> Path:
    return tmp_path / "queue"


OpenStore = Callable[[], Store]


@pytest.fixture(params=["sqlite", "memory", "postgresql"])
def open_store(request: pytest.FixtureRequest, queue_dir: Path) -> OpenStore:
    """A function opening a new store of one backend (SQLite in `queue_dir`)."""
    if request.param == "sqlite":
        return lambda: SqliteStore.open(queue_dir)
    if request.param == "postgresql":
        dsn: str = request.getfixturevalue("postgres_schema_dsn")
        return lambda: PostgresStore.open(dsn, node="mx1")
    return MemoryStore


@pytest.fixture
async def store(open_store: OpenStore) -> AsyncIterator[Store]:
    opened = open_store()
    yield opened
    await opened.close()


async def test_queue_ids_are_short_unique_and_sort_in_arrival_order(store: Store) -> None:
    ids = [(await store.enqueue(ENVELOPE, body(n), time.time())).id for n in range(50)]

    assert ids == sorted(ids)
    assert len(set(ids)) == 50
    assert all(len(i) == 11 and i.isalnum() and i.isupper() for i in ids)


async def test_the_trace_header_is_made_with_the_new_queue_id_and_stored_in_front(
    store: Store,
) -> None:
    def trace(queue_id: str) -> bytes:
        return f"Received: by mx.example.org id {queue_id}\r\n".encode()

    data = body(1)
    queued = await store.enqueue(ENVELOPE, data, time.time(), trace=trace)

    assert queued.trace == trace(queued.id)
    assert store.load_data(queued.id) == queued.trace + data
    assert queued.size == len(queued.trace) + len(data)
    [summary] = store.list_messages()
    assert summary.size == queued.size


@pytest.mark.parametrize("size", [CHUNK_SIZE - 80, CHUNK_SIZE - 40, CHUNK_SIZE + 1])
async def test_a_body_at_the_chunk_size_is_stored_as_given_from_memory_or_a_file(
    store: Store, tmp_path: Path, size: int
) -> None:
    def trace(queue_id: str) -> bytes:
        return f"Received: by mx.example.org id {queue_id}\r\n".encode()

    data = body(2, size)
    spooled = MessageData(tmp_path)  # as the inbound side hands it over
    spooled.write(data)
    for given in (data, spooled):
        queued = await store.enqueue(ENVELOPE, given, time.time(), trace=trace)
        assert store.load_data(queued.id) == queued.trace + data
        assert store.open_body(queued.id).read_all() == queued.trace + data


async def test_duplicate_recipients_are_queued_once(store: Store) -> None:
    envelope = Envelope("a@example.org", ("b@example.com", "c@example.com", "b@example.com"))
    queued = await store.enqueue(envelope, body(1), time.time())

    assert queued.envelope.recipients == ("b@example.com", "c@example.com")
    detail = store.get_message(queued.id)
    assert detail is not None
    assert [r.address for r in detail.recipients] == ["b@example.com", "c@example.com"]


async def test_the_requiretls_flag_is_kept_with_the_message(store: Store) -> None:
    flagged = Envelope("a@example.org", ("b@example.com", "b@example.com"), requiretls=True)
    plain = await store.enqueue(ENVELOPE, body(1), time.time())
    queued = await store.enqueue(flagged, body(2), time.time())

    assert queued.envelope == Envelope("a@example.org", ("b@example.com",), requiretls=True)
    assert {m.id: m.requiretls for m in store.load_pending()} == {
        plain.id: False, queued.id: True,
    }  # fmt: skip
    due = store.due_messages(time.time() + 1, 10)
    assert [(m.id, m.requiretls) for m in due.messages] == [(plain.id, False), (queued.id, True)]
    pending = store.load_pending_message(queued.id)
    detail, other = store.get_message(queued.id), store.get_message(plain.id)
    assert pending is not None and pending.requiretls is True
    assert detail is not None and detail.requiretls is True
    assert other is not None and other.requiretls is False


DSN_REQUEST = DsnRequest(Ret.FULL, "Env+2B1").with_recipients(
    [
        ("b@example.com", RecipientDsn(Notify.SUCCESS | Notify.DELAY, Orcpt("RFC822", "B+2Bx@E"))),
        ("c@example.com", RecipientDsn(Notify.NEVER)),
    ]
)


async def test_the_dsn_parameters_are_kept_per_message_and_recipient(
    open_store: OpenStore,
) -> None:
    envelope = Envelope("a@example.org", ("b@example.com", "c@example.com", "d@example.com"),
                        dsn=DSN_REQUEST)  # fmt: skip
    store = open_store()
    plain = await store.enqueue(ENVELOPE, body(1), time.time())
    queued = await store.enqueue(envelope, body(2), time.time())
    assert queued.envelope.dsn == DSN_REQUEST
    if isinstance(store, SqliteStore):  # and after a restart
        await store.close()
        store = open_store()
    try:
        [pending] = [m for m in store.load_pending() if m.id == queued.id]
        [due] = [m for m in store.due_messages(time.time() + 1, 10).messages if m.id == queued.id]
        detail, other = store.get_message(queued.id), store.get_message(plain.id)
    finally:
        await store.close()
    assert pending.dsn == due.dsn == DSN_REQUEST
    assert (pending.ret, pending.envid) == (Ret.FULL, "Env+2B1")
    assert detail is not None and (detail.ret, detail.envid) == (Ret.FULL, "Env+2B1")
    assert [r.dsn for r in detail.recipients] == [
        DSN_REQUEST.of("b@example.com"), RecipientDsn(Notify.NEVER), RecipientDsn(),
    ]  # fmt: skip
    assert other is not None and (other.ret, other.envid) == (None, None)
    assert {r.dsn for r in other.recipients} == {RecipientDsn()}


async def test_writes_after_close_are_refused(open_store: OpenStore) -> None:
    store = open_store()
    await store.close()
    with pytest.raises(RelaymailError, match="closed"):
        await store.enqueue(ENVELOPE, body(1), time.time())


async def test_record_keeps_a_message_until_every_recipient_is_final(
    store: Store,
) -> None:
    queued = await store.enqueue(ENVELOPE, body(1), 1000.0)
    await store.record(
        [
            update(
                queued.id,
                "bob@example.com",
                RecipientState.DELIVERED,
                last_attempt=1010.0,
                last_reply="250 2.0.0 Ok: queued as 4XyZ",
                tls='{"version": "TLSv1.3", "verified": true}',
                host="mx.example.com",
            ),
            update(
                queued.id,
                "carol@example.net",
                RecipientState.DEFERRED,
                next_attempt=1300.0,
                last_attempt=1010.0,
                last_reply="451 4.7.1 greylisted",
                host="mx.example.net",
            ),
        ]
    )

    detail = store.get_message(queued.id)
    assert detail is not None
    bob, carol = detail.recipients
    assert (bob.state, bob.attempts, bob.last_reply, bob.host) == (
        RecipientState.DELIVERED,
        1,
        "250 2.0.0 Ok: queued as 4XyZ",
        "mx.example.com",
    )
    assert bob.tls == {"version": "TLSv1.3", "verified": True}
    assert (carol.state, carol.next_attempt, carol.last_attempt) == (
        RecipientState.DEFERRED,
        1300.0,
        1010.0,
    )
    [pending] = store.load_pending()
    assert [r.address for r in pending.recipients] == ["carol@example.net"]

    await store.record(
        [
            update(
                queued.id,
                "carol@example.net",
                RecipientState.BOUNCED,
                attempts=2,
                last_reply="550 5.1.1 no such user",
            )
        ]
    )

    assert store.get_message(queued.id) is None
    assert store.load_pending() == []
    with pytest.raises(KeyError):
        store.load_data(queued.id)
    if isinstance(store, SqliteStore):
        assert orphans(store.path.parent) == (0, 0, 0)


async def test_a_final_outcome_is_recorded_while_another_recipient_is_pending(
    store: Store,
) -> None:
    queued = await store.enqueue(ENVELOPE, body(1), 1000.0)
    delivered = update(queued.id, "bob@example.com", RecipientState.DELIVERED, last_reply="250 k")
    await store.record([delivered])
    detail = store.get_message(queued.id)
    assert detail is not None
    bob, carol = detail.recipients
    assert (bob.state, bob.last_reply, carol.state) == (
        RecipientState.DELIVERED,
        "250 k",
        RecipientState.QUEUED,
    )
    # The last one, twice in a batch (as a retry of a write may send it): the message goes.
    bounced = update(queued.id, "carol@example.net", RecipientState.BOUNCED)
    await store.record([bounced, bounced])
    assert store.get_message(queued.id) is None
    assert store.load_pending() == []


async def test_record_for_a_message_deleted_meanwhile_is_harmless(store: Store) -> None:
    queued = await store.enqueue(ENVELOPE, body(1), time.time())
    assert await store.delete(queued.id)

    await store.record([update(queued.id, "bob@example.com", RecipientState.DELIVERED)])

    assert store.get_message(queued.id) is None


async def test_record_refuses_an_id_that_is_not_a_queue_id(store: Store) -> None:
    with pytest.raises(ValueError, match="queue id"):
        await store.record([update("nope", "bob@example.com", RecipientState.DELIVERED)])


async def test_concurrent_records_and_enqueues_all_land(store: Store) -> None:
    queued = await asyncio.gather(*(store.enqueue(ENVELOPE, body(n), 0.0) for n in range(100)))
    await asyncio.gather(
        *(
            store.record([update(q.id, "bob@example.com", RecipientState.DELIVERED)])
            for q in queued
        ),
        *(store.enqueue(ENVELOPE, body(n), 0.0) for n in range(100, 150)),
    )

    assert store.count_messages() == 150
    assert store.count_messages(RecipientState.DELIVERED) == 100
    assert store.stats().recipients.queued == 100 + 2 * 50


async def test_hold_release_delete_and_retry_are_logged_as_admin_events(
    store: Store,
) -> None:
    cursor = store.latest_admin_event_id()
    first = await store.enqueue(ENVELOPE, body(1), 0.0)
    second = await store.enqueue(ENVELOPE, body(2), 0.0)

    assert await store.set_hold(first.id, True)
    assert store.load_pending()[0].held
    assert await store.set_hold(first.id, False)
    assert await store.retry(None, now=5.0) == 0  # everything is already due
    assert await store.delete(second.id)

    events = store.fetch_admin_events(cursor)
    assert [(e.message_id, e.action) for e in events] == [
        (first.id, AdminAction.HOLD),
        (first.id, AdminAction.RELEASE),
        (None, AdminAction.RETRY),
        (second.id, AdminAction.DELETE),
    ]
    assert events == sorted(events, key=lambda e: e.id)
    assert store.fetch_admin_events(events[-1].id) == []
    assert store.latest_admin_event_id() == events[-1].id


async def test_admin_operations_on_unknown_ids_change_nothing(store: Store) -> None:
    cursor = store.latest_admin_event_id()
    for message_id in ("00000000001", "not-an-id"):
        assert not await store.set_hold(message_id, True)
        assert not await store.delete(message_id)
        assert not await store.mark_warned(message_id)
        assert await store.retry(message_id) == 0
        assert store.get_message(message_id) is None
        assert store.load_pending_message(message_id) is None
        with pytest.raises(KeyError):
            store.load_data(message_id)
    assert store.fetch_admin_events(cursor) == []


async def test_retry_makes_waiting_recipients_due_now(store: Store) -> None:
    queued = await store.enqueue(ENVELOPE, body(1), 1000.0)
    await store.record(
        [
            update(queued.id, "bob@example.com", RecipientState.DEFERRED, next_attempt=9000.0),
            update(queued.id, "carol@example.net", RecipientState.DEFERRED, next_attempt=9500.0),
        ]
    )

    assert await store.retry(queued.id, now=2000.0) == 2

    pending = store.load_pending_message(queued.id)
    assert pending is not None
    assert [r.next_attempt for r in pending.recipients] == [2000.0, 2000.0]
    assert [e.action for e in store.fetch_admin_events(0)] == [AdminAction.RETRY]


async def test_mark_warned_is_remembered(store: Store) -> None:
    queued = await store.enqueue(ENVELOPE, body(1), 0.0)
    assert await store.mark_warned(queued.id)
    pending = store.load_pending_message(queued.id)
    assert pending is not None and pending.warned
    assert store.fetch_admin_events(0) == []  # the daemon's own bookkeeping, not an admin act


async def test_list_messages_pages_in_arrival_order_and_filters_by_state(
    store: Store,
) -> None:
    queued = [await store.enqueue(ENVELOPE, body(n), 100.0 + n) for n in range(10)]
    for q in queued[::2]:
        await store.record(
            [update(q.id, "carol@example.net", RecipientState.DEFERRED, next_attempt=500.0)]
        )

    first_page = store.list_messages(limit=4)
    second_page = store.list_messages(limit=4, offset=4)
    deferred = store.list_messages(limit=100, state=RecipientState.DEFERRED)

    assert [m.id for m in first_page + second_page] == [q.id for q in queued[:8]]
    top = first_page[0]
    assert (top.sender, top.size, top.received_at, top.held) == (
        "alice@example.org",
        len(body(0)),
        100.0,
        False,
    )
    assert (top.recipients.queued, top.recipients.deferred, top.recipients.total) == (1, 1, 2)
    assert top.next_attempt == 100.0  # bob is still due since arrival
    assert [m.id for m in deferred] == [q.id for q in queued[::2]]
    assert store.count_messages() == 10
    assert store.count_messages(RecipientState.DEFERRED) == 5
    assert store.count_messages(RecipientState.BOUNCED) == 0


async def test_stats_count_states_bytes_and_the_oldest_message(store: Store) -> None:
    empty = store.stats(now=50.0)
    assert (empty.messages, empty.total_bytes, empty.oldest_age) == (0, 0, None)

    first = await store.enqueue(ENVELOPE, body(1), 100.0)
    await store.enqueue(ENVELOPE, body(2, size=10_000), 150.0)
    await store.set_hold(first.id, True)
    await store.record([update(first.id, "bob@example.com", RecipientState.BOUNCED)])

    stats = store.stats(now=400.0)
    assert stats.messages == 2
    assert stats.held == 1
    assert stats.total_bytes == len(body(1)) + 10_000
    assert (stats.recipients.queued, stats.recipients.bounced) == (3, 1)
    assert (stats.oldest_received_at, stats.oldest_age) == (100.0, 300.0)


# -- admin changes over a selection (queue/selection.py) ------------------------------


async def _five(store: Store) -> list[str]:
    """Messages the filters tell apart: sender, recipient domain, age."""
    specs = [
        ("spam@bad.example", ("u1@gmail.example",), 100.0),
        ("SPAM@Bad.Example", ("u2@yahoo.example", "u3@gmail.example"), 200.0),
        ("ok@good.example", ("u4@yahoo.example",), 300.0),
        ("", ("postmaster@good.example",), 400.0),
        ("o_k@good.example", ("u5@GMAIL.example",), 500.0),
    ]
    return [(await store.enqueue(Envelope(s, r), body(n), at)).id
            for n, (s, r, at) in enumerate(specs)]  # fmt: skip


SELECTIONS = [
    (Selection(sender=AddressPattern("spam@bad.example")), [0, 1]),
    (Selection(sender=AddressPattern("bad.example", whole_domain=True)), [0, 1]),
    (Selection(sender=AddressPattern("")), [3]),
    (Selection(sender=AddressPattern("o%k@good.example")), []),
    (Selection(sender=AddressPattern("o_k@good.example")), [4]),
    (Selection(recipient=AddressPattern("gmail.example", whole_domain=True)), [0, 1, 4]),
    (Selection(recipient=AddressPattern("u4@yahoo.example")), [2]),
    (Selection(received_before=250.0), [0, 1]),
    (Selection(received_before=250.0, recipient=AddressPattern("yahoo.example", True)), [1]),
    (Selection(ids=()), []),
    (Selection(), [0, 1, 2, 3, 4]),
]


@pytest.mark.parametrize(("selection", "picked"), SELECTIONS)
async def test_every_backend_selects_the_same_messages(
    store: Store, selection: Selection, picked: list[int]
) -> None:
    ids = await _five(store)
    done = await store.change(AdminAction.HOLD, selection)
    assert done.changed == tuple(ids[i] for i in picked)
    assert {m.id for m in store.list_messages() if m.held} == {ids[i] for i in picked}


async def test_named_ids_in_any_case_and_unknown_ones(store: Store) -> None:
    ids = await _five(store)
    named = (ids[0].lower(), "NOSUCHID", ids[2], "", ids[2])
    done = await store.change(AdminAction.DELETE, Selection(ids=named))
    assert done.changed == (ids[0], ids[2]) and done.missing == ("NOSUCHID", "")
    assert [m.id for m in store.list_messages()] == [ids[1], ids[3], ids[4]]
    events = store.fetch_admin_events(0)
    assert [(e.message_id, e.action) for e in events] == [
        (ids[0], AdminAction.DELETE), (ids[2], AdminAction.DELETE)
    ]  # fmt: skip


async def test_a_retry_leaves_held_messages_alone(store: Store) -> None:
    ids = await _five(store)
    later = [update(i, r.address, RecipientState.DEFERRED, next_attempt=10**9)
             for i in ids for r in (store.get_message(i) or _gone()).recipients]  # fmt: skip
    await store.record(later)
    await store.change(AdminAction.HOLD, Selection(ids=(ids[1],)))
    before = store.latest_admin_event_id()
    done = await store.change(AdminAction.RETRY, Selection(), now=1000.0)
    assert done.held == (ids[1],) and ids[1] not in done.changed
    assert done.recipients == 4  # six recipients, two of them in the held message
    held = store.get_message(ids[1])
    assert held is not None and {r.next_attempt for r in held.recipients} == {10**9}
    # The whole queue retried is one event for the daemon, not one per message.
    assert [e.message_id for e in store.fetch_admin_events(before)] == [None]
    # Released, it goes now: the admin's "go", not its old retry time.
    done = await store.change(AdminAction.RELEASE, Selection(ids=(ids[1],)), now=2000.0)
    assert (done.changed, done.recipients) == ((ids[1],), 2)
    released = store.get_message(ids[1])
    assert released is not None and not released.held
    assert {r.next_attempt for r in released.recipients} == {2000.0}


async def test_a_release_counts_the_recipients_that_were_due_already(store: Store) -> None:
    """Held mail whose retry time has passed goes as soon as it is released: the count
    says so, no recipient's time moves later, and a settled recipient is not counted."""
    ids = await _five(store)
    due, done = (store.get_message(ids[1]) or _gone()).recipients[:2]
    later = (store.get_message(ids[2]) or _gone()).recipients[0]
    await store.record([
        update(ids[1], due.address, RecipientState.DEFERRED, next_attempt=500.0),
        update(ids[1], done.address, RecipientState.DELIVERED, next_attempt=500.0),
        update(ids[2], later.address, RecipientState.DEFERRED, next_attempt=10**9),
    ])  # fmt: skip
    await store.change(AdminAction.HOLD, Selection(ids=(ids[1], ids[2])))
    outcome = await store.change(AdminAction.RELEASE, Selection(ids=(ids[1], ids[2])), now=2000.0)
    assert (outcome.changed, outcome.recipients) == ((ids[1], ids[2]), 2)
    times = {r.address: r.next_attempt
             for i in ids[1:3] for r in (store.get_message(i) or _gone()).recipients}  # fmt: skip
    assert (times[due.address], times[later.address]) == (500.0, 2000.0)


def _gone() -> Any:
    raise AssertionError("the message is gone")


async def test_pending_breakdown_ranks_destinations_and_deferral_reasons(store: Store) -> None:
    first = await store.enqueue(
        Envelope("a@example.org", ("x@big.example", "y@BIG.example", '"a@b"@small.example')),
        body(1), 100.0,
    )  # fmt: skip
    await store.enqueue(Envelope("a@example.org", ("z@big.example",)), body(2), 110.0)
    await store.record([
        update(first.id, "x@big.example", RecipientState.DEFERRED, last_error="451 busy"),
        update(first.id, "y@BIG.example", RecipientState.DEFERRED, last_error="451 busy"),
        update(first.id, '"a@b"@small.example', RecipientState.DEFERRED, last_error="421 bye"),
    ])  # fmt: skip

    top = store.pending_breakdown(limit=5)
    assert [(t.name, t.count) for t in top.destinations] == [
        ("big.example", 3), ("small.example", 1)
    ]  # fmt: skip
    assert [(t.name, t.count) for t in top.reasons] == [("451 busy", 2), ("421 bye", 1)]
    assert len(store.pending_breakdown(limit=1).destinations) == 1


# -- bodies and the scheduler's refill ------------------------------------------


async def test_a_body_is_read_on_demand_and_a_delete_between_chunks_fails_the_read(
    store: Store,
) -> None:
    # More than two chunks of any backend (PostgreSQL reads 256 KiB at a time).
    data = body(3, size=600_000).replace(b"Subject", "Subject: é\r\nX".encode(), 1)
    queued = await store.enqueue(ENVELOPE, data, time.time())

    opened = store.open_body(queued.id)
    assert (opened.size, opened.read_all(), opened.eight_bit()) == (len(data), data, True)
    assert opened.head() == data[: data.index(b"\r\n\r\n") + 2]
    chunks = opened.chunks()
    assert next(chunks) == data[: opened.chunk_size]
    await store.delete(queued.id)
    with pytest.raises(BodyUnreadable):
        next(chunks)
    with pytest.raises(KeyError):
        store.open_body(queued.id)


async def test_due_messages_come_earliest_first_without_held_or_excluded_ones(
    store: Store,
) -> None:
    ids = [(await store.enqueue(ENVELOPE, body(n), 1000.0 + n)).id for n in range(6)]
    later = [update(ids[0], r, RecipientState.DEFERRED, next_attempt=5000.0)
             for r in ENVELOPE.recipients]  # fmt: skip
    # One recipient due early is enough to make a message due early.
    await store.record([*later, update(ids[5], "bob@example.com", RecipientState.DEFERRED,
                                       next_attempt=500.0)])  # fmt: skip
    await store.set_hold(ids[2], True)

    batch = store.due_messages(2000.0, 3, exclude=frozenset({ids[3]}))
    assert [m.id for m in batch.messages] == [ids[5], ids[1], ids[4]]
    # A shared store also looks again within a lease: another node may have died by then.
    look_again = min(5000.0, 2000.0 + store.lease) if isinstance(store, PostgresStore) else 5000.0
    assert (batch.more, batch.next_due) == (False, look_again)
    assert [r.address for r in batch.messages[0].recipients] == list(ENVELOPE.recipients)

    cut = store.due_messages(2000.0, 1)
    assert ([m.id for m in cut.messages], cut.more) == ([ids[5]], True)
    assert store.due_messages(999.0, 10).messages[0].id == ids[5]
    assert [m.id for m in store.due_messages(999.0, 10).messages] == [ids[5]]
