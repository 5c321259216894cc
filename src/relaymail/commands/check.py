"""`relaymail check` (postfix check, exim -bV): what `serve` would refuse to start on.

The checks are the daemon's own (preflight.py), not a copy; the file itself
was read and checked on the way here (a broken one stops with 78 already).
"""

from __future__ import annotations

import json
import sys

from ..config import Config
from ..preflight import preflight
from .exits import EX_CONFIG, EX_OK


def run_check(config: Config, *, as_json: bool) -> int:
    problems = preflight(config)
    source = str(config.source) if config.source else None
    if as_json:
        listed = [{"key": p.key, "reason": p.reason} for p in problems]
        print(json.dumps({"config": source, "ok": not problems, "problems": listed}))
    else:
        for problem in problems:
            print(f"relaymail: {problem}", file=sys.stderr)
        if not problems:
            listeners = len(config.listeners())
            print(f"{source or 'the embedded defaults'}: serve would start"
                  f" ({listeners} listener(s), queue {config.queue.directory})")  # fmt: skip
    return EX_CONFIG if problems else EX_OK
