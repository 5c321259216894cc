"""Logging set-up: one line per event, as text or as JSON."""

from __future__ import annotations

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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiosmtpd logs every command at INFO; relaymail logs one line per event itself.
    logging.getLogger("mail.log").setLevel(max(numeric, logging.WARNING))
