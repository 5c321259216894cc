"""Destinations found down or throttling, shared with the other nodes (or processes) that
deliver from the same queue, so node B does not hammer a destination node A just found
down or was throttled by.

Theory of operation. The scheduler keeps deciding from memory (destination_memory.py):
no database on its hot path. This class is beside it: what the memory learns (a domain
down until a retry time, a destination or MX group suspended until a time) is queued
here with `publish` and written by `sync`; `sync` also reads what the others wrote and
is still in force into a snapshot that `held` answers from. The daemon runs `sync`
every `SYNC_EVERY` seconds, so a fact reaches the others within that time, and the
database sees one write and one read of a small table per period, however busy the
node is. The hold a node obeys is the other's until-time and reason, not a copy of its
back-off history: strikes count per node, which only shortens a cluster's suspension
when the nodes disagree, never stretches it.

A row names its writer (`node:pid`), so a node skips its own rows (its memory has them
already), and processes of one node on one SQLite file see each other's. A row whose
until has passed is ignored, and deleted by the next sync that writes; a domain that
answers again removes its "down" row at once, so the others try it too.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .state_db import StateConnection, StateSchema, StateUnavailable, open_state

if TYPE_CHECKING:
    from .config_queue import QueueSettings

log = logging.getLogger("relaymail.queue")

# Seconds between two syncs: how late another node may learn of a hold.
SYNC_EVERY = 2.0

SCHEMA = StateSchema(
    "destinations.db",
    """
    CREATE TABLE IF NOT EXISTS destination_hold (
        name   TEXT NOT NULL,   -- a domain (down), or a suspension's label
        kind   TEXT NOT NULL,   -- HoldKind
        writer TEXT NOT NULL,   -- node:pid
        since  {REAL} NOT NULL,
        until  {REAL} NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (name, kind)
    );
    """,
)


class HoldKind(enum.Enum):
    DOWN = "down"  # no host of the domain answered
    SUSPENDED = "suspended"  # a throttling reply (suspension.py)


@dataclass(frozen=True, slots=True)
class SharedHold:
    name: str
    kind: HoldKind
    writer: str
    since: float
    until: float
    reason: str


class SharedDestinations:
    def __init__(self, location: Path | QueueSettings, node: str) -> None:
        self._db = open_state(location, SCHEMA)
        self.writer = f"{node}:{os.getpid()}"
        self._pending: dict[tuple[str, HoldKind], SharedHold] = {}
        self._answered: set[str] = set()  # domains no longer down, for the next sync
        self._snapshot: dict[tuple[str, HoldKind], SharedHold] = {}

    # -- the scheduler's side: memory only -------------------------------------------

    def held(self, name: str, kind: HoldKind, now: float) -> SharedHold | None:
        """Another writer's hold on `name` in force at `now`, as of the last sync."""
        hold = self._snapshot.get((name, kind))
        return hold if hold is not None and hold.until > now else None

    def publish(self, name: str, kind: HoldKind, since: float, until: float, reason: str) -> None:
        hold = SharedHold(name, kind, self.writer, since, until, reason)
        self._pending[(name, kind)] = hold
        if kind is HoldKind.DOWN:
            self._answered.discard(name)

    def answered(self, domain: str) -> None:
        """`domain` answered: it is down for nobody any more."""
        self._snapshot.pop((domain, HoldKind.DOWN), None)
        self._pending.pop((domain, HoldKind.DOWN), None)
        self._answered.add(domain)

    # -- the database's side -----------------------------------------------------------

    async def run(self) -> None:
        """Sync every SYNC_EVERY seconds until cancelled."""
        while True:
            await self.sync()
            await asyncio.sleep(SYNC_EVERY)

    async def sync(self, now: float | None = None) -> None:
        """Write what was published, read what the others did; a database that cannot be
        reached keeps the writes for the next sync and the last snapshot meanwhile."""
        pending, answered = self._pending, self._answered
        self._pending, self._answered = {}, set()
        try:
            rows = await self._db.run(self._exchange, list(pending.values()), answered, now)
        except StateUnavailable as exc:
            log.warning("destinations shared with other nodes: %s; trying again", exc)
            self._pending = pending | self._pending
            self._answered |= answered
            return
        self._snapshot = {(r.name, r.kind): r for r in rows if r.writer != self.writer}

    def _exchange(
        self, holds: list[SharedHold], answered: set[str], now: float | None
    ) -> list[SharedHold]:
        at = time.time() if now is None else now
        if holds or answered:
            with self._db.transaction() as conn:
                _write(conn, holds, answered, at)
        with self._db.connection() as conn:
            rows = conn.execute(
                "SELECT name, kind, writer, since, until, reason FROM destination_hold"
                " WHERE until > ?",
                (at,),
            ).fetchall()
        return [SharedHold(n, HoldKind(k), w, s, u, r) for n, k, w, s, u, r in rows]

    def close(self) -> None:
        self._db.close()


def _write(conn: StateConnection, holds: list[SharedHold], answered: set[str], now: float) -> None:
    conn.execute("DELETE FROM destination_hold WHERE until <= ?", (now,))
    if answered:
        conn.executemany(
            "DELETE FROM destination_hold WHERE name = ? AND kind = ?",
            [(domain, HoldKind.DOWN.value) for domain in sorted(answered)],
        )
    if not holds:
        return
    # The later end wins: two nodes that both found a destination down agree on the longer.
    conn.executemany(
        """
        INSERT INTO destination_hold (name, kind, writer, since, until, reason)
        VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (name, kind) DO UPDATE SET writer = excluded.writer,
            since = excluded.since, until = excluded.until, reason = excluded.reason
        WHERE excluded.until > destination_hold.until
        """,
        [(h.name, h.kind.value, h.writer, h.since, h.until, h.reason) for h in holds],
    )
