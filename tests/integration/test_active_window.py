"""The scheduler at scale, on the SQLite queue (and PostgreSQL) with real loopback sinks.

The active window holds at most `active_limit` messages while the queue holds
many more; bodies are read from disk by the delivery (after a restart, after a
refill); one stalled destination holds its own slots and no others; a body that
disappears mid-delivery ends the transaction without the dot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relaymail.body import CHUNK_SIZE, MessageBody
from relaymail.config import Config, parse_config
from relaymail.delivery import DeliveryEngine, Status
from relaymail.destination_share import SharedDestinations
from relaymail.errors import BodyUnreadable
from relaymail.message import Envelope
from relaymail.message_data import IN_MEMORY
from relaymail.queue import SqliteStore, Store
from relaymail.queue.postgres import PostgresStore
from relaymail.scheduler import Scheduler
from tests.integration.conftest import hop
from tests.peers.smtp_server import Action, Script, SMTPPeer, Stage

SENDER = "a@sender.test"


def config(
    tmp_path: Path, routes: dict[str, str], delivery: dict[str, Any] | None = None, **queue: Any
) -> Config:
    return parse_config(
        {
            "delivery": {
                "helo_name": "relay.relaymail.test",
                "command_timeout": 30.0,
                **(delivery or {}),
            },
            "tls": {"policy": {"*": "none"}},
            "routes": {domain: [target] for domain, target in routes.items()},
            "queue": {"directory": str(tmp_path / "queue"), "retry": ["1h"], **queue},
        }
    )


OpenQueue = Callable[[Config], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_queue(request: pytest.FixtureRequest) -> OpenQueue:
    """Opens the queue the tests' configuration names: SQLite, or one node on PostgreSQL."""
    if request.param == "postgresql":
        dsn: str = request.getfixturevalue("postgres_schema_dsn")
        return lambda cfg: PostgresStore.open(dsn, node="relay")
    return lambda cfg: SqliteStore.open(cfg.queue.directory)


