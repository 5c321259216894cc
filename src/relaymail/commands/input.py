"""Message input for `sendmail` and `relaymail deliver`: never more than the size limit.

The input is read in bounded pieces and refused as soon as it passes the
limit, so `relaymail deliver /dev/zero` or a runaway script piping into
sendmail costs at most the limit in memory, not all of it.

The limit is the largest `max_message_size` of the configured listeners
(35M by default): a message the daemon would take over SMTP on one of its
listeners is taken from the command line too, and nothing larger.
"""

from __future__ import annotations

import sys

from ..config_file import message_size_limit
from ..errors import MessageInputError, MessageTooLarge

TYPE_CHECKING = False  # typing loads re and enum: sendmail reads its message here
if TYPE_CHECKING:
    from typing import BinaryIO

    from ..config import Config

_CHUNK = 1 << 20


def size_limit(config: Config) -> int:
    """The largest max_message_size among the listeners, in octets."""
    return message_size_limit(config.listener_tables)


def read_message(name: str, limit: int, *, dot_ends: bool = False) -> bytes:
    """The message in file `name` ("-": standard input), as given, at most `limit` octets.

    With `dot_ends` (sendmail without -i), a line holding a single dot ends
    the message and nothing after it is read. Raises MessageInputError when
    there is nothing to read from and MessageTooLarge past the limit.
    """
    try:
        if name != "-":
            with open(name, "rb") as stream:
                return _read(stream, limit, dot_ends)
        if sys.stdin is None:  # started with stdin closed (<&-)
            raise MessageInputError("cannot read standard input: it is closed")
        return _read(sys.stdin.buffer, limit, dot_ends)
    except OSError as exc:
        where = "standard input" if name == "-" else name
        raise MessageInputError(f"cannot read {where}: {exc.strerror or exc}") from None


def _read(stream: BinaryIO, limit: int, dot_ends: bool) -> bytes:
    pieces: list[bytes] = []
    total = 0
    while True:
        # One octet past the limit is how we know the input is over it.
        room = limit + 1 - total
        piece = stream.readline(room) if dot_ends else stream.read(min(_CHUNK, room))
        if not piece:
            return b"".join(pieces)
        if dot_ends and piece.rstrip(b"\r\n") == b".":
            return b"".join(pieces)
        total += len(piece)
        if total > limit:
            raise MessageTooLarge(limit)
        pieces.append(piece)
