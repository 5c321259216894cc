"""[queue]: where the queue lives (SQLite beside the daemon, or PostgreSQL shared by nodes),
how long mail may wait, and how much of it the scheduler holds in memory."""

from __future__ import annotations

import enum
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_fields import Reader, choice, count, list_of, path, read_table, seconds, whole
from .config_file import DEFAULT_QUEUE_DIRECTORY
from .config_values import size, text
from .errors import ConfigError
from .retry import RetrySchedule


class QueueBackend(enum.Enum):
    """Which Store holds the queue."""

    SQLITE = "sqlite"  # one file beside the daemon: the embedded default
    POSTGRESQL = "postgresql"  # one database shared by every node of a cluster


@dataclass(frozen=True, slots=True)
class QueueSettings:
    # Relative paths are taken from the working directory at start-up. With PostgreSQL
    # the directory still holds what is per node: the maildrop, the pid file, logs.
    directory: Path = Path(DEFAULT_QUEUE_DIRECTORY)
    backend: QueueBackend = QueueBackend.SQLITE
    # libpq's connection string, a URI or keywords ("host=db dbname=relaymail"); required
    # with backend = "postgresql", refused with sqlite (it would be silently unused).
    dsn: str | None = None
    # This node's name in a cluster: who holds a claim on a message. Default: the host name.
    node: str = field(default_factory=socket.gethostname)
    # How long a node's claim on a message outlives the node (PostgreSQL): a node that
    # dies leaves its messages to the others this long after its last renewal.
    lease: float = 60.0
    lifetime: float = 5 * 86400.0  # then deferred recipients bounce (Postfix: 5d)
    delay_warning: float = 4 * 3600.0  # one warning to the sender, then silence
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    max_deliveries: int = 200  # messages in delivery at once, all destinations
    # Messages the scheduler holds in memory (Postfix's qmgr_message_active_limit):
    # the rest wait on disk and come in by due time as the window drains.
    active_limit: int = 10_000
    # A cap on the queue's size on disk; past it new mail gets 452 4.3.1, as on a
    # full disk (Postfix's queue_minfree, seen from the other side).
    max_size: int | None = None


def parse_queue(raw: Mapping[str, Any]) -> QueueSettings:
    settings = QueueSettings(**read_table(raw, "queue", _QUEUE))
    if settings.backend is QueueBackend.POSTGRESQL and settings.dsn is None:
        raise ConfigError("queue.dsn", 'required with backend = "postgresql"')
    if settings.backend is QueueBackend.SQLITE:
        for key in ("dsn", "lease"):
            if key in raw:
                raise ConfigError(f"queue.{key}", 'only used with backend = "postgresql"')
    return settings


def _retry(value: Any, key: str) -> RetrySchedule:
    return RetrySchedule(list_of(seconds, empty=False)(value, key))


def _dsn(value: Any, key: str) -> str:
    dsn = text(value, key)
    if not dsn.strip():
        raise ConfigError(key, "empty")
    if "\n" in dsn or "\r" in dsn or "\0" in dsn:
        raise ConfigError(key, "must be one line")
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except ProgrammingError as exc:  # its text names the bad keyword, not the password
        raise ConfigError(key, f"not a libpq connection string: {exc}") from None
    return dsn


def _node(value: Any, key: str) -> str:
    name = text(value, key)
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(key, f"{name!r}: 1 to 64 letters, digits, '-', '_' or '.'")
    return name


def _lease(value: Any, key: str) -> float:
    lease = seconds(value, key)
    # Renewed every third of it: below 3 s a busy database would let live claims lapse.
    if not 3.0 <= lease <= 3600.0:
        raise ConfigError(key, "between 3s and 1h")
    return lease


_QUEUE: Mapping[str, Reader] = {
    "directory": path,
    "backend": choice(QueueBackend),
    "dsn": _dsn,
    "node": _node,
    "lease": _lease,
    "lifetime": seconds,
    "delay_warning": seconds,
    "retry": _retry,
    "max_deliveries": count,
    "active_limit": whole(1, 10_000_000),
    "max_size": size,
}
