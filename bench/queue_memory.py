"""Daemon memory with a deferred backlog: N messages queued to a next hop that refuses.

    python bench/queue_memory.py --messages 2000                # quick check
    python bench/queue_memory.py --messages 100000 --destinations 1000

Starts `relaymail serve` in a temporary directory with every destination routed
to a closed loopback port (each connection refused, every message deferred),
submits the messages over SMTP, and prints the daemon's RSS: the peak while they
arrive, once the queue has settled, and after a restart (with the time from the
restart to the listener accepting). A memory check, not a test: the figures
depend on the machine, and the scheduler's active window (`--active-limit`)
is what keeps them flat as the backlog grows.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from submit import Workload, domain, submit

RELAYMAIL = str(Path(sys.executable).parent / "relaymail")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(directory: Path, port: int, destinations: int, active_limit: int) -> Path:
    refusing = free_port()  # nothing listens there: every connection is refused
    routes = "\n".join(f'"{domain(i)}" = ["127.0.0.1:{refusing}"]' for i in range(destinations))
    config = directory / "relaymail.toml"
    config.write_text(
        f'[delivery]\nhelo_name = "relay.bench.test"\n\n'
        f'[queue]\ndirectory = "{directory / "queue"}"\nretry = ["1h"]\n'
        f"active_limit = {active_limit}\n\n"
        f'[tls]\ndefault_level = "none"\nreporting = false\nmta_sts = false\n\n'
        f"[routes]\n{routes}\n\n"
        f'[[listener]]\naddress = "127.0.0.1:{port}"\nrelay_networks = ["127.0.0.0/8"]\n'
        f"max_connections = 100\n"
    )
    return config


async def start(config: Path, port: int, log: Path) -> tuple[asyncio.subprocess.Process, float]:
    began = time.monotonic()
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            RELAYMAIL, "serve", "--config", str(config), stdout=out, stderr=out
        )
    while True:
        if process.returncode is not None:
            raise SystemExit(f"relaymail serve exited with {process.returncode}; see {log}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process, time.monotonic() - began
        except OSError:
            await asyncio.sleep(0.02)


def deferred(queue_db: Path) -> int:
    with sqlite3.connect(queue_db) as conn:
        return int(conn.execute("SELECT count(*) FROM recipient WHERE state = 'deferred'")
                   .fetchone()[0])  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048, help="octets per message")
    parser.add_argument("--destinations", type=int, default=100)
    parser.add_argument("--active-limit", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="relaymail-memory-") as tmp:
        directory = Path(tmp)
        port = free_port()
        config = write_config(directory, port, args.destinations, args.active_limit)
        log = directory / "serve.log"
        process, _ = await start(config, port, log)
        peak = 0.0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mb(process.pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        workload = Workload("deferred", args.messages, args.size, args.destinations)
        result = await submit("127.0.0.1", port, workload, args.connections, timeout=3600)
        queue_db = directory / "queue" / "queue.db"
        while deferred(queue_db) < result.accepted:  # every message tried once
            await asyncio.sleep(0.2)
        settled = rss_mb(process.pid)
        sampler.cancel()
        process.terminate()
        await process.wait()

        process, restart = await start(config, port, log)
        await asyncio.sleep(2.0)  # the first refill and a pass of the dispatcher
        after = rss_mb(process.pid)
        process.terminate()
        await process.wait()

    print(
        f"{result.accepted:,} x {args.size:,} B to {args.destinations:,} destinations"
        f" (refused), active_limit {args.active_limit:,}, {len(result.errors)} errors"
    )
    rows = [
        ("RSS peak while arriving", f"{peak:,.1f} MB"),
        ("RSS once all deferred", f"{settled:,.1f} MB"),
        ("restart to listening", f"{restart:,.2f} s"),
        ("RSS after the restart", f"{after:,.1f} MB"),
    ]
    for name, value in rows:
        print(f"{name:>26}  {value}")


if __name__ == "__main__":
    asyncio.run(main())
