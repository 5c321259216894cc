"""Are the queue's files still the ones the store has open? Checked before each write.

SQLite keeps its files open, so a change made to them from outside is not
seen by it, and each one costs mail:

- `queue.db` (or its `-wal`) deleted, renamed or replaced, or the directory
  removed or renamed: commits go into a file no path names any more. They
  succeed, the client gets 250, and the mail is gone at the next start.
- the immutable or append-only attribute on `-shm`, or the file truncated:
  SQLite's WAL index is a shared memory map of that file, and the next write
  through the map (the writer's commit, or a reader's read mark) is SIGBUS,
  which kills the process with no log line.

The WAL index stays a shared map all the same: `PRAGMA locking_mode =
EXCLUSIVE` would move it to private memory, but it also locks every other
connection out of the database (measured: another process's SELECT gets
"database is locked"), and the `relaymail queue` commands open the queue
beside the running daemon by design. So the store checks
instead, before each group commit and each read: one stat, one fstat and one
ioctl per file, a few microseconds. A change made between the check and the
next write can still get through; nothing short of private memory closes
that window.

The descriptors opened here are kept until the store's connections are
closed: closing any descriptor of a file drops every POSIX lock this process
holds on it, SQLite's included (the trap documented in SQLite's os_unix.c).
"""

from __future__ import annotations

import array
import contextlib
import enum
import fcntl
import logging
import os
import pwd
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import QueueUnavailable, QueueUnusable
from ..queue_problem import QueueProblem

log = logging.getLogger("relaymail.queue")

# linux/fs.h: FS_IOC_GETFLAGS and the two attributes that refuse writes through a map.
_FS_IOC_GETFLAGS = 0x80086601
_FS_APPEND_FL = 0x00000020
_FS_IMMUTABLE_FL = 0x00000010


class FileProblem(enum.StrEnum):
    GONE = "gone"  # the path names nothing (file deleted, directory removed or renamed)
    REPLACED = "replaced"  # the path names another file than the one open
    IMMUTABLE = "immutable"  # immutable or append-only: a write through the map is SIGBUS
    TRUNCATED = "truncated"  # shorter than the part already mapped: SIGBUS on access


_SAYS = {
    FileProblem.GONE: "no longer exists",
    FileProblem.REPLACED: "was replaced by another file",
    FileProblem.IMMUTABLE: "has the immutable or append-only attribute (chattr)",
    FileProblem.TRUNCATED: "was truncated",
}


@dataclass(frozen=True, slots=True)
class FileFault:
    """What is wrong with one of the queue's files."""

    path: Path
    problem: FileProblem

    def __str__(self) -> str:
        return f"{self.path} {_SAYS[self.problem]}"


