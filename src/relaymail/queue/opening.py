"""Opening the configured queue: the one place that decides which Store a process gets.

`serve` and `relaymail queue ...` both come here with `[queue]`: SQLite in
`queue.directory`, or PostgreSQL at `queue.dsn` as node `queue.node`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config_queue import QueueBackend, QueueSettings

if TYPE_CHECKING:
    from pathlib import Path

    from .selection import AdminOutcome, Selection
    from .sharded import ShardedQueue
    from .store import AdminAction, Store


def open_store(
    settings: QueueSettings, directory: Path | None = None, worker: int = 0, processes: int = 1
) -> Store:
    """The store of daemon worker `worker` of `processes`; QueueUnusable when it cannot be opened.

    SQLite: the worker's own shard in `directory` (shards.py). PostgreSQL: the one shared
    database, where each worker claims mail under a name of its own (node.worker), since
    a claim names who delivers and two workers of one node must not share one.
    """
    here = settings.directory if directory is None else directory
    if settings.backend is QueueBackend.POSTGRESQL:
        from .files import prepare_directory
        from .postgres import PostgresStore

        assert settings.dsn is not None  # config_queue requires it with this backend
        prepare_directory(here)  # still this node's: maildrop, pid, logs
        node = settings.node if processes == 1 else f"{settings.node}.{worker}"
        return PostgresStore.open(settings.dsn, node=node, lease=settings.lease)
    from .sqlite import SqliteStore

    return SqliteStore.open(here, max_bytes=settings.max_size, shard=worker)


@dataclass(frozen=True, slots=True)
class QueueAdmin:
    """The CLI's queue: the store's reads, and its changes and close as plain calls."""

    store: Store | ShardedQueue
    change: Callable[[AdminAction, Selection], AdminOutcome]
    close: Callable[[], None]
    where: str  # the queue as messages name it: its directory, or its database
    # Whether no daemon delivers from this queue, known for sure (a retry then waits).
    stopped: Callable[[], bool]


def open_admin(settings: QueueSettings) -> QueueAdmin:
    """The store for `relaymail queue ...`, which runs no event loop of its own."""
    if settings.backend is QueueBackend.POSTGRESQL:
        from .postgres import PostgresStore
        from .postgres_connect import describe

        assert settings.dsn is not None
        shared = PostgresStore.open(settings.dsn, node=settings.node, lease=settings.lease)
        where = f"the cluster at {describe(settings.dsn)}"
        return QueueAdmin(shared, shared.change_now, shared.close_now, where,
                          lambda: not shared.live_nodes())  # fmt: skip
    from ..daemon_lock import daemon_status
    from .sharded import ShardedQueue

    local = ShardedQueue(settings.directory)  # every shard of `[server] processes`

    def change(action: AdminAction, selection: Selection) -> AdminOutcome:
        return asyncio.run(local.change(action, selection))

    return QueueAdmin(local, change, lambda: asyncio.run(local.close()), str(settings.directory),
                      lambda: daemon_status(settings.directory).stopped)  # fmt: skip
