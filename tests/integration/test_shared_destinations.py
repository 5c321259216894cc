"""Destinations found down or throttling are shared: node B, with a queue and scheduler of
its own, defers untried the mail to a destination node A found down or was throttled by."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from relaymail.config import Config, parse_config
from relaymail.config_queue import QueueSettings
from relaymail.delivery import RecipientResult, Status
from relaymail.destination_memory import DestinationMemory
from relaymail.destination_share import HoldKind, SharedDestinations
from relaymail.message import Envelope
from relaymail.queue import SqliteStore
from relaymail.queue.store import RecipientState
from relaymail.routing import Destination
from relaymail.scheduler import Scheduler
from relaymail.shaping import Shape
from tests.integration.test_active_window import scheduler, until
from tests.peers.smtp_server import Script

NOW = 1_800_000_000.0


def down(recipient: str) -> RecipientResult:
    """No host answered: a deferral without a reply."""
    return RecipientResult(recipient, Status.DEFERRED, "connection refused")


def answered(recipient: str) -> RecipientResult:
    return RecipientResult(recipient, Status.DELIVERED, "250 ok", reply="250 2.0.0 Ok")


def pair(state_queue: QueueSettings) -> tuple[SharedDestinations, SharedDestinations]:
    return SharedDestinations(state_queue, "a"), SharedDestinations(state_queue, "b")


async def test_a_destination_down_for_one_node_is_held_back_on_the_other(state_queue) -> None:
    share_a, share_b = pair(state_queue)
    memory_a, memory_b = DestinationMemory(share_a), DestinationMemory(share_b)
    key = Destination("down.test", False)
    try:
        memory_a.learn(down("u@down.test"), key, Shape(), NOW + 600, NOW)
        await share_a.sync(NOW)
        await share_b.sync(NOW + 1)
        held = memory_b.held_back("down.test", key, NOW + 1)
        assert held is not None and held.until == NOW + 600
        assert held.reason == f"destination down for a:{os.getpid()} (connection refused)"
        assert memory_b.held_back("other.test", Destination("other.test", False), NOW + 1) is None
        assert memory_b.held_back("down.test", key, NOW + 600) is None  # its time is over

        memory_a.learn(answered("u@down.test"), key, Shape(), NOW + 600, NOW + 2)
        await share_a.sync(NOW + 2)
        await share_b.sync(NOW + 3)
        assert memory_b.held_back("down.test", key, NOW + 3) is None
    finally:
        share_a.close()
        share_b.close()


async def test_a_node_does_not_hold_itself_back_by_its_own_rows(state_queue) -> None:
    share_a, _ = pair(state_queue)
    try:
        share_a.publish("down.test", HoldKind.DOWN, NOW, NOW + 600, "refused")
        await share_a.sync(NOW)
        assert share_a.held("down.test", HoldKind.DOWN, NOW) is None
    finally:
        share_a.close()


async def test_the_later_end_wins_when_two_nodes_report_one_destination(state_queue) -> None:
    share_a, share_b = pair(state_queue)
    third = SharedDestinations(dataclasses.replace(state_queue, node="c"), "c")
    try:
        share_a.publish("slow.test", HoldKind.SUSPENDED, NOW, NOW + 900, "421 later")
        share_b.publish("slow.test", HoldKind.SUSPENDED, NOW, NOW + 300, "421 soon")
        await share_a.sync(NOW)
        await share_b.sync(NOW)
        await third.sync(NOW + 1)
        hold = third.held("slow.test", HoldKind.SUSPENDED, NOW + 1)
        assert hold is not None and (hold.until, hold.reason) == (NOW + 900, "421 later")
    finally:
        for share in (share_a, share_b, third):
            share.close()


def node_config(tmp_path: Path, node: str, peer_port: int) -> Config:
    return parse_config({
        "delivery": {"helo_name": f"{node}.relaymail.test", "command_timeout": 10.0},
        "tls": {"policy": {"*": "none"}},
        "routes": {"throttle.test": [f"127.0.0.1:{peer_port}"]},
        "queue": {"directory": str(tmp_path / node), "retry": ["1h"], "node": node},
        "shaping": {"throttle.test": {"backoff_min": "10m"}},
    })  # fmt: skip


@contextlib.asynccontextmanager
async def node(cfg: Config, shared: SharedDestinations) -> AsyncIterator[Scheduler]:
    store = SqliteStore.open(cfg.queue.directory)
    try:
        async with scheduler(store, cfg, shared) as running:
            yield running
    finally:
        await store.close()


async def test_node_b_does_not_knock_at_a_destination_that_throttled_node_a(
    smtp_peer, tmp_path, state_queue
) -> None:
    sink = await smtp_peer(Script(end_of_data_reply="421 4.7.0 Try again later"))
    share_a, share_b = pair(state_queue)
    envelope = Envelope("a@sender.test", ("u@throttle.test",))
    try:
        async with node(node_config(tmp_path, "a", sink.port), share_a) as a:
            await a.enqueue(envelope, b"Subject: a\r\n\r\nbody\r\n")
            await until(lambda: bool(a.suspensions()))
        await share_a.sync()
        await share_b.sync()
        connections = sink.connections

        async with node(node_config(tmp_path, "b", sink.port), share_b) as b:
            queued = await b.enqueue(envelope, b"Subject: b\r\n\r\nbody\r\n")

            def deferred() -> bool:
                detail = b.store.get_message(queued)
                return detail is not None and detail.recipients[0].state is RecipientState.DEFERRED

            await until(deferred)
            detail = b.store.get_message(queued)
        assert detail is not None
        [recipient] = detail.recipients
        assert recipient.attempts == 0 and recipient.next_attempt > time.time() + 500
        assert recipient.last_error is not None
        assert f"suspended by a:{os.getpid()}: throttled (421 4.7.0" in recipient.last_error
        assert sink.connections == connections  # node B never connected
    finally:
        share_a.close()
        share_b.close()
