"""Why the queue cannot be opened at start (errors.QueueUnusable carries one)."""

from __future__ import annotations

import enum


class QueueProblem(enum.StrEnum):
    """Why the queue cannot be opened at start."""

    NOT_A_DIRECTORY = "not a directory"  # queue.directory names a file, or goes through one
    CANNOT_WRITE = "cannot write"  # read-only, not writable by this user, immutable
    NOT_A_QUEUE = "not a queue"  # the database is corrupt or not SQLite at all
    NEWER_SCHEMA = "newer schema"  # written by a newer relaymail: left untouched
    UNREACHABLE = "unreachable"  # the queue's database server (queue.dsn) did not answer

    @property
    def exit_code(self) -> int:
        # sysexits.h: EX_CANTCREAT (73) when the files cannot be created or written;
        # EX_CONFIG (78) when queue.directory points at something that is not a queue;
        # EX_UNAVAILABLE (69) when the database server is down: the same file works later.
        if self is QueueProblem.UNREACHABLE:
            return 69
        return 73 if self is QueueProblem.CANNOT_WRITE else 78
