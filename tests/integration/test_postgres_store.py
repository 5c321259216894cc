"""The PostgreSQL store as nodes of a cluster see it: claims, leases, events, lost connections.

Two stores on one database are two nodes. Leases are short here (a second or
less) and the tests wait for the database's clock to pass them, never for a
fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from relaymail.errors import QueueFull, QueueUnusable
from relaymail.queue import AdminAction, RecipientState
from relaymail.queue.postgres import PostgresStore
from relaymail.queue.postgres_connect import storage_error
from relaymail.queue.selection import Selection
from relaymail.queue_problem import QueueProblem
from tests.queue_samples import ENVELOPE, body, update

LEASE = 1.0


@pytest.fixture
async def nodes(postgres_schema_dsn: str) -> AsyncIterator[Callable[..., PostgresStore]]:
    """Opens stores on one database, each a node of its own; all closed at the end."""
    opened: list[PostgresStore] = []

    def node(name: str, lease: float = LEASE) -> PostgresStore:
        store = PostgresStore.open(postgres_schema_dsn, node=name, lease=lease)
        opened.append(store)
        return store

    yield node
    for store in opened:
        await store.close()


def _owner(store: PostgresStore, message_id: str) -> tuple[str | None, float | None]:
    from relaymail.queue.ids import parse_queue_id

    [row] = store._rows(
        "SELECT claimed_by, lease_until - extract(epoch FROM clock_timestamp()) FROM message"
        " WHERE id = %s", (parse_queue_id(message_id),),
    )  # fmt: skip
    return row[0], row[1]


async def _until(condition: Callable[[], bool], deadline: float = 20.0) -> None:
    """Wait for `condition`, checked every 20 ms; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def _lease_ran_out(store: PostgresStore, message_id: str) -> Callable[[], bool]:
    def check() -> bool:
        remaining = _owner(store, message_id)[1]
        return remaining is not None and remaining < 0

    return check


async def test_a_message_accepted_by_a_node_is_that_nodes_until_its_lease_runs_out(
    nodes: Callable[..., PostgresStore],
) -> None:
    a, b = nodes("mx-a"), nodes("mx-b")
    queued = await a.enqueue(ENVELOPE, body(1), time.time())

    assert _owner(a, queued.id)[0] == "mx-a"
    assert not await b.claim(queued.id)
    assert b.due_messages(time.time() + 1, 10).messages == ()

    await _until(_lease_ran_out(a, queued.id))  # as if mx-a had died
    assert [m.id for m in b.due_messages(time.time() + 1, 10).messages] == [queued.id]
    assert _owner(b, queued.id)[0] == "mx-b"


async def test_refills_of_two_nodes_at_once_claim_disjoint_sets(
    nodes: Callable[..., PostgresStore],
) -> None:
    intake, a, b = nodes("intake", lease=0.0), nodes("mx-a"), nodes("mx-b")
    ids = {(await intake.enqueue(ENVELOPE, body(n), 1000.0 + n)).id for n in range(40)}
    await _until(lambda: all(_lease_ran_out(intake, i)() for i in ids))

    now = time.time()
    first, second = await asyncio.gather(
        asyncio.to_thread(a.due_messages, now, 25), asyncio.to_thread(b.due_messages, now, 25)
    )
    got_a = {m.id for m in first.messages}
    got_b = {m.id for m in second.messages}

    assert not got_a & got_b
    assert got_a | got_b == ids
    assert {_owner(a, i)[0] for i in got_a} == {"mx-a"}
    assert {_owner(a, i)[0] for i in got_b} == {"mx-b"}
    # A node's own claims are claimable by it again (a refill after a restart of its window).
    assert {m.id for m in a.due_messages(now, 100).messages} == got_a


async def test_a_node_whose_lease_was_lost_cannot_record_over_the_new_owner(
    nodes: Callable[..., PostgresStore],
) -> None:
    a, b = nodes("mx-a"), nodes("mx-b")
    queued = await a.enqueue(ENVELOPE, body(1), time.time())
    await _until(_lease_ran_out(a, queued.id))  # mx-a stalled past its lease
    assert await b.claim(queued.id)

    # mx-a comes back with the outcome of the delivery it was making: refused.
    await a.record([update(queued.id, "bob@example.com", RecipientState.DELIVERED)])
    assert not await a.claim(queued.id)

    detail = a.get_message(queued.id)
    assert detail is not None
    assert [r.state for r in detail.recipients] == [RecipientState.QUEUED] * 2
    # The new owner's outcomes are stored, and the last one removes the message.
    await b.record([update(queued.id, r, RecipientState.DELIVERED) for r in ENVELOPE.recipients])
    assert b.get_message(queued.id) is None


