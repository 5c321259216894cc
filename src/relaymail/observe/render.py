"""An event as one text line or as one JSON object: the same facts, two forms.

Values that come from clients or remote servers (replies, HELO names,
addresses, message-ids) may hold CR, LF, escape sequences or other control
characters: both forms escape them, so no one can start a line of their own.
"""

from __future__ import annotations

import json
from typing import Any

from .events import ADDRESS, ADDRESSES, PLAIN, SECONDS, TRAILER, Field, LogEvent, Value, seconds

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
    trailer: str | None = None  # the first present: a delivery's remote reply, else our reason
    for name, value, form in event.fields():
        if value is None or (value == "" and form is not ADDRESS):
            continue  # absent; an empty address is the null path, shown as <>
        if form is PLAIN and value.__class__ is str:  # most facts: no dispatch, no copy
            assert isinstance(value, str)
            parts.append(f"{name}={value if value.isprintable() else escape(value)}")
        elif form is TRAILER:
            if trailer is None:
                trailer = escape(str(value))
        else:
            parts.append(f"{name}={_text_value(value, form)}")
    line = f"{event.queue_id or NO_QUEUE_ID}: " + ", ".join(parts)
    return line if trailer is None else f"{line} ({trailer})"


def _text_value(value: Value, form: Field) -> str:
    if form is ADDRESS:
        return f"<{escape(str(value))}>"
    if form is ADDRESSES:
        assert isinstance(value, tuple)
        return ",".join(f"<{escape(v)}>" for v in value)
    if form is SECONDS:
        assert isinstance(value, float | int)
        return seconds(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value))


def json_fields(event: LogEvent) -> dict[str, Any]:
    """The event's facts as typed JSON values: `event` and `id` first, null where absent."""
    entry: dict[str, Any] = {"event": event.name, "id": event.queue_id}
    for name, value, _ in event.fields():
        entry[name] = list(value) if isinstance(value, tuple) else value
    return entry


def json_line(entry: dict[str, Any]) -> str:
    # ensure_ascii escapes every control character but DEL, which is escaped here:
    # the line is printable ASCII whatever a client or a server sent.
    return json.dumps(entry, ensure_ascii=True).replace("\x7f", "\\u007f")
