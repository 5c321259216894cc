"""The one emit point: every event goes to the log and to each subscribed sink.

Logs and metrics are two sinks of the same typed events, so they cannot
disagree. The log record carries the event itself (`record.event`): the JSON
formatter (logs.py) writes its facts as keys, the text formatter its line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .events import LogEvent
from .render import text_line

Sink = Callable[[LogEvent], None]

_sinks: list[Sink] = []


class _Line:
    """The text line, rendered only if a formatter asks (the JSON one never does)."""

    __slots__ = ("event",)

    def __init__(self, event: LogEvent) -> None:
        self.event = event

    def __str__(self) -> str:
        return text_line(self.event)


def emit(event: LogEvent) -> None:
    for sink in tuple(_sinks):
        sink(event)
    log = logging.getLogger(f"relaymail.{event.name}")
    level = event.severity()
    if log.isEnabledFor(level):
        log.log(level, "%s", _Line(event), extra={"event": event})


def subscribe(sink: Sink) -> Callable[[], None]:
    """Add a sink (the daemon's metrics); returns what removes it again."""
    _sinks.append(sink)
    return lambda: _sinks.remove(sink)
