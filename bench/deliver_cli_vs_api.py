"""Issue figure: 1,000 small messages, one `relaymail deliver` process each vs the Python API.

The receiving side is Postfix's smtp-sink on 127.0.0.1 (scripts/install-bench-peers).
The API side runs once sequentially (one message after the other, one engine, so
sessions are reused) and once with 50 deliveries in flight.

    python bench/deliver_cli_vs_api.py [--messages 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relaymail.config import parse_config
from relaymail.delivery import DeliveryEngine, Status
from relaymail.message import Envelope, canonical_data

MESSAGE = canonical_data(b"From: a@bench.test\nSubject: bench\n\n" + b"x" * 1900 + b"\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    process = subprocess.Popen([sink, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"],
                               stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


def run_cli(config: Path, message: Path, count: int) -> float:
    relaymail = str(Path(sys.executable).parent / "relaymail")
    start = time.perf_counter()
    for i in range(count):
        result = subprocess.run(
            [relaymail, "deliver", "--config", str(config), "--from", "a@bench.test",
             "--to", f"u{i}@bench.test", str(message)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"deliver exited {result.returncode}")
    return time.perf_counter() - start


async def run_api(port: int, count: int, in_flight: int) -> float:
    config = parse_config({"delivery": {"helo_name": "bench.relaymail.test"},
                           "routes": {"*": [f"127.0.0.1:{port}"]}})  # fmt: skip
    engine = DeliveryEngine(config)
    slots = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with slots:
            [result] = await engine.deliver(
                Envelope("a@bench.test", (f"u{i}@bench.test",)), MESSAGE
            )
            if result.status is not Status.DELIVERED:
                raise RuntimeError(result.reason)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    await engine.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "relaymail.toml"
            config.write_text(f'[delivery]\nhelo_name = "bench.relaymail.test"\n'
                              f'[routes]\n"*" = ["127.0.0.1:{port}"]\n')  # fmt: skip
            message = Path(tmp) / "message.eml"
            message.write_bytes(MESSAGE)
            n = args.messages
            sequential = asyncio.run(run_api(port, n, 1))
            concurrent = asyncio.run(run_api(port, n, 50))
            cli = run_cli(config, message, n)
    finally:
        sink.terminate()
        sink.wait()
    print(
        f"{n} messages of {len(MESSAGE)} bytes to smtp-sink on 127.0.0.1 ({os.cpu_count()} cores)"
    )
    print(f"  relaymail deliver, one process each: {cli:8.2f} s  {n / cli:8.0f} msg/s")
    print(
        f"  Python API, sequential:              {sequential:8.2f} s  {n / sequential:8.0f} msg/s"
    )
    print(
        f"  Python API, 50 in flight:            {concurrent:8.2f} s  {n / concurrent:8.0f} msg/s"
    )


if __name__ == "__main__":
    main()
