"""Queue write and read costs: group commit against one commit per message.

    python bench/queue_commit.py                   # everything, ~1 minute
    python bench/queue_commit.py --admin-messages 0 --count 2000   # quick

Prints one table per section. Every write is durable when it returns (WAL,
synchronous=FULL): the numbers include the fsyncs, so they depend on the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from relaymail.message import Envelope
from relaymail.queue import RecipientState, RecipientUpdate, SqliteStore

ENVELOPE = Envelope("alice@example.org", ("bob@example.com",))


def message(n: int, size: int = 2048) -> bytes:
    head = b"Subject: bench %d\r\n\r\n" % n
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


async def drive(
    workers: int, total: int, operation: Callable[[int], Awaitable[object]]
) -> tuple[float, list[float]]:
    """Run `operation(i)` for i in range(total) from `workers` concurrent tasks."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await operation(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - start, latencies


async def enqueue_section(base: Path, count: int) -> None:
    rows = []
    for max_batch, label in ((1, "one commit per msg"), (1000, "group commit")):
        for workers in (1, 10, 100):
            store = SqliteStore.open(base / f"enqueue-{max_batch}-{workers}", max_batch=max_batch)
            try:
                n = count
                elapsed, latencies = await drive(
                    workers,
                    n,
                    lambda i, store=store: store.enqueue(  # type: ignore[misc]
                        ENVELOPE, message(i), time.time()
                    ),
                )
                rows.append(
                    [
                        label,
                        str(workers),
                        f"{n:,}",
                        f"{n / elapsed:,.0f}",
                        f"{store.commits:,}",
                        f"{n / store.commits:.1f}",
                        micros(statistics.median(latencies)),
                        micros(percentile(latencies, 0.99)),
                    ]
                )
            finally:
                await store.close()
    table(
        "enqueue() of 2 KB messages, durable on return",
        ["mode", "concurrent", "messages", "msg/s", "commits", "msg/commit", "p50 µs", "p99 µs"],
        rows,
    )


async def record_section(base: Path, count: int) -> None:
    rows = []
    for max_batch, label in ((1, "one commit per call"), (1000, "group commit")):
        store = SqliteStore.open(base / f"record-{max_batch}", max_batch=max_batch)
        try:
            queued = await asyncio.gather(
                *(store.enqueue(ENVELOPE, message(i), 0.0) for i in range(count))
            )
            ids = [q.id for q in queued]
            for state, what in (
                (RecipientState.DEFERRED, "deferred (update)"),
                (RecipientState.DELIVERED, "delivered (delete)"),
            ):
                commits = store.commits
                elapsed, latencies = await drive(
                    100,
                    count,
                    lambda i, store=store, ids=ids, state=state: store.record(  # type: ignore[misc]
                        [RecipientUpdate(ids[i], "bob@example.com", state, 1, 60.0, 1.0, "250 ok")]
                    ),
                )
                rows.append(
                    [
                        label,
                        what,
                        f"{count:,}",
                        f"{count / elapsed:,.0f}",
                        f"{count / (store.commits - commits):.1f}",
                        micros(statistics.median(latencies)),
                        micros(percentile(latencies, 0.99)),
                    ]
                )
        finally:
            await store.close()
    table(
        "record() from 100 concurrent deliveries, one recipient per call",
        ["mode", "outcome", "calls", "calls/s", "calls/commit", "p50 µs", "p99 µs"],
        rows,
    )


def timed(function: Callable[[], object], repeat: int) -> float:
    """Best-of-3 mean seconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            function()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


async def read_section(base: Path) -> None:
    store = SqliteStore.open(base / "read")
    rows = []
    try:
        for size in (2 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024):
            queued = await store.enqueue(ENVELOPE, message(0, size), 0.0)
            repeat = max(20, 4_000_000 // size)
            sync = timed(lambda q=queued: store.load_data(q.id), repeat)  # type: ignore[misc]
            chunked = timed(lambda q=queued: store.open_body(q.id).read_all(), repeat)  # type: ignore[misc]
            rows.append([f"{size // 1024} KiB", f"{sync * 1e6:,.1f}", f"{chunked * 1e6:,.1f}"])
    finally:
        await store.close()
    table(
        "reading one body (a delivery reads it in 64 KiB chunks, each its own blob read)",
        ["size", "load_data() µs", "open_body().read_all() µs"],
        rows,
    )


async def admin_section(base: Path, total: int) -> None:
    store = SqliteStore.open(base / "admin")
    try:
        start = time.perf_counter()
        batch = 5000
        ids: list[str] = []
        for first in range(0, total, batch):
            queued = await asyncio.gather(
                *(
                    store.enqueue(ENVELOPE, message(i), float(i))
                    for i in range(first, min(total, first + batch))
                )
            )
            ids += [q.id for q in queued]
        fill = time.perf_counter() - start
        # Defer every tenth message so the state filters have something to find.
        await store.record(
            [
                RecipientUpdate(i, "bob@example.com", RecipientState.DEFERRED, 1, 9e9)
                for i in ids[::10]
            ]
        )
        cursor = store.latest_admin_event_id()
        deferred = RecipientState.DEFERRED
        rows: list[tuple[str, float]] = [
            ("list_messages(50) first page", timed(lambda: store.list_messages(50), 50)),
            (
                f"list_messages(50, offset={total // 2:,})",
                timed(lambda: store.list_messages(50, total // 2), 10),
            ),
            (
                "list_messages(50, state=deferred)",
                timed(lambda: store.list_messages(50, 0, deferred), 50),
            ),
            ("count_messages()", timed(store.count_messages, 10)),
            ("count_messages(deferred)", timed(lambda: store.count_messages(deferred), 10)),
            ("stats()", timed(store.stats, 5)),
            ("get_message(id)", timed(lambda: store.get_message(ids[total // 2]), 1000)),
            (
                "fetch_admin_events() (none new)",
                timed(lambda: store.fetch_admin_events(cursor), 5000),
            ),
            ("load_pending() (all messages)", timed(store.load_pending, 1)),
            (
                "due_messages(now, 1000) (a window refill)",
                timed(lambda: store.due_messages(9e9, 1000), 5),
            ),
        ]
    finally:
        await store.close()
    size = (base / "admin" / "queue.db").stat().st_size
    table(
        f"reads with {total:,} queued messages ({size / 2**20:,.0f} MiB database,"
        f" filled at {total / fill:,.0f} msg/s)",
        ["call", "ms per call"],
        [[name, f"{seconds * 1e3:.3f}"] for name, seconds in rows],
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="writes per scenario")
    parser.add_argument("--admin-messages", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where to create databases (default: a temp dir)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="relaymail-bench-", dir=args.dir))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, databases in {base}")
    await enqueue_section(base, args.count)
    await record_section(base, args.count)
    await read_section(base)
    if args.admin_messages:
        await admin_section(base, args.admin_messages)


if __name__ == "__main__":
    asyncio.run(main())
