"""Is a daemon running on this queue? A POSIX lock on `<queue.directory>/daemon.pid` says.

`relaymail serve` takes a write lock on the file for its whole life and
writes its pid into it (for people; the lock is the truth). The kernel drops
the lock when the process ends, however it ends, so a stale file after a
crash or `kill -9` says nothing. The queue commands ask with F_GETLK, which
tests for the lock without taking one: asking never makes a daemon that
starts at that moment think another one runs. A second `serve` on the same
queue (two daemons would deliver every message twice) finds the lock taken.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import QueueUnusable, RelaymailError
from .queue_problem import QueueProblem

FILENAME = "daemon.pid"
# With [server] processes > 1 each worker also locks every shard it serves (shards.py):
# a worker left by a supervisor killed with -9 must be gone before another takes its shard.
WORKER_FILENAME = "worker.pid"

# struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid, padded to 32 octets.
_FLOCK = "@hhqqi"
_FLOCK_SIZE = 32


class DaemonRunning(RelaymailError):
    """Another daemon holds the queue's lock."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"{directory}: relaymail serve ({who}) already runs on this queue")
        self.pid = pid


@dataclass(frozen=True, slots=True)
class DaemonLock:
    """The lock a running daemon holds; closing the descriptor releases it."""

    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)


def hold_daemon_lock(directory: Path, filename: str = FILENAME, wait: float = 0.0) -> DaemonLock:
    """Take the queue's daemon lock and write our pid; DaemonRunning if it is taken.

    `wait`: seconds to keep trying while another process holds it (one that is ending).
    """
    path = directory / filename
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:  # a symlink (ELOOP), a directory, another user's file
        detail = f"cannot open the daemon lock: {exc.strerror or exc}"
        raise QueueUnusable(path, QueueProblem.CANNOT_WRITE, detail) from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise DaemonRunning(directory, daemon_status(directory, filename).pid) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DaemonLock(path, fd)


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """Whether a daemon runs on a queue: `known` is False when the lock file cannot be read."""

    pid: int | None  # the daemon's, when one runs
    known: bool = True

    @property
    def stopped(self) -> bool:
        """Known to be stopped (not merely unknown)."""
        return self.known and self.pid is None

    def __str__(self) -> str:
        if not self.known:
            return "daemon unknown"
        return "no daemon running" if self.pid is None else f"daemon pid {self.pid}"


def daemon_status(directory: Path, filename: str = FILENAME) -> DaemonStatus:
    """Who holds the queue's daemon lock, asked without taking it."""
    try:
        fd = os.open(directory / filename, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return DaemonStatus(None)
    except OSError:  # another user's queue: say nothing rather than something wrong
        return DaemonStatus(None, known=False)
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0).ljust(_FLOCK_SIZE, b"\0")
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return DaemonStatus(None, known=False)
    finally:
        os.close(fd)
    kind, _, _, _, pid = struct.unpack_from(_FLOCK, answer)
    return DaemonStatus(None if kind == fcntl.F_UNLCK else int(pid))
