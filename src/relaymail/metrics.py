"""Prometheus metrics, fed by the same typed events as the logs (observe/).

`Metrics` owns its registry: the admin listener serves
`prometheus_client.generate_latest(metrics.registry)` and registers its
queue-state collector on it. Labels come from bounded enums only (statuses,
TLS levels, events and actions, rejection reasons): never a domain or an
address, whose number an outsider controls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .observe import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Direction,
    InboundConnection,
    LogEvent,
    OutboundConnection,
    Rejected,
    RejectReason,
)
from .supervisor import MULTIPROCESS_ENV
from .tls.policy import Action, Event, Level

# From a local next hop in milliseconds to a message that waited days in the queue.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600,
                    86400, 5 * 86400)  # fmt: skip


class _SuspendedGauge(Collector):
    """The suspended destinations (of every worker), counted at each scrape: a function
    gauge that prometheus_client's multiprocess files cannot hold."""

    def __init__(self) -> None:
        self.count: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "relaymail_suspended_destinations",
            "Destinations and MX groups suspended now for throttling (their mail waits untried)",
            value=float(self.count()),
        )


class Metrics:
    """The daemon's counters, histograms and gauges; `observe` is its event sink.

    With workers, `registry` is what /metrics serves: the sum of every worker's files.
    """

    def __init__(self) -> None:
        self._shared = bool(os.environ.get(MULTIPROCESS_ENV))
        self.registry = CollectorRegistry()
        if self._shared:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]  # untyped upstream
        # Shared: the metrics are counted into the files only, never served twice.
        own = None if self._shared else self.registry
        self._suspended = _SuspendedGauge()
        self.registry.register(self._suspended)
        self.deliveries = Counter(
            "relaymail_deliveries", "Recipient delivery outcomes, one per recipient and attempt",
            ["status"], registry=own,
        )  # fmt: skip
        self.delivery_seconds = Histogram(
            "relaymail_delivery_seconds",
            "From arrival in the queue to the next hop's acceptance, per delivered recipient",
            buckets=DELIVERY_BUCKETS, registry=own,
        )  # fmt: skip
        self.tls_decisions = Counter(
            "relaymail_tls_decisions", "Decisions of the TLS policy table at the STARTTLS step",
            ["level", "event", "action"], registry=own,
        )  # fmt: skip
        self.inbound_sessions = Gauge(
            "relaymail_inbound_sessions", "SMTP client connections open now",
            registry=own, multiprocess_mode="livesum",
        )  # fmt: skip
        self.inbound_rejections = Counter(
            "relaymail_inbound_rejections", "Commands and connections the inbound side refused",
            ["reason"], registry=own,
        )  # fmt: skip
        self.outbound_connections = Gauge(
            "relaymail_outbound_connections", "Connections to next hops open now (idle ones too)",
            registry=own, multiprocess_mode="livesum",
        )  # fmt: skip
        # Every label value exists from the start, so a rate() has a zero to start from.
        # The children are kept: `labels()` takes a lock and builds a key per call.
        self._delivered = {s: self.deliveries.labels(status=s.value) for s in DeliveryStatus}
        self._rejected = {r: self.inbound_rejections.labels(reason=r.value) for r in RejectReason}
        self._decided: dict[tuple[Level, Event, Action], Counter] = {}

    def watch_suspensions(self, count: Callable[[], int]) -> None:
        """The suspended gauge asks `count` at each scrape."""
        self._suspended.count = count

    def observe(self, event: LogEvent) -> None:
        match event:
            case Delivery(status=status, delay=delay):
                self._delivered[status].inc()
                if status is DeliveryStatus.SENT and delay is not None:
                    self.delivery_seconds.observe(delay)
            case Attempt(step=step) if step is not None:
                cell = (step.level, step.event, step.action)
                decided = self._decided.get(cell)
                if decided is None:  # at most one per cell of the TLS table
                    decided = self._decided[cell] = self.tls_decisions.labels(**tls_labels(*cell))
                decided.inc()
            case Rejected(reason=reason):
                self._rejected[reason].inc()
            case InboundConnection(direction=direction):
                _move(self.inbound_sessions, direction)
            case OutboundConnection(direction=direction):
                _move(self.outbound_connections, direction)


def tls_labels(level: Level, event: Event, action: Action) -> dict[str, str]:
    """The labels of one decision: the enum names in lower case (`tempfail`, `continue_clear`)."""
    return {"level": level.value, "event": event.name.lower(), "action": action.name.lower()}


def _move(gauge: Gauge, direction: Direction) -> None:
    if direction is Direction.OPENED:
        gauge.inc()
    else:
        gauge.dec()


__all__ = ["Metrics", "tls_labels"]
