"""The queue-scale benchmark: what a large queue costs relaymail in memory and time.

One command, one table (workload, value, target), on 127.0.0.1 only:

    python bench/scale.py --size small      # N = 20,000, M = 2,000, 1,000 connections: minutes
    python bench/scale.py                   # the targets' sizes: N = 1,000,000, M = 30,000, 10,000
    python bench/scale.py --relaymail /other/venv/bin/relaymail   # another build: before/after
    python bench/scale.py --only a,b,c      # some of the workloads

Workloads (letters as in the table):

a. N x 2 KB deferred to 1,000 domains whose next hop refuses connections (a
   loopback port nothing listens on, one `[routes]` entry per domain): the
   daemon's PSS over `--steady` seconds after it starts (max and last; RSS).
   The queue is seeded through the build's own `Store.enqueue` in batches of
   10,000 (its group commit), not over SMTP, then marked deferred with retries
   spread over the next hour, as a queue looks after a long outage (1,000,000
   in about 10 minutes on a loaded 2-core machine).
b. Restart to listening with N queued: SIGTERM, start again, time until the
   listener's 220.
c. `relaymail queue stats` and `queue list --limit 100` with N queued (median of 3).
d. Accept rate over SMTP (10 connections, 2 KB, pipelined) with N queued vs an
   empty queue; the target is the ratio.
e. M x 100 KB submitted over SMTP to one destination whose sink waits 2 s
   before answering DATA (Postfix's smtp-sink -w 2), destination_concurrency 20:
   peak PSS (and RSS) while they are submitted and 5 s after.
f. One 50 MB message in, the daemon's peak PSS while it comes (and its
   processes' peak RSS, VmHWM, added up, at the 250). A small
   message to the same (refusing) destination first marks it down, so the
   first attempt of the big one does not read it back: this is the inbound side.
g. C concurrent outbound connections to slow sinks (100 ports, smtp-sink -w 600):
   C messages queued due now, max_deliveries = C; the peak number of
   established connections and the daemon's peak PSS.

The daemon runs its default number of workers (`[server] processes`, written
into its configuration), and its memory is that of all its processes, the
supervisor and the workers: PSS, which counts the pages they share (the
interpreter, the libraries) once, where their RSS counts them in each; a
seeded queue is spread over the workers' shards as they would have accepted it.

The figures are only as good as the machine is quiet. Each workload starts its
own daemon on a fresh queue under `--workdir` (deleted unless `--keep`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import memory_now, process_tree
from run import established_to, free_ports
from sink import SinkSet, smtp_sink_available
from submit import Workload, domain, submit

MB = 1 << 20
DEFAULT_RELAYMAIL = str(Path(sys.executable).parent / "relaymail")


@dataclass(frozen=True, slots=True)
class Sizes:
    queued: int  # N
    backlog: int  # M
    connections: int  # C
    accepted: int  # messages submitted to measure the accept rate
    steady: float  # seconds of RSS sampling in (a)


SIZES = {
    "small": Sizes(queued=20_000, backlog=2_000, connections=1_000, accepted=2_000, steady=10.0),
    "full": Sizes(
        queued=1_000_000, backlog=30_000, connections=10_000, accepted=10_000, steady=30.0
    ),
}


@dataclass(frozen=True, slots=True)
class Row:
    workload: str
    value: str
    target: str


# The seeder runs in the measured build's own interpreter, so it writes the queue
# through that build's Store (schema, triggers, group commit), as the inbound path
# would: the same rows, a Received: trace in front of each body. Batches of 10,000
# share a commit, where SMTP clients would give the daemon a few dozen: a million
# messages in minutes instead of hours. Deferred ones are then marked as one
# refused attempt, due again over the hour after the seeding, as after a long outage.
_SEED = r"""
import asyncio, random, sys, time
from pathlib import Path
from relaymail.message import Envelope
from relaymail.queue.sqlite import SqliteStore
from relaymail.queue.store import RecipientState, RecipientUpdate
from relaymail.shards import shard_directory

BATCH = 10_000

def trace(rcpt, at):
    def header(queue_id):
        return (f"Received: from client.bench.test (client.bench.test [127.0.0.1])\r\n"
                f"\tby mx.scale.bench.test (relaymail) with ESMTP id {queue_id}\r\n"
                f"\tfor <{rcpt}>; {time.strftime('%a, %d %b %Y %H:%M:%S +0000', at)}\r\n"
                ).encode()
    return header

