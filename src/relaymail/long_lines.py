"""Lines longer than a message may carry (RFC 5322 2.1.1: 998 octets plus CRLF), made short.

Applications that write unwrapped HTML send such lines; refusing them loses
the mail, and relaying them as they are gets it refused further on. Postfix
accepts and breaks them, and so does ``fold_long_lines``, once, before the
message is queued:

* a header line is folded at the last space or tab that fits (RFC 5322
  2.2.3: CRLF before whitespace is folding white space, so the field's value
  does not change); without one, CRLF SP is inserted (Postfix's choice);
* a body line is split where it reaches the limit, backing off to the start
  of a UTF-8 character so that no character is cut in two.

The data is canonical (CRLF line ends, no bare CR or LF), so a split never
lands inside a line end. Dots are not stuffed here: the SMTP client stuffs
every line on the way out, including the new ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Folded", "LongLines", "fold_long_lines"]


class LongLines(enum.StrEnum):
    """What a listener does with a message line over its ``max_line_length``."""

    FOLD = "fold"
    REFUSE = "refuse"
    """500 5.5.2 after the data, nothing queued (RFC 5321 4.5.3.1.6)."""


@dataclass(frozen=True, slots=True)
class Folded:
    data: bytes
    lines: int
    """How many over-long lines were folded or split."""


def fold_long_lines(data: bytes, limit: int) -> Folded:
    """Canonical ``data`` with no line longer than ``limit`` octets, CRLF included."""
    width = limit - 2
    lines = data.split(b"\r\n")
    out: list[bytes] = []
    folded = 0
    in_header = not data.startswith(b"\r\n")
    for line in lines:
        if in_header and not line:
            in_header = False
        if len(line) <= width:
            out.append(line)
            continue
        folded += 1
        out.extend(_fold_header(line, width) if in_header else _split_body(line, width))
    return Folded(b"\r\n".join(out), folded)


def _fold_header(line: bytes, width: int) -> list[bytes]:
    pieces: list[bytes] = []
    while len(line) > width:
        # Keep at least one octet before the whitespace: a line that starts
        # with it is the fold itself.
        at = max(line.rfind(b" ", 1, width + 1), line.rfind(b"\t", 1, width + 1))
        if at > 0:
            pieces.append(line[:at])
            line = line[at:]
        else:
            cut = _char_boundary(line, width)
            pieces.append(line[:cut])
            line = b" " + line[cut:]
    pieces.append(line)
    return pieces


def _split_body(line: bytes, width: int) -> list[bytes]:
    pieces: list[bytes] = []
    while len(line) > width:
        cut = _char_boundary(line, width)
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def _char_boundary(line: bytes, cut: int) -> int:
    """``cut`` moved back to the first octet of a UTF-8 character (at most 3 octets)."""
    for back in range(4):
        if cut - back > 0 and line[cut - back] & 0xC0 != 0x80:
            return cut - back
    return cut
