"""Logging set-up: one line per event, as text or as JSON."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from .observe import LogEvent
from .observe.render import json_fields, json_line

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Stamp:
    """The date and time of a second, formatted once for all the records made in it."""

    __slots__ = ("_convert", "_format", "_second", "_text")

    def __init__(self, convert: Callable[[float], time.struct_time], pattern: str) -> None:
        self._convert, self._format = convert, pattern
        self._second, self._text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self._format, self._convert(second))
        return self._text


class TextFormatter(logging.Formatter):
    """The text line (TEXT_FORMAT), as logging.Formatter writes it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._stamp = _Stamp(self.converter, self.default_time_format)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._stamp(record.created)},{int(record.msecs):03d}"  # default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        # TEXT_FORMAT written out: what Formatter.format makes of it, without looking
        # the format up again for every line (an event's line is the hot path).
        return f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only
    """A StreamHandler that writes the lines of one turn of the event loop at once.

    A line logged from the thread running the loop is kept until the end of that
    turn and written with the others of the turn: a write and a flush per turn,
    not per line (two or three lines a message; to journald, a wake-up of its own
    each). A line from any other thread, or with no loop running, is written at
    once, after the kept ones. What is kept is lost if the process dies before the
    turn ends (a kill, os._exit); `flush` (logging.shutdown at exit) writes it.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._kept: list[str] = []
        # The loop whose turn's end will write `_kept`. A loop closed before its
        # turn ended never does: the next loop to log schedules its own.
        self._turn: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            self._kept.append(line)
            if loop is None:
                self._write_kept()
            elif self._turn is not loop:
                loop.call_soon(self._end_turn)
                self._turn = loop
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)

    def _end_turn(self) -> None:
        self.acquire()
        try:
            self._turn = None
            self._write_kept()
        except Exception:
            # As emit would (StreamHandler's way), never up into the loop: its
            # exception handler logs, through here, a write that fails again.
            self.handleError(logging.makeLogRecord({"msg": "log lines could not be written"}))
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_kept()
        finally:
            self.release()

    def _write_kept(self) -> None:
        kept, self._kept = "".join(self._kept), []
        if kept:
            self.stream.write(kept)
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()


class JsonFormatter(logging.Formatter):
    """An event (observe/) as its facts, typed; any other record as its message."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _Stamp(time.gmtime, "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self._stamp(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if isinstance(event, LogEvent):
            entry.update(json_fields(event))
        else:
            entry["message"] = record.getMessage()
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
        return json_line(entry)


def setup_logging(level: str, as_json: bool) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown level {level!r}")
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiosmtpd logs every command at INFO; relaymail logs one line per event itself.
    logging.getLogger("mail.log").setLevel(max(numeric, logging.WARNING))
