"""Writes the queue could not take yet, kept in memory and retried until it does.

A delivery outcome is the one write whose loss is visible: the next hop has
already said 250, so if "delivered" never reaches the store the recipient is
still pending there and is delivered a second time (at the next start, or
when an admin event reloads the message). So when the store refuses a write
with `QueueFull` (disk full, read-only, I/O error, queue files replaced) the
scheduler does not drop it: the write waits here, in order, and is tried
again with a growing pause until the store takes it. Writes submitted while
older ones wait queue behind them, because an older outcome applied after a
newer one would overwrite it.

The one window left is a restart while writes still wait here: those
outcomes are gone with the process, and their recipients are tried again.
That is the same duplicate as a kill between the remote 250 and the commit
(RFC 5321 6.1 prefers a duplicate to a loss); nothing here can close it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..errors import QueueFull

log = logging.getLogger("relaymail.queue")

FIRST_PAUSE = 0.05  # seconds before the first retry of a refused write
LONGEST_PAUSE = 1.0  # the pause stops doubling here: a freed disk is used within a second
# At shutdown, the longest a refusing store is given: a disk freed by then is used,
# but a queue file deleted under us will not come back however long one waits.
LAST_CHANCE = 5.0

Write = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class _Waiting:
    write: Write
    settles: frozenset[tuple[str, str]]  # (message id, recipient) made final by it


class WriteBacklog:
    """The scheduler's writes, in order; those the store refuses wait and are retried."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._since = 0.0
        self._refusing = False  # between the first refusal and the drain: one log line

    def __len__(self) -> int:
        return len(self._waiting)

    async def write(self, write: Write, *, settles: Iterable[tuple[str, str]] = ()) -> None:
        """Run `write` now, or keep it for later when the store refuses it (never raises QueueFull).

        `settles` names the recipients the write makes final: until it is stored,
        `settling()` reports them, so nobody reloads them from the store as pending.
        """
        waiting = _Waiting(write, frozenset(settles))
        if not self._waiting:
            try:
                await write()
                return
            except QueueFull as exc:
                if not self._refusing:  # else a write beside the first refused one
                    self._refusing, self._since = True, self._clock()
                    log.error(
                        "queue storage refused a write (%s): keeping it in memory and retrying"
                        " until it is stored; recipients already delivered are not tried again",
                        exc,
                    )
        self._waiting.append(waiting)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    def settling(self, message_id: str) -> set[str]:
        """Recipients of `message_id` whose final outcome is still waiting to be stored."""
        return {rcpt for w in self._waiting for mid, rcpt in w.settles if mid == message_id}

    async def close(self, timeout: float) -> None:
        """Give waiting writes up to `timeout` seconds more; say what is lost if they still wait."""
        if self._flusher is not None and not self._flusher.done():
            try:
                async with asyncio.timeout(min(timeout, LAST_CHANCE)):
                    await asyncio.shield(self._flusher)
            except TimeoutError:
                self._flusher.cancel()
        if self._waiting:
            log.error(
                "stopping with %d queue write(s) not stored: their recipients will be"
                " tried again at the next start (possible duplicates)",
                len(self._waiting),
            )

    async def _flush(self) -> None:
        pause = FIRST_PAUSE
        while self._waiting:
            await asyncio.sleep(pause)
            head = self._waiting[0]
            try:
                await head.write()
            except QueueFull:
                pause = min(max(pause * 2, FIRST_PAUSE), LONGEST_PAUSE)
                continue
            except Exception:  # a bug, not the storage: retrying would repeat it forever
                log.exception("a queued write failed and is dropped")
            self._waiting.popleft()
            pause = 0.0  # the store takes writes again: drain the rest at once
            if not self._waiting:
                self._refusing = False
                log.warning(
                    "queue storage takes writes again: the writes kept in memory are stored"
                    " (%.1f s after the first refusal)",
                    self._clock() - self._since,
                )
