"""SMTP replies: the value type and an incremental, bounded parser.

The parser is fed whatever bytes the socket produced and hands out complete
replies; it never blocks and never reads a socket (sans-IO). A reply that is
malformed or unreasonably large is the remote's fault and raises
RemoteProtocolError: we will not guess at what a broken server meant.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from ..errors import RemoteProtocolError

# RFC 5321 4.5.3.1.5 allows 512 octets per reply line; real servers exceed it
# with long capability lists and diagnostics, so be generous but bounded.
MAX_LINE = 4096
MAX_LINES = 200

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]

    @property
    def kind(self) -> int:
        """The first digit: 2 success, 3 intermediate, 4 transient, 5 permanent."""
        return self.code // 100

    @property
    def is_success(self) -> bool:
        return self.kind == 2

    @property
    def is_transient(self) -> bool:
        return self.kind == 4

    @property
    def is_permanent(self) -> bool:
        return self.kind == 5

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code, when the first line carries one that fits."""
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        if match and int(match.group(1)) == self.kind:
            return f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
        return None

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """Split one reply line (without its line ending) into (code, is_last, text)."""
    if len(line) < 3 or not line[:3].isdigit():
        raise RemoteProtocolError(f"malformed reply line {line[:80]!r}")
    code = int(line[:3])
    if code < 200 or code > 599:
        raise RemoteProtocolError(f"reply code {code} out of range in {line[:80]!r}")
    separator = line[3:4]
    if separator not in (b"", b" ", b"-"):
        raise RemoteProtocolError(f"malformed reply line {line[:80]!r}")
    text = line[4:].decode("utf-8", errors="replace")
    return code, separator != b"-", text


class ReplyParser:
    """Turns a byte stream into Reply objects, one complete reply at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None
        self._replies: deque[Reply] = deque()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise RemoteProtocolError(f"reply line longer than {MAX_LINE} octets")
                return
            if end > MAX_LINE:
                raise RemoteProtocolError(f"reply line longer than {MAX_LINE} octets")
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            self._take_line(line)

    def feed_raw(self, data: bytes) -> None:
        """Keep bytes without parsing them (cleartext behind a 220 to STARTTLS)."""
        self._buffer += data

    def _take_line(self, line: bytes) -> None:
        code, is_last, text = parse_reply_line(line)
        if self._code is not None and code != self._code:
            raise RemoteProtocolError(
                f"reply code changed from {self._code} to {code} inside a multi-line reply"
            )
        self._code = code
        self._lines.append(text)
        if len(self._lines) > MAX_LINES:
            raise RemoteProtocolError(f"reply longer than {MAX_LINES} lines")
        if is_last:
            self._replies.append(Reply(code, tuple(self._lines)))
            self._code = None
            self._lines = []

    @property
    def has_data(self) -> bool:
        return bool(self._replies or self._lines or self._buffer)

    def next_reply(self) -> Reply | None:
        return self._replies.popleft() if self._replies else None

    def take_unconsumed(self) -> bytes:
        """Everything received that is not part of a reply already handed out.

        At the STARTTLS boundary this must be empty: anything here arrived in
        clear behind the 220 and is a response injection (CVE-2011-0411 class).
        """
        pending = bytearray()
        for reply in self._replies:
            for i, line in enumerate(reply.lines):
                sep = " " if i == len(reply.lines) - 1 else "-"
                pending += f"{reply.code}{sep}{line}\r\n".encode()
        if self._code is not None:
            for line in self._lines:
                pending += f"{self._code}-{line}\r\n".encode()
        pending += self._buffer
        self._replies.clear()
        self._lines = []
        self._code = None
        self._buffer.clear()
        return bytes(pending)