async def main(directory, count, domains, size, deferred, shards):
    # Each shard gets every domain (message n to shard (n // domains) mod shards), each
    # shard's store opened as its worker opens it.
    stores = [SqliteStore.open(shard_directory(Path(directory), k), max_batch=BATCH, shard=k)
              for k in range(shards)]
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n"
    body = (b"Subject: scale\r\n\r\n" + line * (size // len(line) + 1))[:size - 2] + b"\r\n"
    now = time.time()
    at = time.gmtime(now)
    rng = random.Random(1)
    for start in range(0, count, BATCH):
        rcpts = [f"r{n}@d{n % domains}.bench.test" for n in range(start, min(count, start + BATCH))]
        into = [(n // domains) % shards for n in range(start, start + len(rcpts))]
        queued = await asyncio.gather(*(
            stores[k].enqueue(Envelope("bench@client.bench.test", (r,)), body, now,
                              trace=trace(r, at))
            for k, r in zip(into, rcpts)))
        if deferred:
            # Due over the hour after the seeding ends (its end estimated from its pace so
            # far), so a slow seeding does not hand the daemon a quarter of it due at once.
            done = start + len(rcpts)
            ahead = (time.time() - now) / done * (count - done)
            base = time.time() + ahead
            for k, store in enumerate(stores):
                await store.record([
                    RecipientUpdate(m.id, m.envelope.recipients[0], RecipientState.DEFERRED, 1,
                                    base + rng.uniform(60, 3600), last_attempt=now,
                                    last_error="connect failed: Connection refused")
                    for m, shard in zip(queued, into) if shard == k])
        if count > BATCH:
            print(f"seeded {start + len(rcpts):,} of {count:,}", file=sys.stderr, flush=True)
    for store in stores:
        await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                 sys.argv[5] == "deferred", int(sys.argv[6])))
"""


class Daemon:
    """`relaymail serve` of the measured build, on a fresh directory."""

    def __init__(self, relaymail: str, directory: Path, routes: dict[str, str], **queue: object):
        self.relaymail = relaymail
        self.directory = directory
        # The default (the CPUs this process may use), written out so the seeding knows it.
        self.processes = len(os.sched_getaffinity(0))
        self.port = free_ports(1)[0]
        self.config = directory / "relaymail.toml"
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["[delivery]", 'helo_name = "mx.scale.bench.test"', "command_timeout = 900.0",
                 "data_timeout = 900.0"]  # fmt: skip
        if "destination_concurrency" in queue:
            lines.append(f"destination_concurrency = {queue.pop('destination_concurrency')}")
        lines += ["[tls]", "reporting = false", "mta_sts = false", "[queue]",
                  f'directory = "{directory / "queue"}"', 'retry = ["1h"]']  # fmt: skip
        lines += [f"{key} = {value}" for key, value in queue.items()]
        lines += ["[server]", f"processes = {self.processes}"]
        lines += ["[routes]"] + [f'"{name}" = ["{hop}"]' for name, hop in routes.items()]
        lines += ["[[listener]]", f'address = "127.0.0.1:{self.port}"',
                  'relay_networks = ["127.0.0.0/8"]', 'max_message_size = "60M"',
                  "max_connections = 1000"]  # fmt: skip
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> float:
        """Seconds from exec to the listener's 220."""
        started = time.monotonic()
        log = (self.directory / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [self.relaymail, "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}; see {self.directory}")
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                greeting = await reader.readline()
                writer.close()
                if greeting.startswith(b"220"):
                    return time.monotonic() - started
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.process.wait), 60)
            except TimeoutError:
                self.process.kill()
                self.process.wait()

    def command(self, *args: str) -> float:
        started = time.monotonic()
        subprocess.run([self.relaymail, "queue", "--config", str(self.config), *args],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        return time.monotonic() - started

    def vm_hwm_kb(self) -> int:
        """The peak RSS of each process of the daemon (supervisor, workers), added up."""
        total = 0
        for pid in process_tree(self.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return total


class Peak:
    """The daemon's RSS and PSS (all its processes), sampled every 0.1 s while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_kb = self.pss_kb = self.last_pss_kb = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = memory_now(process_tree(self.pid))
            self.rss_kb, self.pss_kb = max(self.rss_kb, now.rss_kb), max(self.pss_kb, now.pss_kb)
            self.last_pss_kb = now.pss_kb
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def seed(relaymail: str, directory: Path, count: int, domains: int, size: int, *,
         deferred: bool, shards: int) -> float:  # fmt: skip
    """Seconds to write `count` messages into the daemon's (stopped) queue, spread over
    the shards of its workers as they would have accepted them."""
    python = str(Path(relaymail).parent / "python")
    (directory / "queue").mkdir(parents=True, exist_ok=True)
    state = "deferred" if deferred else "due"
    started = time.monotonic()
    subprocess.run([python, "-c", _SEED, str(directory / "queue"), str(count), str(domains),
                    str(size), state, str(shards)], check=True)  # fmt: skip
    return time.monotonic() - started


def compile_build(relaymail: str) -> None:
    """Byte-compile the build, as an installation would: the commands' start-up is measured,
    not the compiler (PYTHONDONTWRITEBYTECODE would otherwise compile every module each run)."""
    python = str(Path(relaymail).parent / "python")
    package = subprocess.run([python, "-c", "import relaymail; print(relaymail.__path__[0])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    subprocess.run([python, "-m", "compileall", "-q", package], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def refused_hop() -> str:
    """A loopback port nothing listens on: every connection is refused at once."""
    return f"127.0.0.1:{free_ports(1)[0]}"


def mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


# --------------------------------------------------------------------------- workloads


async def deferred_queue(args: argparse.Namespace, sizes: Sizes, work: Path) -> list[Row]:
    """(a) to (d): one queue of N deferred messages."""
    routes = {domain(i): refused_hop() for i in range(1000)}
    daemon = Daemon(args.relaymail, work / "deferred", routes)
    seeding = seed(args.relaymail, daemon.directory, sizes.queued, 1000, 2048, deferred=True,
                   shards=daemon.processes)
    n = f"{sizes.queued:,}"
    rows = [Row(f"   ({n} x 2 KB seeded through the Store in {seeding:.0f} s)", "", "")]
    await daemon.start()
    peak = Peak(daemon.pid)
    await asyncio.sleep(sizes.steady)
    await peak.stop()
    rows.append(Row(f"a. {n} x 2 KB deferred, daemon PSS over {sizes.steady:.0f} s (max/last; RSS)",
                    f"{mb(peak.pss_kb)} / {mb(peak.last_pss_kb)} ({mb(peak.rss_kb)})",
                    "< 150 MB"))  # fmt: skip
    await daemon.stop()
    restart = await daemon.start()
    rows.append(Row(f"b. restart to listening with {n} queued", f"{restart:.2f} s", "< 2 s"))
    for args_ in (("stats",), ("list", "--limit", "100")):
        seconds = statistics.median(daemon.command(*args_) for _ in range(3))
        rows.append(Row(f"c. queue {' '.join(args_)} with {n} queued", f"{seconds:.2f} s",
                        "< 0.5 s"))  # fmt: skip
    loaded = await accept_rate(daemon, sizes.accepted)
    await daemon.stop()
    empty = Daemon(args.relaymail, work / "empty", routes)
    await empty.start()
    fresh = await accept_rate(empty, sizes.accepted)
    await empty.stop()
    rows.append(Row(f"d. accept rate, {n} queued vs empty",
                    f"{loaded:.0f} vs {fresh:.0f} msg/s ({loaded / fresh:.2f}x)",
                    "within 20 %"))  # fmt: skip
    return rows


async def accept_rate(daemon: Daemon, count: int) -> float:
    workload = Workload("accept", count, 2048, 1000)
    result = await submit("127.0.0.1", daemon.port, workload, 10, timeout=600)
    if result.accepted != count:
        refused = result.errors[:3]
        raise RuntimeError(f"accept rate: {result.accepted} of {count} accepted: {refused}")
    return result.accepted / result.seconds


async def slow_backlog(args: argparse.Namespace, sizes: Sizes, work: Path) -> list[Row]:
    """(e)"""
    port = free_ports(1)[0]
    sinks = SinkSet([port], data_delay=2.0, max_connections=256)
    await sinks.start()
    daemon = Daemon(args.relaymail, work / "backlog", {"*": f"127.0.0.1:{port}"},
                    destination_concurrency=20)  # fmt: skip
    try:
        await daemon.start()
        peak = Peak(daemon.pid)
        workload = Workload("backlog", sizes.backlog, 100 * 1024, 1)
        result = await submit("127.0.0.1", daemon.port, workload, 10, timeout=3600)
        await asyncio.sleep(5)
        await peak.stop()
    finally:
        await daemon.stop()
        await sinks.stop()
    return [Row(f"e. {sizes.backlog:,} x 100 KB to a slow destination ({result.accepted:,}"
                f" accepted in {result.seconds:.0f} s), peak PSS (RSS)",
                f"{mb(peak.pss_kb)} ({mb(peak.rss_kb)})",
                "< 200 MB")]  # fmt: skip


async def one_large_message(args: argparse.Namespace, sizes: Sizes, work: Path) -> list[Row]:
    """(f)"""
    daemon = Daemon(args.relaymail, work / "large", {"*": refused_hop()})
    try:
        await daemon.start()
        await submit("127.0.0.1", daemon.port, Workload("warm-up", 1, 2048, 1), 1, timeout=60)
        await asyncio.sleep(1)  # its attempt fails: the destination is known down
        idle = memory_now(process_tree(daemon.pid)).pss_kb
        peak = Peak(daemon.pid)
        result = await submit("127.0.0.1", daemon.port, Workload("large", 1, 50 * MB, 1), 1,
                              timeout=600)  # fmt: skip
        await peak.stop()
        if result.accepted != 1:
            raise RuntimeError(f"the 50 MB message was not accepted: {result.errors[:3]}")
        hwm = daemon.vm_hwm_kb()
    finally:
        await daemon.stop()
    return [Row(f"f. one 50 MB message in, peak PSS (idle {mb(idle)}; RSS peaks added)",
                f"{mb(peak.pss_kb)} ({mb(hwm)})", "< 120 MB")]  # fmt: skip


async def many_connections(args: argparse.Namespace, sizes: Sizes, work: Path) -> list[Row]:
    """(g)"""
    count = sizes.connections
    ports = free_ports(100)
    per_port = count // 100 + 10
    sinks = SinkSet(ports, data_delay=600.0, max_connections=per_port)
    await sinks.start()
    routes = {domain(i): f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    daemon = Daemon(args.relaymail, work / "connections", routes,
                    destination_concurrency=per_port, max_deliveries=count)  # fmt: skip
    seed(args.relaymail, daemon.directory, count, 100, 2048, deferred=False,
         shards=daemon.processes)
    established = 0
    try:
        await daemon.start()
        peak = Peak(daemon.pid)
        watching = set(ports)
        last_change, deadline = time.monotonic(), time.monotonic() + 600
        while established < count and time.monotonic() - last_change < 20:
            now = established_to(watching)
            if now > established:
                established, last_change = now, time.monotonic()
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        await peak.stop()
    finally:
        await daemon.stop()
        await sinks.stop()
    per_connection = peak.pss_kb / max(1, established)
    return [Row(f"g. {count:,} outbound connections to slow sinks ({established:,} reached), "
                f"PSS ({per_connection:.0f} KB each)", mb(peak.pss_kb), "< 500 MB")]  # fmt: skip


WORKLOADS: dict[str, Callable[[argparse.Namespace, Sizes, Path], Awaitable[list[Row]]]] = {
    "a": deferred_queue,  # also b, c, d
    "e": slow_backlog,
    "f": one_large_message,
    "g": many_connections,
}


def print_table(rows: list[Row]) -> None:
    width = max(len(r.workload) for r in rows)
    value_width = max(len(r.value) for r in rows)
    print(f"{'workload':<{width}}  {'value':<{value_width}}  target")
    for row in rows:
        print(f"{row.workload:<{width}}  {row.value:<{value_width}}  {row.target}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--relaymail", default=DEFAULT_RELAYMAIL,
                        help="the build to measure (its python seeds the queues)")  # fmt: skip
    parser.add_argument("--only", default="a,e,f,g",
                        help="comma-separated workloads: a (with b, c, d), e, f, g")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep queues and logs")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; b, c and d come with a")
    return args


async def main_async(args: argparse.Namespace) -> int:
    sizes = SIZES[args.size]
    # Thousands of sockets in the daemon and the sinks, which inherit this.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if {"e", "g"} & set(args.only.split(",")) and (problem := smtp_sink_available()):
        print(f"scale: {problem}", file=sys.stderr)
        return 69
    compile_build(args.relaymail)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="relaymail-scale-"))
    rows: list[Row] = []
    try:
        for name in args.only.split(","):
            rows += await WORKLOADS[name](args, sizes, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"relaymail scale benchmark, --size {args.size} ({args.relaymail}, "
          f"{os.cpu_count()} CPUs, {socket.gethostname()})")  # fmt: skip
    print_table(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