async def test_a_delivering_node_renews_its_lease_past_the_first_expiry(
    nodes: Callable[..., PostgresStore],
) -> None:
    a, b = nodes("mx-a", lease=0.6), nodes("mx-b")
    queued = await a.enqueue(ENVELOPE, body(1), time.time())
    assert await a.claim(queued.id)  # a delivery starts: renewed every 0.2 s from now
    first = _owner(a, queued.id)[1]
    assert first is not None
    started = time.monotonic()

    # Well past the lease the claim was first given, it is still live and mx-a's.
    await _until(lambda: time.monotonic() - started > 3 * first)
    owner, remaining = _owner(a, queued.id)
    assert owner == "mx-a" and remaining is not None and remaining > 0
    assert not await b.claim(queued.id)

    await a.record([update(queued.id, r, RecipientState.DEFERRED, next_attempt=time.time() + 600)
                    for r in ENVELOPE.recipients])  # fmt: skip
    # Nothing due any more: released with the outcome, for whichever node is free then.
    assert _owner(a, queued.id) == (None, None)
    later = b.due_messages(time.time() + 601, 10)
    assert [m.id for m in later.messages] == [queued.id]


async def test_queue_ids_are_unique_across_nodes_writing_at_once(
    nodes: Callable[..., PostgresStore],
) -> None:
    a, b = nodes("mx-a"), nodes("mx-b")
    queued = await asyncio.gather(
        *(store.enqueue(ENVELOPE, body(n), 0.0) for n in range(60) for store in (a, b))
    )
    ids = [q.id for q in queued]
    assert len(set(ids)) == 120
    assert a.count_messages() == 120


async def test_a_held_message_is_nobodys_to_claim(nodes: Callable[..., PostgresStore]) -> None:
    a = nodes("mx-a")
    queued = await a.enqueue(ENVELOPE, body(1), time.time())
    assert await a.set_hold(queued.id, True)
    assert not await a.claim(queued.id)


async def test_an_admin_change_on_one_node_wakes_the_others_at_once(
    nodes: Callable[..., PostgresStore],
) -> None:
    a, b = nodes("mx-a"), nodes("mx-b")
    queued = await a.enqueue(ENVELOPE, body(1), time.time())
    cursor = b.latest_admin_event_id()
    await b.wait_admin_event(0)  # starts listening
    await _until(lambda: bool(b._rows("SELECT 1 FROM pg_stat_activity"
                                      " WHERE application_name = 'relaymail mx-b listen'"
                                      " AND query LIKE 'LISTEN%%'")))  # fmt: skip
    await b.wait_admin_event(0)  # the wake-up a new listener gives, to read what it missed
    waiting = asyncio.create_task(b.wait_admin_event(3600))

    a.change_now(AdminAction.HOLD, Selection(ids=(queued.id,)))  # the CLI's sync path

    await asyncio.wait_for(waiting, 20)  # woken by NOTIFY, not by its hour-long timeout
    assert [(e.message_id, e.action) for e in b.fetch_admin_events(cursor)] == [
        (queued.id, AdminAction.HOLD)
    ]
    # A daemon waiting for events says it is alive; the CLI (change_now) does not.
    await _until(lambda: b.live_nodes() == ["mx-b"])


def _terminate(store: PostgresStore, role: str) -> int:
    """Cut this node's sessions of `role` from the server side, as a restart of it would."""
    dsn = store._dsn
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s", (f"relaymail {store.node} {role}",),
        ).fetchall()  # fmt: skip
    return len(rows)


async def test_a_lost_connection_fails_one_write_with_queue_full_and_then_reconnects(
    nodes: Callable[..., PostgresStore],
) -> None:
    a = nodes("mx-a")
    await a.enqueue(ENVELOPE, body(1), time.time())
    assert _terminate(a, "writer") == 1

    with pytest.raises(QueueFull, match="queue database"):
        await a.enqueue(ENVELOPE, body(2), time.time())
    await a.enqueue(ENVELOPE, body(3), time.time())

    assert [len(a.load_data(m.id)) for m in a.list_messages()] == [len(body(1)), len(body(3))]


async def test_reads_go_on_after_the_server_cut_every_reader(
    nodes: Callable[..., PostgresStore],
) -> None:
    a = nodes("mx-a")
    queued = await a.enqueue(ENVELOPE, body(1), time.time())
    assert a.count_messages() == 1
    assert _terminate(a, "reader") >= 1

    # A one-statement read is tried again on a new connection; the others once dropped.
    assert a.count_messages() == 1
    assert a.load_pending_message(queued.id) is not None
    assert a.stats().messages == 1


def test_an_unreachable_database_is_named_without_its_password(unused_tcp_port: int) -> None:
    dsn = f"postgresql://relaymail:s3cret@127.0.0.1:{unused_tcp_port}/queue"
    with pytest.raises(QueueUnusable) as caught:
        PostgresStore.open(dsn, node="mx-a")

    assert caught.value.problem is QueueProblem.UNREACHABLE
    assert caught.value.problem.exit_code == 69
    assert caught.value.key == "queue.dsn"
    text = str(caught.value)
    assert text.startswith(f"postgresql relaymail@127.0.0.1:{unused_tcp_port}/queue: ")
    assert "s3cret" not in text


def test_server_conditions_are_queue_full_and_statement_faults_are_not() -> None:
    errors = psycopg.errors
    for condition in (errors.DiskFull(), errors.ReadOnlySqlTransaction(),
                      errors.AdminShutdown(), errors.LockNotAvailable()):  # fmt: skip
        assert isinstance(storage_error(condition), QueueFull)
    for fault in (errors.UndefinedTable(), errors.InFailedSqlTransaction()):
        assert storage_error(fault) is fault
