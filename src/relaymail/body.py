"""The message data as a delivery reads it: its size, its header section, its octets in chunks.

A queued body stays on disk: the scheduler holds none, and a delivery reads it
a chunk at a time while its session is in DATA, so memory holds at most a
chunk per delivery in flight (plus the header section, and a converted copy
for the rare 8-bit message to a next hop without 8BITMIME). Each chunk is
its own short read: a read transaction held open through a slow DATA would
stop SQLite from resetting its WAL. Queue ids are never reused and a stored
body never changes, so chunks read apart still make one message; a body that
disappears in between (deleted by an admin, a disk error) raises
BodyUnreadable, and the delivery ends without the final dot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .errors import BodyUnreadable
from .message import header_section
from .message_data import IN_MEMORY, MessageData, has_dot_line

CHUNK_SIZE = 64 * 1024
# The header section is read for RFC 8689's TLS-Required and for DSNs; a longer
# one is cut here (a bounce quotes at most this much).
HEAD_LIMIT = 256 * 1024

ReadAt = Callable[[int, int], bytes]
"""(offset, length) -> at most `length` octets from `offset`; raises BodyUnreadable."""


class MessageBody:
    """Canonical message data (CRLF lines, not dot-stuffed) of a known size, read on demand."""

    __slots__ = ("_eight_bit", "_head", "_read_at", "chunk_size", "dot_lines", "size")

    def __init__(
        self, size: int, read_at: ReadAt, chunk_size: int = CHUNK_SIZE, *, dot_lines: bool = True
    ) -> None:
        """`dot_lines`: False when no line is known to start with "." (nothing to stuff)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.size = size
        self.chunk_size = chunk_size
        self.dot_lines = dot_lines
        self._read_at = read_at
        self._head: bytes | None = None
        self._eight_bit: bool | None = None

    @classmethod
    def of(cls, data: bytes, chunk_size: int | None = None, *, dot_lines: bool = True
           ) -> MessageBody:  # fmt: skip
        """Data already in memory (a fresh body, the `deliver` command and API, a 7-bit
        conversion).

        Up to IN_MEMORY octets it is one chunk, the data itself: chunks bound what a
        delivery reads into memory, and this is there already, so it is searched for
        lines to stuff once and not copied (the SMTP session still writes it in
        blocks, smtp.session.WRITE_BLOCK). A larger one is read CHUNK_SIZE at a time.
        """
        size = len(data)
        if chunk_size is None:
            chunk_size = size if 0 < size <= IN_MEMORY else CHUNK_SIZE
        view = memoryview(data)

        def read_at(offset: int, length: int) -> bytes:
            if offset == 0 and length >= size:
                return data
            return bytes(view[offset : offset + length])

        return cls(size, read_at, chunk_size, dot_lines=dot_lines)

    @classmethod
    def fresh(cls, data: MessageData, before: bytes) -> MessageBody | None:
        """`before` (the queue's Received: field) and `data`, if `data` is all in memory:
        what the first delivery sends, with what the intake knew of its dot lines."""
        held = data.in_memory(before)
        if held is None:
            return None
        return cls.of(held, dot_lines=data.dot_lines or has_dot_line(before))

    def chunks(self, limit: int | None = None) -> Iterator[bytes]:
        """The data in order, `chunk_size` octets at a time (up to `limit` octets)."""
        end = self.size if limit is None else min(self.size, limit)
        offset = 0
        while offset < end:
            chunk = self._read_at(offset, min(self.chunk_size, end - offset))
            if not chunk:
                raise BodyUnreadable(f"the body ends at octet {offset} of {self.size}")
            offset += len(chunk)
            yield chunk

    def read_all(self) -> bytes:
        return b"".join(self.chunks())

    def head(self) -> bytes:
        """The header section (as message.header_section), read once, at most HEAD_LIMIT."""
        if self._head is None:
            start = bytearray()
            for chunk in self.chunks(HEAD_LIMIT):
                if not start and (chunk.startswith(b"\r\n") or b"\r\n\r\n" in chunk):
                    self._head = header_section(chunk)  # the common case: no copy
                    return self._head
                searched = max(0, len(start) - 3)
                start += chunk
                if start.startswith(b"\r\n") or start.find(b"\r\n\r\n", searched) >= 0:
                    break
            self._head = header_section(bytes(start))
        return self._head

    def eight_bit(self) -> bool:
        """Whether any octet is above 127 (BODY=8BITMIME, or 7-bit conversion); read once."""
        if self._eight_bit is None:
            self._eight_bit = not all(chunk.isascii() for chunk in self.chunks())
        return self._eight_bit
