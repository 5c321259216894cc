"""Where a message's data ends on the wire: CRLF "." CRLF, read from an asyncio.StreamReader.

The rule (RFC 5321 4.1.1.4) is a search: the data ends at the first CRLF "." CRLF
of the stream with the DATA command's own CRLF in front, so an empty message is a
lone "." line, and nothing else ends it (a bare LF "." LF is data: the SMTP
smuggling rule). tests/unit/test_data_framing.py holds `read_data` to that search
however the octets arrive.

The reader is asked for the terminator itself, so a message takes a read or two
whatever its lines end with (asked for every "." CRLF instead, prose made a read
of each sentence's last line, and a message of "a." lines cost 40 times longer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

__all__ = ["ClientGone", "read_data"]

_TERMINATOR: Final = b"\r\n.\r\n"


class ClientGone(Exception):
    """The client closed its side (EOF) before the line or the data it owed was complete."""


async def read_data(
    reader: asyncio.StreamReader,
    limit: int,
    take: Callable[[bytes], None],
    *,
    on_piece: Callable[[], object] = lambda: None,
) -> bool:
    """Hand the data up to the terminator to ``take``, piece by piece, as sent (still
    dot-stuffed); False if it is over ``limit`` octets. ``on_piece`` runs at each read.

    Reads up to the terminator (or the reader's limit without one). Only where the
    data read so far may end with the terminator's first octets (the DATA command's
    own CRLF at the start) is the rest looked for in what is already buffered
    (``_straddle``); if too little is, the next "." line is read instead, which
    settles it. A piece ends the data when the five octets before its end are
    CRLF "." CRLF. Past the limit nothing more is handed over and the rest is read
    and dropped, then refused (RFC 5321 4.2.5: the reply comes after the data).

    The reader's buffer is looked at, never changed (inbound/protocol.py lists it).
    """
    buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
    size = 0
    tail = b"\r\n"
    while True:
        rest = _straddle(tail, buffered)
        try:
            if rest is None:
                piece = await reader.readuntil(b".\r\n")
            elif rest:
                piece = await reader.readexactly(rest)
            else:
                piece = await reader.readuntil(_TERMINATOR)
            ends_data = (tail + piece[-5:])[-5:] == _TERMINATOR
        except asyncio.IncompleteReadError:
            raise ClientGone from None  # the message is not complete: not ours yet
        except asyncio.LimitOverrunError as exc:
            piece = await reader.read(exc.consumed)
            ends_data = False
        on_piece()
        if ends_data:
            piece = piece[:-3]
        size += len(piece)
        if size <= limit:
            take(piece)
        if ends_data:
            return size <= limit
        tail = (tail + piece[-4:])[-4:]


def _straddle(tail: bytes, buffered: bytearray) -> int | None:
    """How many buffered octets complete a terminator begun by the last octets read
    (`tail`); 0 if none can, so the next one lies wholly ahead; None if too few
    are buffered to tell.

    Only "\\r" or "\\r\\n" can be the terminator's start at the end of a piece:
    a read up to the terminator (or StreamReader's LimitOverrunError, which
    leaves a separator's possible start in the buffer) never ends inside one,
    and a read up to "." CRLF leaves the "." of one unread.
    """
    for begun in (2, 1):
        if tail.endswith(_TERMINATOR[:begun]):
            wanted = _TERMINATOR[begun:]
            seen = bytes(buffered[: len(wanted)])
            if seen == wanted:
                return len(wanted)
            return None if wanted.startswith(seen) else 0
    return 0
