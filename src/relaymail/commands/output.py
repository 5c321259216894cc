"""Standard output that fails as a command's output fails: exit 74, one line, no traceback.

Written to a full disk or a closed pipe (`relaymail queue list | head -1`), print()
raises OSError wherever the command happens to be, and a failed flush at interpreter
exit is a traceback. Through `guarded_stdout` a write that fails raises OutputError,
kept apart from the OSErrors of the command's own work, and `output_failed` makes it
the exit status.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any, TextIO

from .exits import EX_IOERR

__all__ = ["OutputError", "guarded_stdout", "output_failed"]


class OutputError(Exception):
    """Writing standard output failed; kept apart from the OSErrors of the work itself."""

    def __init__(self, fd: int, error: OSError) -> None:
        super().__init__(error.strerror)
        self.fd = fd
        self.errno = error.errno
        self.strerror = error.strerror


class _GuardedOutput(io.RawIOBase):
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return os.write(self._fd, data)
        except OSError as exc:
            raise OutputError(self._fd, exc) from None


def guarded_stdout(stdout: TextIO) -> TextIO:
    """`stdout` whose failed writes raise OutputError; as it is when it has no file
    descriptor (replaced by an embedding program, a test's capture)."""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return stdout
    return io.TextIOWrapper(
        io.BufferedWriter(_GuardedOutput(fd)),
        encoding=stdout.encoding,
        errors=stdout.errors,
        line_buffering=bool(stdout.line_buffering),
    )


def output_failed(exc: OutputError, program: str = "relaymail") -> int:
    """EX_IOERR for `exc`; said on stderr unless the reader just went away."""
    # Whatever is still buffered goes nowhere, so the flush at exit cannot fail again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), exc.fd)
    if exc.errno != errno.EPIPE:  # a reader that went away (| head -1) wanted no more
        print(f"{program}: cannot write output: {exc.strerror}", file=sys.stderr)
    return EX_IOERR
