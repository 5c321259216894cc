"""Traffic shaping against counting sinks on loopback: the SQLite queue, the real engine.

The sinks (tests/peers/smtp_server.py) measure what the limits promise: the most
connections open at once, the MAILs each connection carried, the messages that
arrived and each one's accepted copies. A rate is checked by count, never by time.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from relaymail import observe
from relaymail.config import Config, parse_config
from relaymail.message import Envelope
from relaymail.queue import SqliteStore
from tests.integration.daemon_process import RELAYMAIL, free_port, run_command
from tests.integration.test_active_window import SENDER, message, scheduler, until
from tests.integration.test_daemon import make_config, start_daemon, swaks, wait_for
from tests.peers.browser import page_parts
from tests.peers.dns_server import MX, A
from tests.peers.smtp_server import Script, SMTPPeer, Stage

# Each message takes a moment at the sink, so deliveries overlap and the limits bite.
SLOW_SINK = Script(delays={Stage.END_OF_DATA: 0.05})


def shaped(tmp_path: Path, shaping: dict[str, Any], **sections: Any) -> Config:
    return parse_config({
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 30.0,
                     **sections.pop("delivery", {})},
        "tls": {"policy": {"*": "none"}},
        "queue": {"directory": str(tmp_path / "queue"), "retry": ["1h"],
                  **sections.pop("queue", {})},
        "shaping": shaping,
        **sections,
    })  # fmt: skip


def to_sink(peer: SMTPPeer) -> dict[str, list[str]]:
    return {"sink.test": [f"127.0.0.1:{peer.port}"]}


def accepted_copies(peer: SMTPPeer) -> dict[bytes, int]:
    """Each message's subject line and how many copies the sink accepted."""
    copies: dict[bytes, int] = {}
    for transaction in peer.transactions:
        if transaction.accepted:
            subject = transaction.data.split(b"\r\n", 1)[0]
            copies[subject] = copies.get(subject, 0) + 1
    return copies


async def queue_up(store: SqliteStore, count: int, *domains: str) -> None:
    """`count` messages, spread over `domains`, all due at once."""
    for n in range(count):
        domain = domains[n % len(domains)]
        await store.enqueue(Envelope(SENDER, (f"u{n}@{domain}",)), message(f"m{n}"), time.time())


async def deliver_all(cfg: Config, count: int, *domains: str) -> None:
    """Queue `count` messages to `domains`, then run the scheduler until the queue is empty."""
    store = SqliteStore.open(cfg.queue.directory)
    try:
        await queue_up(store, count, *domains)
        async with scheduler(store, cfg):
            await until(lambda: store.count_messages() == 0)
    finally:
        await store.close()


async def test_max_connections_is_never_exceeded_at_the_sink(
    smtp_peer: Any, tmp_path: Path
) -> None:
    sink = await smtp_peer(SLOW_SINK)
    cfg = shaped(tmp_path, {"sink.test": {"max_connections": 2}}, routes=to_sink(sink))
    await deliver_all(cfg, 30, "sink.test")
    copies = accepted_copies(sink)
    assert (len(copies), set(copies.values())) == (30, {1})
    assert sink.peak_connections == 2


async def test_a_connection_carries_at_most_max_messages_per_connection(
    smtp_peer: Any, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script())
    cfg = shaped(
        tmp_path, {"*": {"max_connections": 1, "max_messages_per_connection": 3}},
        routes=to_sink(sink), delivery={"connection_idle_time": 30.0},
    )  # fmt: skip
    await deliver_all(cfg, 10, "sink.test")
    assert list(sink.mails_per_session().values()) == [3, 3, 3, 1]
    assert sink.peak_connections == 1
    assert set(accepted_copies(sink).values()) == {1}


async def test_messages_per_minute_stops_the_destination_at_its_count(
    smtp_peer: Any, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script())
    other = await smtp_peer(Script())
    routes = {**to_sink(sink), "other.test": [f"127.0.0.1:{other.port}"]}
    cfg = shaped(tmp_path, {"sink.test": {"max_messages_per_minute": 5}}, routes=routes)
    store = SqliteStore.open(cfg.queue.directory)
    try:
        await queue_up(store, 12, "sink.test", "sink.test", "other.test")
        async with scheduler(store, cfg) as running:
            await until(lambda: len(other.transactions) == 4)
            # The rest wait for the minute to pass: parked, holding no slot, not sent.
            await until(lambda: (running.window_stats().in_flight, running.window_stats().parked)
                        == (0, 3))  # fmt: skip
            assert len(sink.transactions) == 5
        assert store.count_messages() == 3
    finally:
        await store.close()


