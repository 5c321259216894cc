"""An event as one text line or as one JSON object: the same facts, two forms.

Values that come from clients or remote servers (replies, HELO names,
addresses, message-ids) may hold CR, LF, escape sequences or other control
characters: both forms escape them, so no one can start a line of their own.
"""

from __future__ import annotations

import json
from typing import Any

from .events import Fact, Field, LogEvent, seconds

NO_QUEUE_ID = "NOQUEUE"  # Postfix's word for a line before the message has a queue id


def escape(text: str) -> str:
    """`text` safe inside one log line: every non-printable character as a Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def text_line(event: LogEvent) -> str:
    """`ID: key=value, key=value (trailer)`, Postfix's shape; absent facts left out.

    The event's name is the logger's (`relaymail.delivery`), as Postfix's is its program's.
    """
    parts: list[str] = []
    trailers: list[str] = []
    for fact in event.fields():
        if fact.value is None or fact.value == "":
            continue
        if fact.form is Field.TRAILER:
            trailers.append(escape(str(fact.value)))
        else:
            parts.append(f"{fact.name}={_text_value(fact)}")
    line = f"{event.queue_id or NO_QUEUE_ID}: " + ", ".join(parts)
    # The first of the trailers present: a delivery's remote reply, else our reason.
    return line + (f" ({trailers[0]})" if trailers else "")


def _text_value(fact: Fact) -> str:
    value = fact.value
    if fact.form is Field.ADDRESS:
        return f"<{escape(str(value))}>"
    if fact.form is Field.ADDRESSES:
        assert isinstance(value, tuple)
        return ",".join(f"<{escape(v)}>" for v in value)
    if fact.form is Field.SECONDS:
        assert isinstance(value, float | int)
        return seconds(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value))


def json_fields(event: LogEvent) -> dict[str, Any]:
    """The event's facts as typed JSON values: `event` and `id` first, null where absent."""
    entry: dict[str, Any] = {"event": event.name, "id": event.queue_id}
    for fact in event.fields():
        value = fact.value
        entry[fact.name] = list(value) if isinstance(value, tuple) else value
    return entry


def json_line(entry: dict[str, Any]) -> str:
    # ensure_ascii escapes every control character but DEL, which is escaped here:
    # the line is printable ASCII whatever a client or a server sent.
    return json.dumps(entry, ensure_ascii=True).replace("\x7f", "\\u007f")
