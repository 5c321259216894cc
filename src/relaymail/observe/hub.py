"""The one emit point: every event goes to the log and to each subscribed sink.

Logs and metrics are two sinks of the same typed events, so they cannot
disagree. The log record carries the event itself (`record.event`): the JSON
formatter (logs.py) writes its facts as keys, the text formatter its line.

An event is logged without `Logger.log`: it would look up the caller's frame,
build an `extra` dict and copy it into a general-purpose record, for facts the
record already holds. `EventRecord` is that record made directly, and the text
line is rendered only when a handler's formatter asks for the message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from .events import LogEvent
from .render import text_line

Sink = Callable[[LogEvent], None]

_sinks: list[Sink] = []
_loggers: dict[str, logging.Logger] = {}  # by event name: getLogger takes a lock
_STARTED = time.time()


class _Line:
    """The text line, rendered once and only if a formatter asks (the JSON one never does)."""

    __slots__ = ("event", "text")

    def __init__(self, event: LogEvent) -> None:
        self.event = event
        self.text: str | None = None

    def __str__(self) -> str:
        if self.text is None:
            self.text = text_line(self.event)
        return self.text


class EventRecord(logging.LogRecord):
    """A log record of one event, with the attributes every LogRecord has.

    The place of the call is this module's: an event's line names its event, not
    the code that emitted it.
    """

    def __init__(self, name: str, level: int, event: LogEvent) -> None:
        now = time.time()
        self.name = name
        self.msg = _Line(event)
        self.args = None
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.pathname = __file__
        self.filename = "hub.py"
        self.module = "hub"
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.lineno = 0
        self.funcName = "emit"
        self.created = now
        self.msecs = int((now - int(now)) * 1000) + 0.0
        self.relativeCreated = (now - _STARTED) * 1000
        self.thread = threading.get_ident()
        self.threadName = threading.current_thread().name
        self.processName = None
        self.process = os.getpid()
        self.event = event


def emit(event: LogEvent) -> None:
    for sink in tuple(_sinks):
        sink(event)
    log = _loggers.get(event.name)
    if log is None:
        log = _loggers[event.name] = logging.getLogger(f"relaymail.{event.name}")
    level = event.severity()
    if log.isEnabledFor(level):
        log.handle(EventRecord(log.name, level, event))


def subscribe(sink: Sink) -> Callable[[], None]:
    """Add a sink (the daemon's metrics); returns what removes it again."""
    _sinks.append(sink)
    return lambda: _sinks.remove(sink)
