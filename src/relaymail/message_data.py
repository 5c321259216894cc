"""Message data on its way into the queue, in memory while small and in a temporary file after.

A front door (SMTP DATA, the maildrop pickup) writes the canonical data here
as it arrives, so a 50 MB message never sits in memory whole, let alone in
the two or three copies that joining, unstuffing and header fix-up made of
it. Header fields added in front (Date, Message-ID, a DKIM signature) go into
a small prefix instead of a new copy of everything after them. The queue
reads it back in chunks (`chunks`) inside its write transaction.

Up to IN_MEMORY octets stay in a bytearray (the common 2 KB message costs no
file); past it everything moves to an unnamed temporary file (O_TMPFILE where
the kernel has it) in the queue directory: no name to clean up after a crash,
and on the queue's disk, not in a tmpfs that would be memory again. The file
needs no fsync: the message is durable when the queue's transaction commits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["CHUNK", "IN_MEMORY", "MessageData", "has_dot_line"]

IN_MEMORY: Final = 256 * 1024
CHUNK: Final = 1 << 20
"""Octets per piece read back: the memory one message costs in the queue's writer."""


def has_dot_line(data: bytes) -> bool:
    """Whether a line of `data` starts with ".", which dot-stuffing is for (at its start,
    or after a line end: a bare LF too, as a later conversion makes it CRLF)."""
    return data.startswith(b".") or b"\n." in data


class MessageData:
    """Canonical message data: a prefix of added header fields, then what was written."""

    __slots__ = ("_buffer", "_directory", "_file", "_prefix", "_size", "dot_lines")

    def __init__(self, directory: Path | str | None = None) -> None:
        self._directory = directory
        # False only when the writer knows no line starts with "." (the SMTP intake
        # does): the first delivery then sends it without looking for one to stuff.
        self.dot_lines = True
        self._prefix = b""
        self._buffer: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self._size = 0

    @classmethod
    def of(cls, data: bytes) -> MessageData:
        """Data already in memory, without a copy."""
        message = cls()
        message._prefix = data
        message._size = len(data)
        return message

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        """Append; OSError (disk full) when the temporary file cannot take it."""
        buffer = self._buffer
        if buffer is not None:
            if len(buffer) + len(data) <= IN_MEMORY:
                buffer += data
                self._size += len(data)
                return
            # Closed by close(): it outlives this call, as the queue reads it later.
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115
            self._buffer = None
            self._file.write(buffer)
        if self._file is None:
            raise ValueError("message data is closed")
        self._file.write(data)
        self._size += len(data)

    def prepend(self, data: bytes) -> None:
        """Put header fields in front of everything written so far."""
        self._prefix = data + self._prefix
        self._size += len(data)
        if has_dot_line(data):
            self.dot_lines = True

    def in_memory(self, before: bytes = b"") -> bytes | None:
        """`before` and all of it, as bytes, if it never went to a file (a small message),
        else None. One copy: the queue puts its Received: field in front of every body."""
        if self._buffer is None:
            return None
        if not self._buffer and not before:
            return self._prefix
        return b"".join((before, self._prefix, self._buffer))

    def chunks(self) -> Iterator[bytes]:
        """The data from the start, in pieces of at most CHUNK octets (the prefix first)."""
        stream = self._file
        if self._buffer is None and stream is None:
            raise ValueError("message data is closed")
        if self._prefix:
            yield self._prefix
        if self._buffer is not None:
            if self._buffer:
                yield bytes(self._buffer)
            return
        assert stream is not None
        stream.seek(0)
        while piece := stream.read(CHUNK):
            yield piece

    def head(self) -> bytes:
        """The start of the data through the header section, at most CHUNK octets more or less.

        What the checks of header fields read (Message-ID for the log, From: for the
        login binding) without the body.
        """
        start = b""
        for piece in self.chunks():
            start += piece
            if len(start) >= CHUNK or b"\r\n\r\n" in start:
                break
        return start

    def read(self) -> bytes:
        """All of it in memory: for what needs the whole message (small ones, tests)."""
        return b"".join(self.chunks())

    def close(self) -> None:
        """Drop the temporary file (the kernel frees an unnamed one on close)."""
        self._buffer = None
        if self._file is not None:
            self._file.close()
            self._file = None
