"""`relaymail newaliases` and `sendmail -bi`: check the aliases file, say what is wrong where.

Nothing is rebuilt (the daemon reads the text file itself and re-reads it
when it changes); the command exists because scripts and package installers
run `newaliases` after editing /etc/aliases, and a mistake should show there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import Config
from ..errors import AliasFileInvalid, AliasFileUnreadable
from ..local import load_aliases
from .exits import EX_DATAERR, EX_NOINPUT, EX_OK


def check_aliases(config: Config, path: Path | None, program: str) -> int:
    """Check `path` (default: [local] aliases) for config.local.domain; the exit status."""
    path = path or config.local.aliases
    if path is None:
        # Package scripts run newaliases whatever the MTA: nothing configured is no failure.
        print(f"{program}: no aliases file configured ([local] aliases): nothing to check")
        return EX_OK
    try:
        aliases = load_aliases(path, config.local.domain)
    except AliasFileUnreadable as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except AliasFileInvalid as exc:
        for problem in exc.problems:
            print(f"{program}: {path}: {problem}", file=sys.stderr)
        return EX_DATAERR
    print(f"{path}: {len(aliases)} aliases for {config.local.domain}")
    return EX_OK