class QueueFiles:
    """The database, its WAL and its shared-memory index, as they were opened."""

    def __init__(self, db_path: Path) -> None:
        names = (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"))
        self._open: list[tuple[Path, int]] = []
        try:
            for path in names:
                self._open.append((path, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
        except BaseException:
            self.close()
            raise
        self._shm_path = self._open[2][0]
        self._shm_size = os.fstat(self._open[2][1]).st_size
        self._lock = threading.Lock()  # the writer thread and readers check concurrently
        self._fault: FileFault | None = None

    def verify(self, *, shm_only: bool = False) -> None:
        """Raise QueueUnavailable while a file is not the one open; log each change once.

        `shm_only` for reads: reading a replaced or deleted database is harmless,
        only a write through the WAL index's map (a read mark) can be fatal. So a
        read looks at the index alone (a third of the system calls), and at the
        other files only when the fault it knew of was the index's.
        """
        with self._lock:
            if shm_only:
                fault = self._shm_fault()
                if fault is None and (self._fault is None or self._fault.path != self._shm_path):
                    return  # a fault elsewhere is the writer's to find and to log
                if fault is None:
                    fault = self.check()  # the index is back: say what the others are
                    if fault is not None and fault.path != self._shm_path:
                        self._note(fault)
                        return
            else:
                fault = self.check()
            self._note(fault)
        if fault is not None:
            raise QueueUnavailable(f"queue storage unusable: {fault}")

    def _note(self, fault: FileFault | None) -> None:
        if fault == self._fault:
            return
        if fault is not None:
            log.error(
                "queue files changed under relaymail: %s; mail is refused (452) until"
                " it is put back, or relaymail restarted on a new queue",
                fault,
            )
        else:
            log.warning("queue files are back as they were opened: taking mail again")
        self._fault = fault

    def check(self) -> FileFault | None:
        """The first problem found, or None when every path still names its open file."""
        fault = self._shm_fault()  # first: its faults are the fatal ones
        if fault is not None:
            return fault
        for path, fd in self._open[:2]:
            fault = _named_fault(path, fd)
            if fault is not None:
                return fault
        return None

    def _shm_fault(self) -> FileFault | None:
        path, fd = self._open[2]
        fault = _named_fault(path, fd)
        if fault is not None:
            return fault
        size = os.fstat(fd).st_size
        if size < self._shm_size:  # the index only grows while connections are open
            return FileFault(path, FileProblem.TRUNCATED)
        self._shm_size = size
        return None

    def close(self) -> None:
        """Only after every SQLite connection to these files is closed (see the module doc)."""
        for _, fd in self._open:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open.clear()


def _named_fault(path: Path, fd: int) -> FileFault | None:
    """Whether `path` still names the file open as `fd`, and it takes writes through a map."""
    try:
        named = os.stat(path)
    except OSError:  # ENOENT, or ENOTDIR when a file took the directory's name
        return FileFault(path, FileProblem.GONE)
    opened = os.fstat(fd)
    if (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
        return FileFault(path, FileProblem.REPLACED)
    if _attributes(fd) & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        return FileFault(path, FileProblem.IMMUTABLE)
    return None


def _attributes(fd: int) -> int:
    flags = array.array("i", [0])
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
    except OSError:  # a filesystem without attributes (tmpfs before Linux 6.0): none set
        return 0
    return flags[0]


# SQLite primary result codes at open, by what they mean for the admin.
_OPEN_FAILURES = {
    sqlite3.SQLITE_NOTADB: QueueProblem.NOT_A_QUEUE,
    sqlite3.SQLITE_CORRUPT: QueueProblem.NOT_A_QUEUE,
    sqlite3.SQLITE_READONLY: QueueProblem.CANNOT_WRITE,
    sqlite3.SQLITE_CANTOPEN: QueueProblem.CANNOT_WRITE,
    sqlite3.SQLITE_PERM: QueueProblem.CANNOT_WRITE,
    sqlite3.SQLITE_IOERR: QueueProblem.CANNOT_WRITE,
    sqlite3.SQLITE_AUTH: QueueProblem.CANNOT_WRITE,
}


def prepare_directory(directory: Path) -> None:
    """Create the queue directory if it is missing; QueueUnusable if it cannot hold a queue."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise QueueUnusable(directory, QueueProblem.NOT_A_DIRECTORY, "not a directory") from None
    except OSError as exc:
        detail = f"cannot create the queue directory: {exc.strerror or exc}"
        raise QueueUnusable(directory, QueueProblem.CANNOT_WRITE, detail) from None
    # access() and not the mode bits: it also answers for root, whom the bits do
    # not stop, on a read-only filesystem or an immutable directory.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise QueueUnusable(directory, QueueProblem.CANNOT_WRITE, _not_writable(directory))


def _not_writable(directory: Path) -> str:
    """Why access() refused, in the words of what to do about it: most often an admin's
    `mailq` or `relaymail queue` run as another user than root or the daemon's."""
    with contextlib.suppress(OSError):
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "not writable: read-only filesystem"
    with contextlib.suppress(OSError):  # opening it needs read permission, which may lack
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _attributes(fd) & _FS_IMMUTABLE_FL:
                return "not writable: the directory is immutable (chattr -i)"
        finally:
            os.close(fd)
    uid = os.geteuid()
    try:
        owner = directory.stat().st_uid
    except OSError:
        owner = 0
    who = "root" if owner == 0 else f"root or {_user_name(owner)} (the queue's owner)"
    return f"permission denied: not writable by {_user_name(uid)} (uid {uid}); run as {who}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (a container's, a removed user's)
        return str(uid)


def open_failure(path: Path, exc: sqlite3.Error) -> Exception:
    """What an error while opening the database means: QueueUnusable, or `exc` itself."""
    code = getattr(exc, "sqlite_errorcode", None)
    problem = None if code is None else _OPEN_FAILURES.get(code & 0xFF)
    if problem is None:
        return exc
    return QueueUnusable(path, problem, f"{exc} ({getattr(exc, 'sqlite_errorname', '?')})")
