"""The README's table of log events, as data and as a JSON schema the daemon's lines must fit."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
EVERY_EVENT = "every event"
_ROW = re.compile(r"^\| (`[\w-]+`|every event) \| `([\w-]+)` \| (\w+\??) \| .* \|$")
_TYPES = {"string": "string", "integer": "integer", "number": "number", "array": "array"}


def documented_events() -> dict[str, list[tuple[str, str, bool]]]:
    """event -> [(key, JSON type, may be null)] in the README's order."""
    text = README.read_text()
    section = text[text.index("\n## Logs\n") : text.index("\n## Metrics\n")]
    events: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            event, key, kind = match.groups()
            events[event.strip("`")].append((key, _TYPES[kind.rstrip("?")], kind.endswith("?")))
    return dict(events)


def schema() -> dict[str, Any]:
    """One JSON schema for every event line: `event` picks the event's keys, all required."""
    events = documented_events()
    common = events.pop(EVERY_EVENT)

    def properties(keys: list[tuple[str, str, bool]]) -> dict[str, Any]:
        return {
            key: {"type": [kind, "null"] if nullable else kind} for key, kind, nullable in keys
        }

    branches = []
    for event, keys in events.items():
        everything = common + keys
        props = properties(everything)
        props["event"] = {"const": event}
        branches.append({
            "if": {"properties": {"event": {"const": event}}, "required": ["event"]},
            "then": {
                "properties": props,
                "required": [key for key, _, _ in everything],
                "additionalProperties": False,
            },
        })  # fmt: skip
    return {
        "type": "object",
        "required": [key for key, _, _ in common],
        "properties": {"event": {"enum": list(events)}},
        "allOf": branches,
    }
