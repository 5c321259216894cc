"""Queue shards and worker processes: who serves which part of the queue, and with what share.

`[server] processes = N` runs N workers that share nothing but the queue
directory (supervisor.py starts them). Each worker owns one queue shard, a
whole SqliteStore with its own group-commit writer: shard 0 is the queue
directory itself, so an existing queue is shard 0 and one process needs no
migration; shard k is the subdirectory `shard-k`. Mail accepted by worker k
is queued, delivered and steered in shard k only, so no two processes ever
write the same database on the hot path.

A shard whose index is N or more was left by a run with more workers and
may still hold mail: worker k mod N adopts it (its messages move into the
worker's own shard at start, queue/sqlite_adopt.py), so changing N never
strands mail.

Limits that the configuration gives for the whole daemon are split so that
the workers' shares add up to no more than the total (`share`); a share of 0
would starve a worker, so it is 1 there, and only there the total can be
exceeded (by at most N - 1).

All of this is one function, `worker_shards`: a backend where every worker
claims from one shared database (PostgreSQL) answers "one shard" there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_SHARDS",
    "WorkerShards",
    "default_processes",
    "present_shards",
    "shard_directory",
    "share",
    "worker_shards",
]

# Queue ids carry their shard in their residue modulo this (queue/ids.py). Kept free of
# imports: the configuration reads it, and `serve`'s supervisor should start fast.
MAX_SHARDS = 256
_SHARD_NAME = re.compile(r"shard-([1-9][0-9]{0,2})")
_DB = "queue.db"


def default_processes() -> int:
    """The CPUs this process may run on (the affinity mask, as a container sets it), 1 at least."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_SHARDS))


def shard_directory(queue_directory: Path, index: int) -> Path:
    return queue_directory if index == 0 else queue_directory / f"shard-{index}"


def present_shards(queue_directory: Path) -> tuple[int, ...]:
    """The shards that hold a queue database, in index order (what the CLI reads)."""
    found = [0] if (queue_directory / _DB).exists() else []
    try:
        names = os.listdir(queue_directory)
    except OSError:
        return tuple(found)
    for name in names:
        match = _SHARD_NAME.fullmatch(name)
        if match and int(match[1]) < MAX_SHARDS and (queue_directory / name / _DB).exists():
            found.append(int(match[1]))
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class WorkerShards:
    """What one worker serves: its own shard, and the ones beyond N it empties into it."""

    index: int
    directory: Path
    adopted: tuple[Path, ...] = ()


def worker_shards(queue_directory: Path, worker: int, processes: int) -> WorkerShards:
    """The shards of worker `worker` of `processes`."""
    adopted = tuple(
        shard_directory(queue_directory, k)
        for k in present_shards(queue_directory)
        if k >= processes and k % processes == worker
    )
    return WorkerShards(worker, shard_directory(queue_directory, worker), adopted)


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split into `parts`: the parts add up to `total` (1 at least)."""
    return max(1, total // parts + (1 if index < total % parts else 0))
