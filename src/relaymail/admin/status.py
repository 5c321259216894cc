"""What the status page shows, gathered and summed up: pure functions over typed rows.

`gather` runs on a worker thread (every read is SQLite); the sums below it are pure,
so each can be tested with rows made by hand.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..delivery.results import Status
from ..queue.sharded import QueueView
from ..queue.store import MessageDetail, PendingBreakdown, QueueStats
from ..suspension_file import SuspendedEntry
from .history import (
    ClearReason,
    DeliveryHistory,
    HistoryEntry,
    HourCount,
    SessionCount,
    SessionTls,
)

HOURS = 24
RECENT = 50  # deliveries listed on the page
DOMAINS = 50  # destination domains in the TLS table, the busiest first
TOP = 10  # rows of each queue top list


@dataclass(frozen=True, slots=True)
class HourBar:
    start: float  # the hour's first second (UTC epoch)
    counts: Mapping[Status, int]


@dataclass(frozen=True, slots=True)
class ClearCause:
    reason: ClearReason | None  # None: the reason was not recorded
    policy: str
    count: int


@dataclass(frozen=True, slots=True)
class DomainPosture:
    """Deliveries to one domain over the last day, by the TLS of the session that carried them."""

    domain: str
    verified: int
    encrypted: int
    clear: int
    causes: tuple[ClearCause, ...] = field(default_factory=tuple)  # why clear, most first

    @property
    def total(self) -> int:
        return self.verified + self.encrypted + self.clear


@dataclass(frozen=True, slots=True)
class StatusView:
    now: float
    stats: QueueStats
    pending: PendingBreakdown
    hours: tuple[HourBar, ...]
    posture: tuple[DomainPosture, ...]
    recent: tuple[HistoryEntry, ...]
    suspended: tuple[SuspendedEntry, ...] = ()  # destinations throttling us, ending first first


@dataclass(frozen=True, slots=True)
class MessageView:
    queue_id: str
    queued: MessageDetail | None  # None: no longer in the queue (every recipient final)
    attempts: tuple[HistoryEntry, ...]


def gather(
    store: QueueView, history: DeliveryHistory, now: float, suspended: Iterable[SuspendedEntry] = ()
) -> StatusView:
    since = now - HOURS * 3600
    return StatusView(
        now=now,
        stats=store.stats(now),
        pending=store.pending_breakdown(TOP),
        hours=hour_bars(history.hourly(since), now),
        posture=posture(history.sessions(since)),
        recent=tuple(history.recent(RECENT)),
        suspended=tuple(suspended),
    )


def gather_message(store: QueueView, history: DeliveryHistory, queue_id: str) -> MessageView | None:
    queued = store.get_message(queue_id)
    attempts = tuple(history.of_message(queue_id))
    if queued is None and not attempts:
        return None
    return MessageView(queue_id, queued, attempts)


def hour_bars(rows: Iterable[HourCount], now: float) -> tuple[HourBar, ...]:
    """One bar per hour for the last HOURS hours, the current hour last; empty hours included."""
    last = int(now // 3600)
    counts: dict[int, dict[Status, int]] = defaultdict(dict)
    for row in rows:
        if last - HOURS < row.hour <= last:
            counts[row.hour][row.status] = counts[row.hour].get(row.status, 0) + row.count
    return tuple(
        HourBar(hour * 3600.0, {s: counts[hour].get(s, 0) for s in Status})
        for hour in range(last - HOURS + 1, last + 1)
    )


def posture(rows: Iterable[SessionCount]) -> tuple[DomainPosture, ...]:
    tallies: dict[str, dict[SessionTls, int]] = defaultdict(lambda: defaultdict(int))
    causes: dict[str, dict[tuple[ClearReason | None, str], int]] = defaultdict(
        lambda: defaultdict(int)
    )
    for row in rows:
        tallies[row.domain][row.tls] += row.count
        if row.tls is SessionTls.CLEAR:
            causes[row.domain][(row.clear_reason, row.policy)] += row.count
    result = [
        DomainPosture(
            domain,
            counts[SessionTls.VERIFIED],
            counts[SessionTls.ENCRYPTED],
            counts[SessionTls.CLEAR],
            tuple(
                ClearCause(reason, policy, n)
                for (reason, policy), n in sorted(
                    causes[domain].items(), key=lambda item: (-item[1], str(item[0]))
                )
            ),
        )
        for domain, counts in tallies.items()
    ]
    result.sort(key=lambda p: (-p.total, p.domain))
    return tuple(result[:DOMAINS])
