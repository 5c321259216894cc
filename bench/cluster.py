"""The cluster benchmark: one node on SQLite, one on PostgreSQL, two on one PostgreSQL.

The same workload for each, in the same run, on 127.0.0.1 only:

    python bench/cluster.py --messages 200      # a check that it runs: about a minute
    python bench/cluster.py                     # 5,000 x 2 KB per setup (figures of record)
    python bench/cluster.py --rounds 3 --json bench/results/cluster.json

Each setup: a fresh queue (a new SQLite directory, or a new database on a
private PostgreSQL cluster started for the run with fsync on, as in
production), the nodes started, `--connections` pipelined SMTP sessions
submitting `--messages` 2 KB messages (split evenly over the nodes), all
relayed to one `smtp-sink`. Reported per setup, median over the rounds:

- msgs/s: messages arrived at the sink / (last arrival - first submission);
- relaymail CPU ms per message: utime + stime of every `relaymail serve`
  (all nodes), from /proc, over the run;
- PostgreSQL CPU ms per message: the same for the postmaster and all its
  backends (their exited children included), 0 on SQLite.

The figures are only as good as the machine is quiet; run them on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import CpuTimes, _ProcessTree
from scale import Daemon
from sink import SinkSet, smtp_sink_available
from submit import Workload, submit
from tests.peers.postgres import PostgresServer

SETUPS = ("sqlite-1", "postgresql-1", "postgresql-2")


@dataclass(frozen=True, slots=True)
class Result:
    setup: str
    round: int
    messages: int
    seconds: float
    msgs_per_s: float
    relaymail_cpu_ms: float  # per message
    postgres_cpu_ms: float  # per message


def _cpu(pids: list[int]) -> CpuTimes:
    total = CpuTimes(0.0, 0.0)
    for pid in pids:
        tree = _ProcessTree()
        tree.set_root(pid)
        cpu = tree.cpu()
        total = CpuTimes(total.user + cpu.user, total.system + cpu.system)
    return total


async def one_setup(
    setup: str, round_: int, args: argparse.Namespace, work: Path, postgres: PostgresServer
) -> Result:
    backend, nodes = setup.split("-")
    sink = SinkSet([_free_port()])
    await sink.start()
    routes = {"*": f"127.0.0.1:{sink.ports[0]}"}
    dsn = postgres.fresh_database() if backend == "postgresql" else None
    daemons = []
    for n in range(int(nodes)):
        queue: dict[str, object] = {"max_deliveries": 100}
        if dsn is not None:
            queue.update(backend='"postgresql"', dsn=json.dumps(dsn), node=f'"n{n}"')
        daemons.append(Daemon(args.relaymail, work / f"{setup}-{round_}-n{n}", routes, **queue))
    try:
        await asyncio.gather(*(d.start() for d in daemons))
        pids = [d.pid for d in daemons]
        before = _cpu(pids), _cpu([postgres.pid])
        share = args.messages // len(daemons)
        workload = Workload("small", share, 2048, 1)
        started = time.monotonic()
        submitted = await asyncio.gather(
            *(submit("127.0.0.1", d.port, workload, args.connections // len(daemons), 600)
              for d in daemons)
        )  # fmt: skip
        total = share * len(daemons)
        deadline = time.monotonic() + 600
        while sink.count < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seconds = max(sink.last_arrival - started, 1e-9)
        after = _cpu(pids), _cpu([postgres.pid])
        errors = [e for s in submitted for e in s.errors]
        if errors or sink.count < total:
            raise RuntimeError(f"{setup}: {sink.count}/{total} arrived; {errors[:3]}")
    finally:
        await asyncio.gather(*(d.stop() for d in daemons))
        await sink.stop()
    relaymail = (after[0] - before[0]).total
    server = (after[1] - before[1]).total if dsn is not None else 0.0
    return Result(setup, round_, total, round(seconds, 3), round(total / seconds, 1),
                  round(1000 * relaymail / total, 3), round(1000 * server / total, 3))  # fmt: skip


def _free_port() -> int:
    from run import free_ports

    return int(free_ports(1)[0])


def print_table(results: list[Result]) -> None:
    print(f"{'setup':<14} {'msgs/s':>9} {'relaymail ms/msg':>17} {'postgres ms/msg':>16}")
    for setup in SETUPS:
        rows = [r for r in results if r.setup == setup]
        if rows:
            rate = statistics.median(r.msgs_per_s for r in rows)
            ours = statistics.median(r.relaymail_cpu_ms for r in rows)
            theirs = statistics.median(r.postgres_cpu_ms for r in rows)
            print(f"{setup:<14} {rate:>9.1f} {ours:>17.3f} {theirs:>16.3f}")


async def main_async(args: argparse.Namespace) -> int:
    if (missing := smtp_sink_available()) is not None:
        print(f"cluster.py: {missing}", file=sys.stderr)
        return 69
    work = Path(tempfile.mkdtemp(prefix="relaymail-cluster-bench-"))
    results: list[Result] = []
    try:
        with PostgresServer(durable=not args.no_fsync) as postgres:
            for round_ in range(args.rounds):
                # The order rotates each round, so drift in the machine's load spreads out.
                order = SETUPS[round_ % 3 :] + SETUPS[: round_ % 3]
                for setup in order:
                    result = await one_setup(setup, round_, args, work, postgres)
                    print(json.dumps(asdict(result)), flush=True)
                    results.append(result)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--relaymail", default=shutil.which("relaymail") or "relaymail")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the queues and logs")
    parser.add_argument(
        "--no-fsync", action="store_true", help="PostgreSQL without fsync: the disk's share"
    )
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