@contextlib.asynccontextmanager
async def scheduler(
    store: Store, cfg: Config, shared: SharedDestinations | None = None
) -> AsyncIterator[Scheduler]:
    engine = DeliveryEngine(cfg)
    running = Scheduler(store, engine, cfg.queue, hostname="relay.relaymail.test", shared=shared)
    running.load()
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        await running.stop(0.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.close()


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def message(token: str, filler: bytes = b"") -> bytes:
    return b"Subject: %s\r\n\r\n%sbody\r\n" % (token.encode(), filler)


def subjects(peer: SMTPPeer) -> collections.Counter[str]:
    found = (re.search(rb"^Subject: (\S+)", t.data, re.M) for t in peer.transactions)
    return collections.Counter(m.group(1).decode() for m in found if m is not None)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_window_stays_within_its_limit_and_delivers_every_message_once(
    smtp_peer: Any, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script())
    cfg = config(tmp_path, {"dest.test": hop(sink)}, active_limit=500)
    store = SqliteStore.open(cfg.queue.directory)
    queued = 20_000
    try:
        envelope = Envelope(SENDER, ("u@dest.test",))
        for start in range(0, queued, 1000):
            await asyncio.gather(*(store.enqueue(envelope, message(f"m{n}"), time.time())
                                   for n in range(start, start + 1000)))  # fmt: skip
        async with scheduler(store, cfg) as running:
            # New mail while the window is full waits on disk and is not starved.
            late = [await running.enqueue(envelope, message(f"late{n}")) for n in range(200)]
            assert running.window_stats().size <= 500
            await until(lambda: len(sink.transactions) >= queued + len(late), timeout=540)
            await until(lambda: store.count_messages() == 0)
            stats = running.window_stats()
        assert (stats.peak, stats.limit, stats.size) == (500, 500, 0)
        delivered = subjects(sink)
        assert len(delivered) == queued + len(late)
        assert set(delivered.values()) == {1}
    finally:
        await store.close()


async def test_bodies_are_read_from_disk_after_a_restart_and_after_a_refill(
    smtp_peer: Any, tmp_path: Path, open_queue: OpenQueue
) -> None:
    # Dots at the starts of lines that begin exactly at chunk boundaries, and a CRLF
    # split across one: the receiver must see the data byte for byte.
    filler = bytearray(b"x" * (3 * CHUNK_SIZE))
    for boundary in (CHUNK_SIZE, 2 * CHUNK_SIZE):
        filler[boundary - 2 : boundary + 1] = b"\r\n."
    filler[3 * CHUNK_SIZE - 300 : 3 * CHUNK_SIZE - 298] = b"\r\n"
    bodies = [message("big", bytes(filler) + b"\r\n"), message("one"), message(".two")]
    refused = config(tmp_path, {"dest.test": "127.0.0.1:9"}, active_limit=1)
    store = open_queue(refused)
    try:
        async with scheduler(store, refused) as running:
            ids = [await running.enqueue(Envelope(SENDER, ("u@dest.test",)), b) for b in bodies]
            await until(lambda: store.stats().recipients.deferred == 3)
    finally:
        await store.close()

    sink = await smtp_peer(Script())
    store = open_queue(refused)
    try:
        await store.retry(None)
        live = config(tmp_path, {"dest.test": hop(sink)}, active_limit=1)
        async with scheduler(store, live) as running:
            await until(lambda: len(sink.transactions) == 3)
            await until(lambda: store.count_messages() == 0)
            assert running.window_stats().peak == 1
        received = {t.data.split(b"\r\n\r\n", 1)[1] for t in sink.transactions}
        assert received == {b.split(b"\r\n\r\n", 1)[1] for b in bodies}
        assert len(ids) == len(set(ids)) == 3
    finally:
        await store.close()


async def test_a_stalled_destination_holds_its_slots_while_another_gets_its_mail(
    smtp_peer: Any, tmp_path: Path, open_queue: OpenQueue
) -> None:
    stalled = await smtp_peer(Script(end_of_data_reply=Action.STALL))
    fast = await smtp_peer(Script())
    routes = {"slow.test": hop(stalled), "fast.test": hop(fast)}
    delivery = {"destination_concurrency": 2, "data_timeout": 600.0}
    cfg = config(tmp_path, routes, delivery, max_deliveries=4)
    store = open_queue(cfg)
    try:
        async with scheduler(store, cfg) as running:
            for n in range(6):
                await running.enqueue(Envelope(SENDER, (f"u{n}@slow.test",)), message(f"s{n}"))
            await until(lambda: len(stalled.transactions) == 2)
            for n in range(3):
                await running.enqueue(Envelope(SENDER, (f"u{n}@fast.test",)), message(f"f{n}"))
            # The sink records a message before it answers: wait for the deliveries to end.
            await until(lambda: len(fast.transactions) == 3
                        and running.window_stats().in_flight == 2)  # fmt: skip

            stats = running.window_stats()
            assert (stalled.connections, len(stalled.transactions)) == (2, 2)
            assert all(t.reply_code is None for t in stalled.transactions)  # still waiting
            assert (stats.in_flight, stats.parked) == (2, 4)
    finally:
        await store.close()


async def test_a_message_deleted_before_its_data_is_sent_is_not_delivered_truncated(
    smtp_peer: Any, tmp_path: Path, open_queue: OpenQueue
) -> None:
    # The 354 comes late: the admin deletes the message while the session waits for it.
    # (A body the delivery holds whole goes whole: one of one chunk, read when it starts,
    # or one up to IN_MEMORY handed over at its acceptance. This one is read in chunks.)
    sink = await smtp_peer(Script(delays={Stage.DATA: 5.0}))
    cfg = config(tmp_path, {"dest.test": hop(sink)})
    store = open_queue(cfg)
    large = message("gone", b"z" * (IN_MEMORY + 2 * CHUNK_SIZE) + b"\r\n")
    try:
        async with scheduler(store, cfg) as running:
            doomed = await running.enqueue(Envelope(SENDER, ("u@dest.test",)), large)
            await until(lambda: "DATA" in sink.lines())
            assert await store.delete(doomed)
            await until(lambda: sink.sessions[0].ended)
            assert sink.transactions == []

            sink.script = Script()
            await running.enqueue(Envelope(SENDER, ("v@dest.test",)), message("next"))
            await until(lambda: len(sink.transactions) == 1)
            await until(lambda: store.count_messages() == 0)
            # The store may say so a moment before the delivery task has ended.
            await until(lambda: running.window_stats().size == 0)
    finally:
        await store.close()


async def test_a_body_that_fails_between_chunks_ends_the_session_without_the_dot(
    smtp_peer: Any, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script())
    data = message("partial", b"y" * 3 * CHUNK_SIZE + b"\r\n")

    reads: list[int] = []

    def read_at(offset: int, length: int) -> bytes:
        # The header section and the 8-bit scan read first; the pass that sends fails halfway.
        reads.append(offset)
        if offset >= CHUNK_SIZE and reads.count(0) == 3:
            raise BodyUnreadable("disk I/O error")
        return data[offset : offset + length]

    engine = DeliveryEngine(config(tmp_path, {"dest.test": hop(sink)}))
    try:
        [result] = await engine.deliver(
            Envelope(SENDER, ("u@dest.test",)), MessageBody(len(data), read_at)
        )
    finally:
        await engine.close()
    assert (result.status, result.body_unreadable) == (Status.DEFERRED, True)
    assert sink.transactions == []
    await sink.wait_idle()
    assert sink.lines()[-1] == "DATA"  # then part of the data, then the connection closed


def relaymail_objects() -> tuple[collections.Counter[str], int]:
    """Live objects of relaymail's own classes, by class; and the bytes Python holds."""
    gc.collect()
    objects: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        module = type(o).__module__  # a descriptor, not a name, for some C types
        if isinstance(module, str) and module.startswith("relaymail"):
            objects[f"{module}.{type(o).__qualname__}"] += 1
    return objects, tracemalloc.get_traced_memory()[0]


@pytest.mark.slow
async def test_nothing_in_memory_grows_with_the_queue_beyond_the_window(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 20 domains whose next hop refuses: every message is tried (or held back with
    # its destination down) and deferred an hour. After 1,000 and after 3,000
    # messages went through a window of 20, the scheduler and the store hold the
    # same objects and nearly the same bytes: what each message left behind (a
    # queue id in a set; a blob handle's weak reference, 88 bytes) would show.
    caplog.set_level(logging.CRITICAL, logger="relaymail")  # the capture keeps each record
    domains = [f"d{n}.test" for n in range(20)]
    cfg = config(tmp_path, dict.fromkeys(domains, "127.0.0.1:9"), active_limit=20)
    store = SqliteStore.open(cfg.queue.directory)

    async def queue_and_settle(running: Scheduler, first: int, count: int) -> None:
        for start in range(first, first + count, 100):
            envelopes = [Envelope(SENDER, (f"u{n}@{domains[n % 20]}",))
                         for n in range(start, start + 100)]  # fmt: skip
            await asyncio.gather(*(running.enqueue(e, message(f"m{n}"))
                                   for n, e in enumerate(envelopes, start)))  # fmt: skip
        await until(lambda: not store.stats().recipients.queued and not running.window_stats().size)

    tracemalloc.start()
    try:
        async with scheduler(store, cfg) as running:
            await queue_and_settle(running, 0, 1000)  # caches and pools at their size
            before, bytes_before = relaymail_objects()
            await queue_and_settle(running, 1000, 2000)
            after, bytes_after = relaymail_objects()
            stats = running.window_stats()
        assert store.stats().recipients.deferred == 3000
    finally:
        tracemalloc.stop()
        await store.close()
    assert (stats.peak, stats.limit) == (20, 20)
    grew = {kind: (before[kind], n) for kind, n in after.items() if n > before[kind]}
    assert grew == {}
    # Measured: ~13 bytes a message, most of it events still on their way out.
    assert bytes_after - bytes_before < 40 * 2000
