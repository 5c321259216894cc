"""The queue's gauges for /metrics, read at each scrape from the store's own counts.

A collector rather than gauges kept up to date: the queue's state changes in many places
(delivery, the CLI, a restart), and only the store knows it for certain. Every value comes
from counting queries on indexed columns (`Store.stats`, `Store.count_messages`), never
from loading messages; a scrape runs them on a worker thread, off the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..queue.sharded import QueueView
from ..queue.store import RecipientState


class QueueGauges(Collector):
    def __init__(self, store: QueueView) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store = self._store
        stats = store.stats()
        messages = GaugeMetricFamily(
            "relaymail_queue_messages",
            "Messages in the queue: with a recipient not tried yet (queued), with a deferred"
            " recipient (deferred), on hold (held); one message can count in several",
            labels=["state"],
        )
        for state in (RecipientState.QUEUED, RecipientState.DEFERRED):
            messages.add_metric([state.value], store.count_messages(state))
        messages.add_metric(["held"], stats.held)
        yield messages
        recipients = GaugeMetricFamily(
            "relaymail_queue_recipients",
            "Recipients waiting in the queue, by state",
            labels=["state"],
        )
        recipients.add_metric([RecipientState.QUEUED.value], stats.recipients.queued)
        recipients.add_metric([RecipientState.DEFERRED.value], stats.recipients.deferred)
        yield recipients
        yield GaugeMetricFamily(
            "relaymail_queue_oldest_seconds",
            "Age of the oldest message in the queue (0 when it is empty)",
            value=stats.oldest_age or 0.0,
        )
        yield GaugeMetricFamily(
            "relaymail_queue_bytes", "Size of the queued messages", value=stats.total_bytes
        )