async def test_a_sink_throttling_every_tenth_message_gets_each_message_exactly_once(
    smtp_peer: Any, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script(every_nth_end_of_data=(10, "421 4.7.0 Try again later")))
    cfg = shaped(
        tmp_path, {"sink.test": {"max_connections": 3, "backoff_min": 0.5, "backoff_max": 1.0}},
        routes=to_sink(sink), queue={"retry": ["1s"]},
    )  # fmt: skip
    events: list[observe.LogEvent] = []
    unsubscribe = observe.subscribe(events.append)
    store = SqliteStore.open(cfg.queue.directory)
    try:
        await queue_up(store, 40, "sink.test")
        async with scheduler(store, cfg) as running:
            await until(lambda: any(isinstance(e, observe.Suspended) for e in events))
            assert {s.label for s in running.suspensions()} <= {"route sink.test"}
            await until(lambda: store.count_messages() == 0, timeout=120)
            assert running.suspensions() == []
    finally:
        unsubscribe()
        await store.close()
    copies = accepted_copies(sink)
    assert (len(copies), set(copies.values())) == (40, {1})
    throttled = [t for t in sink.transactions if t.reply_code == 421]
    suspended = [e for e in events if isinstance(e, observe.Suspended)]
    assert throttled and len(suspended) <= len(throttled)
    assert {(e.destination, e.sign) for e in suspended} == {
        ("route sink.test", "421 service not available")
    }
    untried = [e for e in events if isinstance(e, observe.Delivery) and e.dsn == "4.4.1"]
    why = "route sink.test suspended: throttled (421 4.7.0 Try again later)"
    assert untried and all(why in e.reason for e in untried)


async def test_the_domains_of_one_mx_group_share_its_connections(
    smtp_peer: Any, dns_server: Any, tmp_path: Path
) -> None:
    sink = await smtp_peer(SLOW_SINK)
    dns = dns_server([
        MX("a.test", 10, "mx1.provider.test"), MX("b.test", 10, "mx2.provider.test"),
        A("mx1.provider.test", "127.0.0.1"), A("mx2.provider.test", "127.0.0.1"),
    ])  # fmt: skip
    cfg = shaped(
        tmp_path, {"mx:.provider.test": {"max_connections": 2}},
        delivery={"port": sink.port}, dns={"nameservers": [f"{dns.host}:{dns.port}"]},
        tls={"policy": {"*": "none"}, "mta_sts": False},
    )  # fmt: skip
    await deliver_all(cfg, 30, "a.test", "b.test")
    copies = accepted_copies(sink)
    assert (len(copies), set(copies.values())) == (30, {1})
    assert sink.peak_connections == 2


async def test_a_running_daemon_shows_its_suspension_in_queue_stats_the_page_and_metrics(
    smtp_peer: Any, ca_file: Path, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script(end_of_data_reply="421 4.7.0 Try again later"))
    port, admin_port = free_port(), free_port()
    config = make_config(
        tmp_path, port, ca_file, {"throttle.test": [f"127.0.0.1:{sink.port}"]},
        admin={"address": f"127.0.0.1:{admin_port}"},
        # One worker: each worker suspends for the mail of its own shard (README, "Every
        # core"), and the second message must meet the first one's suspension.
        server={"processes": 1},
        **{"tls.policy": {"*": "none"}, 'shaping."throttle.test"': {"backoff_min": "10m"}},
    )  # fmt: skip
    daemon = await start_daemon(tmp_path, config, port)
    try:
        for n in range(2):
            code, out = await swaks(port, "--from", "a@src.test", "--to", f"u{n}@throttle.test")
            assert code == 0, out
            if n == 0:
                await wait_for(lambda: "relaymail.suspended" in daemon.text())
        untried = "delivery temporarily suspended: route throttle.test suspended: throttled"
        await wait_for(lambda: untried in daemon.text())
        stats = await run_command(RELAYMAIL, "queue", "stats", "--config", str(config))
        as_json = await run_command(RELAYMAIL, "queue", "stats", "--json", "--config", str(config))
        base = f"http://127.0.0.1:{admin_port}"
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(base + "/metrics")).text
            page = (await client.get(base + "/")).text
    finally:
        assert await daemon.stop() == 0
    assert stats[0] == 0
    assert re.search(
        r"^suspended route throttle\.test until \S+Z \(strike 1, 421 service not available\): "
        r"421 4\.7\.0 Try again later$", stats[1], re.M,
    ), stats[1]  # fmt: skip
    [listed] = json.loads(as_json[1])["suspended"]
    assert (listed["destination"], listed["strikes"]) == ("route throttle.test", 1)
    assert listed["until"] - listed["since"] == 600
    suspended = [
        s.value for f in text_string_to_metric_families(metrics) for s in f.samples
        if s.name == "relaymail_suspended_destinations"
    ]  # fmt: skip
    assert suspended == [1.0]
    _, tables = page_parts(page)
    [row] = tables["suspended-destinations"]
    assert (row[0], row[2], row[3]) == ("route throttle.test", "1", "421 service not available")
    assert daemon.text().count("relaymail.suspended") == 1  # logged once
    # The second message was not offered to the sink: deferred untried, until the end.
    assert len(sink.transactions) == 1
