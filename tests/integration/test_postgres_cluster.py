"""`relaymail serve` on PostgreSQL: one node end to end, and three nodes of which one dies.

Real processes, a real PostgreSQL (tests/peers/postgres.py), real SMTP in
(swaks, aiosmtplib) and out (a loopback sink that counts what it receives).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command, write_toml
from tests.peers.postgres import PostgresServer
from tests.peers.smtp_server import Script, SMTPPeer, SMTPPeerFactory, Stage
from tests.peers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(180)

QUEUED = re.compile(r"queued as (\w+)")


def node_config(
    tmp_path: Path, node: str, port: int, dsn: str, ca_file: Path, sink: SMTPPeer,
    idle: float = 5.0, **queue: Any,
) -> Path:  # fmt: skip
    directory = tmp_path / node
    directory.mkdir(exist_ok=True)
    return write_toml(directory / "relaymail.toml", {
        "delivery": {"helo_name": f"{node}.relaymail.test", "command_timeout": 5.0,
                     "connection_idle_time": idle},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": directory / "queue", "backend": "postgresql", "dsn": dsn,
                  "node": node, **queue},
        "routes": {"dest.test": [hop(sink)]},
        "listener": [{"address": f"127.0.0.1:{port}", "mode": "relay",
                      "relay_networks": ["127.0.0.0/8"]}],
    })  # fmt: skip


async def until(condition: Any, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_one_node_on_postgresql_queues_delivers_and_the_cli_steers_it(
    smtp_peer: SMTPPeerFactory, ca_file: Path, tmp_path: Path, postgres_dsn: str
) -> None:
    sink = await smtp_peer(Script(rcpt_reply="451 4.7.1 greylisted"))
    port = free_port()
    # A short connection cache: the sink's new script applies to new connections only.
    config = node_config(tmp_path, "mx1", port, postgres_dsn, ca_file, sink, idle=0.2,
                         retry=["1h"])  # fmt: skip
    daemon = Daemon(config, port, tmp_path / "mx1.log")
    await daemon.start()
    # The CLI of another node: the same [queue], another name.
    other = node_config(tmp_path, "mx2", free_port(), postgres_dsn, ca_file, sink)
    queue = [RELAYMAIL, "queue", "--config", str(other), "--json"]
    try:
        code, out, err = await run_command(
            "swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test",
            "--from", "a@src.test", "--to", "u@dest.test", "--header", "Subject: pg",
        )  # fmt: skip
        assert code == 0, out + err
        found = QUEUED.search(out)
        assert found, out
        queue_id = found[1]
        await until(lambda: "status=deferred" in daemon.text())

        code, out, _ = await run_command(*queue, "list")
        [listed] = json.loads(out)["messages"]
        assert (listed["id"], listed["recipients"]["deferred"]) == (queue_id, 1)
        code, out, _ = await run_command(*queue, "show", queue_id)
        assert "451 4.7.1 greylisted" in json.loads(out)["recipients"][0]["last_reply"]

        sink.script = Script()  # the greylisting is over
        code, out, err = await run_command(*queue, "retry", queue_id)
        assert code == 0, err  # a node of the cluster is alive: it delivers now
        await until(lambda: [t for t in sink.transactions if t.recipients])
        await until(lambda: "status=sent" in daemon.text())
        code, out, _ = await run_command(*queue, "stats")
        assert json.loads(out)["messages"] == 0
        sink.script = Script(rcpt_reply="451 4.7.1 greylisted")
        code, out, err = await run_command(
            "swaks", "--server", f"127.0.0.1:{port}", "--from", "a@src.test", "--to", "v@dest.test"
        )
        assert code == 0, out + err
        await until(lambda: daemon.text().count("status=deferred") == 2)
    finally:
        assert await daemon.stop() == 0
    [delivered] = [t for t in sink.transactions if t.recipients]
    assert delivered.recipients == ("u@dest.test",) and b"Subject: pg" in delivered.data
    # With every node stopped, a retry is kept for their start, as postqueue -f says.
    code, _, err = await run_command(*queue, "retry", "--all")
    assert code == 69 and "no relaymail serve runs on the cluster at postgresql" in err


async def swaks(port: int, to: str) -> str:
    _, out, err = await run_command(
        "swaks", "--server", f"127.0.0.1:{port}", "--from", "a@src.test", "--to", to
    )
    return out + err


async def test_a_node_cut_off_from_its_database_answers_452_and_accepts_again_after(
    smtp_peer: SMTPPeerFactory, ca_file: Path, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    sink = await smtp_peer(Script())
    dsn = postgres_server.fresh_database()
    proxy = TcpProxy("127.0.0.1", postgres_server.port)  # the network to the database
    await proxy.start()
    proxied = dsn.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    port = free_port()
    config = node_config(tmp_path, "mx1", port, proxied, ca_file, sink, retry=["1s"])
    daemon = Daemon(config, port, tmp_path / "mx1.log")
    await daemon.start()
    try:
        assert "queued as" in await swaks(port, "first@dest.test")
        await proxy.cut()
        refused = await swaks(port, "second@dest.test")
        assert "452 4.3.1" in refused and "queued as" not in refused
        await proxy.resume()
        async with asyncio.timeout(60):  # the writer connects again for the next batch
            while "queued as" not in await swaks(port, "third@dest.test"):
                await asyncio.sleep(0.2)
        await until(lambda: len(sink.transactions) == 2)
    finally:
        assert await daemon.stop() == 0
        await proxy.cut()
    # The first one was queued before the cut; its delivery waited for the database.
    delivered = sorted(r for t in sink.transactions for r in t.recipients)
    assert delivered == ["first@dest.test", "third@dest.test"]
    assert "reason=queue-unavailable, code=452" in daemon.text()


@dataclass
class Run:
    """What the clients got accepted, and by which node; what the sink received."""

    accepted: dict[str, int] = field(default_factory=dict)  # X-Seq -> node index
    refused: int = 0  # submissions a node did not take (dead, 4xx): sent to another


async def submit(run: Run, ports: list[int], client: int, count: int) -> None:
    """One SMTP client: `count` messages, round robin over the nodes; the next if one fails."""
    for n in range(count):
        seq = f"{client}-{n}"
        message = (f"From: c{client}@src.test\r\nTo: u@dest.test\r\nX-Seq: {seq}\r\n"
                   f"Subject: {seq}\r\n\r\nmessage {seq}\r\n")  # fmt: skip
        for attempt in range(30):
            node = (client + n + attempt) % len(ports)
            try:
                await aiosmtplib.send(
                    message, sender=f"c{client}@src.test", recipients=["u@dest.test"],
                    hostname="127.0.0.1", port=ports[node], timeout=10, start_tls=False,
                )  # fmt: skip
            except (aiosmtplib.SMTPException, OSError):
                run.refused += 1
                await asyncio.sleep(0.05 * (attempt // len(ports)))
                continue
            run.accepted[seq] = node
            break


def delivered_seqs(sink: SMTPPeer) -> list[str]:
    seqs = []
    for transaction in sink.transactions:
        found = re.search(rb"X-Seq: (\S+)", transaction.data)
        if transaction.recipients and found:
            seqs.append(found[1].decode())
    return seqs


@pytest.mark.slow
async def test_three_nodes_one_killed_twice_lose_nothing(
    smtp_peer: SMTPPeerFactory, ca_file: Path, tmp_path: Path, postgres_dsn: str,
    record_property: Any,
) -> None:  # fmt: skip
    # A slow end of data keeps deliveries in flight when a node is killed.
    sink = await smtp_peer(Script(delays={Stage.END_OF_DATA: 0.05}))
    names = ["n1", "n2", "n3"]
    ports = [free_port() for _ in names]
    daemons = [
        Daemon(node_config(tmp_path, name, port, postgres_dsn, ca_file, sink,
                           lease="3s", retry=["1s"]), port, tmp_path / f"{name}.log")
        for name, port in zip(names, ports, strict=True)
    ]  # fmt: skip
    await asyncio.gather(*(d.start(timeout=60) for d in daemons))
    run = Run()
    clients = [asyncio.create_task(submit(run, ports, c, 30)) for c in range(4)]
    victim = daemons[0]
    try:
        await until(lambda: len(run.accepted) >= 30)
        await victim.kill()  # kill -9, deliveries in flight
        await until(lambda: len(run.accepted) >= 55)
        await victim.start(timeout=60)  # back, under the same name: its claims are its own
        await until(lambda: len(run.accepted) >= 80)
        await victim.kill()  # and dies again, for good
        await asyncio.gather(*clients)
        accepted = set(run.accepted)
        await until(lambda: accepted <= set(delivered_seqs(sink)), timeout=90)
        # What the dead node delivered but had not recorded is delivered again, then gone.
        stats = [RELAYMAIL, "queue", "--config", str(daemons[1].config), "--json", "stats"]
        async with asyncio.timeout(60):
            while json.loads((await run_command(*stats))[1])["messages"]:
                await asyncio.sleep(0.5)
    finally:
        for task in clients:
            task.cancel()
        for daemon in daemons[1:]:
            await daemon.stop()
    seqs = delivered_seqs(sink)
    lost = accepted - set(seqs)
    duplicates = len(seqs) - len(set(seqs))
    report = {"accepted": len(accepted), "delivered": len(set(seqs)), "lost": len(lost),
              "duplicates": duplicates, "refused_and_resent": run.refused}  # fmt: skip
    record_property("cluster_kill", json.dumps(report))
    print("3-node kill test:", json.dumps(report))
    assert len(accepted) == 120 and lost == set()
