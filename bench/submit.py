"""The submission client: offers a workload to an MTA's SMTP listener as fast as it accepts.

`connections` sessions run at once; each takes the next message number from a
shared counter until the workload is exhausted, so a slow session does not hold
messages back. Within a session every transaction is pipelined (RFC 2920):
MAIL, RCPT and DATA go in one write, and the message content, its final ".",
and the next transaction's MAIL, RCPT and DATA go in the next (section 3.1
allows the content to open a group). Replies are read in order; a message counts
as submitted on the 250 after its ".".

One recipient per message: recipient i is `r<i>@d<i mod destinations>.bench.test`,
so with 100 destinations the messages rotate over 100 domains, each routed by
the MTA to its own sink port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

SENDER = "bench@client.bench.test"
_LINE = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n"


def domain(index: int) -> str:
    return f"d{index}.bench.test"


def recipient(number: int, destinations: int) -> str:
    return f"r{number}@{domain(number % destinations)}"


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    messages: int
    size: int
    destinations: int

    def message(self, number: int) -> bytes:
        """Message `number`, `size` bytes as submitted (before the final '.')."""
        return _message(number, self.size, recipient(number, self.destinations))


def _message(number: int, size: int, to: str) -> bytes:
    header = (
        f"From: Bench <{SENDER}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: relaymail benchmark message {number}\r\n"
        f"Message-ID: <bench.{number}.{size}@client.bench.test>\r\n"
        "Date: Sun, 29 Nov 2026 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    body_size = max(0, size - len(header))
    body = (_LINE * (body_size // len(_LINE) + 1))[:body_size]
    if body and not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return header + body


@dataclass
class SubmitResult:
    first_submission: float = 0.0
    last_accepted: float = 0.0
    accepted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return max(0.0, self.last_accepted - self.first_submission)


class _Refused(Exception):
    pass


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """The last line of one (possibly multi-line) reply."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by the MTA")
        if line[3:4] != b"-":
            return line


async def _session(
    host: str,
    port: int,
    workload: Workload,
    take: _Counter,
    result: SubmitResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        banner = await _read_reply(reader)
        if not banner.startswith(b"220"):
            raise _Refused(f"banner: {banner!r}")
        writer.write(b"EHLO client.bench.test\r\n")
        reply = await _read_reply(reader)
        if not reply.startswith(b"250"):
            raise _Refused(f"EHLO: {reply!r}")
        number = take.next()
        if number is None:
            return
        envelope = _envelope(number, workload)
        if not result.first_submission:
            result.first_submission = time.monotonic()
        writer.write(envelope)
        while number is not None:
            mail = await _read_reply(reader)
            rcpt = await _read_reply(reader)
            data = await _read_reply(reader)
            next_number = take.next()
            if not data.startswith(b"354"):
                result.refused += 1
                result.errors.append(f"message {number}: {mail!r} {rcpt!r} {data!r}")
                if next_number is not None:
                    writer.write(_envelope(next_number, workload))
                number = next_number
                continue
            group = [workload.message(number), b".\r\n"]
            if next_number is not None:
                group.append(_envelope(next_number, workload))
            writer.writelines(group)
            reply = await _read_reply(reader)
            if reply.startswith(b"250"):
                result.accepted += 1
                result.last_accepted = time.monotonic()
            else:
                result.refused += 1
                result.errors.append(f"message {number}: {reply!r}")
            number = next_number
        writer.write(b"QUIT\r\n")
        # Exim waits up to 200 ms after QUIT for more input unless the client
        # half-closes; the 221 itself is not needed.
        with contextlib.suppress(OSError):
            writer.write_eof()
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            await asyncio.wait_for(_read_reply(reader), 2.0)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


def _envelope(number: int, workload: Workload) -> bytes:
    return (
        f"MAIL FROM:<{SENDER}> SIZE={workload.size}\r\n"
        f"RCPT TO:<{recipient(number, workload.destinations)}>\r\n"
        "DATA\r\n"
    ).encode()


class _Counter:
    def __init__(self, total: int) -> None:
        self.issued = 0
        self.total = total

    def next(self) -> int | None:
        if self.issued >= self.total:
            return None
        self.issued += 1
        return self.issued - 1


async def submit(
    host: str, port: int, workload: Workload, connections: int, timeout: float
) -> SubmitResult:
    """Submit the whole workload; returns when done, or after `timeout` seconds."""
    result = SubmitResult()
    take = _Counter(workload.messages)

    async def one_session() -> None:
        try:
            await _session(host, port, workload, take, result)
        except (OSError, ConnectionError, _Refused) as exc:
            result.errors.append(f"session: {exc!r}")

    tasks = [asyncio.create_task(one_session()) for _ in range(connections)]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        result.errors.append(f"submission timed out after {timeout:.0f} s")
        await asyncio.gather(*pending, return_exceptions=True)
    return result
