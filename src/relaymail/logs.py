"""Logging set-up: one line per event, as text or as JSON."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from .observe import LogEvent
from .observe.render import json_fields, json_line


class JsonFormatter(logging.Formatter):
    """An event (observe/) as its facts, typed; any other record as its message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiosmtpd logs every command at INFO; relaymail logs one line per event itself.
    logging.getLogger("mail.log").setLevel(max(numeric, logging.WARNING))
