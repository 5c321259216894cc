"""A worker's share of the limits the configuration sets for the whole daemon.

Each of N workers counts only what it does itself (its deliveries, its
connections, its clients' connections as the kernel spread them to it), so
every limit meant for the daemon as a whole is split with `shards.share`:
the shares add up to the configured total, and N workers together never
exceed it. Where a share would be 0 (a total below N) it is 1, so no worker
starves; only then can the workers together go past the total, by N - 1 at
most. Per-session limits (recipients, message size, commands per verb,
AUTH failures of one session, messages per outbound connection) are not
shared: each session lives in one worker; nor are per-client limits, since
each client's connections all go to one worker (inbound/steering.py), except
those of relay_networks, which no per-client limit counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .config import Config
from .listener_settings import ListenerSettings
from .shaping import ShapeEntry, ShapingSettings
from .shards import share

__all__ = ["worker_config", "worker_listener"]

_Part = Callable[[int], int]  # a total to this worker's share of it


def worker_config(config: Config, worker: int, processes: int) -> Config:
    """`config` with worker `worker`'s share of the daemon-wide delivery limits."""
    if processes == 1:
        return config

    def part(total: int) -> int:
        return share(total, processes, worker)

    return dataclasses.replace(
        config,
        queue=dataclasses.replace(
            config.queue,
            max_deliveries=part(config.queue.max_deliveries),
            max_size=_maybe(config.queue.max_size, part),
        ),
        delivery=dataclasses.replace(
            config.delivery,
            destination_concurrency=part(config.delivery.destination_concurrency),
        ),
        recipient_verification=dataclasses.replace(
            config.recipient_verification,
            max_probes=part(config.recipient_verification.max_probes),
        ),
        shaping=_shaping(config.shaping, part),
    )


def worker_listener(settings: ListenerSettings, worker: int, processes: int) -> ListenerSettings:
    """A listener with worker `worker`'s share of its connections.

    Per-client limits stay whole: each client's connections all go to one worker
    (inbound/steering.py), which sees all of them.
    """
    if processes == 1:
        return settings
    return dataclasses.replace(
        settings, max_connections=share(settings.max_connections, processes, worker)
    )


def _shaping(settings: ShapingSettings, part: _Part) -> ShapingSettings:
    def entry(shape: ShapeEntry) -> ShapeEntry:
        return dataclasses.replace(
            shape,
            max_connections=_maybe(shape.max_connections, part),
            max_messages_per_minute=_maybe(shape.max_messages_per_minute, part),
        )

    default = settings.default
    return dataclasses.replace(
        settings,
        default=dataclasses.replace(
            default,
            max_connections=_maybe(default.max_connections, part),
            max_messages_per_minute=_maybe(default.max_messages_per_minute, part),
        ),
        domains={name: entry(shape) for name, shape in settings.domains.items()},
        groups=tuple((group, entry(shape)) for group, shape in settings.groups),
    )


def _maybe(total: int | None, part: _Part) -> int | None:
    """A limit that may be unset (None: no limit, or another key decides)."""
    return None if total is None else part(total)
