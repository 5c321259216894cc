"""The daemon's suspended destinations on disk, for `relaymail queue stats` to show.

The suspensions live in the scheduler's memory (suspension.py); the daemon
writes the ones in force to `suspended.json` in the queue directory each time
one starts (a temporary file, then a rename: a reader never sees half), and
`queue stats` reads the ones not over yet. A file that cannot be written costs
the listing, never a delivery; one that cannot be read lists nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `relaymail queue` imports this module; it need not load the scheduler's
    from .suspension import Suspension

log = logging.getLogger("relaymail.queue")

FILE_NAME = "suspended.json"


@dataclass(frozen=True, slots=True)
class SuspendedEntry:
    destination: str  # a domain, `route KEY`, or `mx:.suffix`
    since: float
    until: float
    strikes: int
    sign: str
    reply: str


def entries(suspensions: Iterable[Suspension]) -> list[SuspendedEntry]:
    return [
        SuspendedEntry(s.label, s.since, s.until, s.strikes, s.sign, s.reason) for s in suspensions
    ]


def write_suspended(directory: Path, suspended: list[SuspendedEntry]) -> None:
    path = directory / FILE_NAME
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps([asdict(e) for e in suspended]))
        # As private as the queue it describes: `queue stats` runs as who may read the queue.
        os.chmod(temporary, 0o600)
        temporary.replace(path)
    except OSError as exc:
        log.warning("%s not written: %s", path, exc.strerror or exc)


def read_all_suspended(queue_directory: Path, now: float) -> list[SuspendedEntry]:
    """What every worker wrote in its shard (shards.py): each suspends for its own mail."""
    from .shards import present_shards, shard_directory

    found: list[SuspendedEntry] = []
    for index in present_shards(queue_directory):
        found += read_suspended(shard_directory(queue_directory, index), now)
    return found


def read_suspended(directory: Path, now: float) -> list[SuspendedEntry]:
    """The suspensions the daemon last wrote that are not over by `now`."""
    try:
        rows = json.loads((directory / FILE_NAME).read_text())
        found = [SuspendedEntry(**row) for row in rows]
    except (OSError, ValueError, TypeError):
        return []
    return [e for e in found if e.until > now]
