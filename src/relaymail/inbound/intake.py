"""Message data from a front door into the queue's canonical form, a piece at a time (sans-IO).

Theory of operation
-------------------
An ``Intake`` is fed the data as it arrives (SMTP DATA pieces off the wire, or
a maildrop file read in chunks) and writes the result into a MessageData,
which keeps it in memory while small and in a temporary file after. Nothing
here holds more than a batch of input plus one line of at most
``max_line_length``, so the memory a message costs does not grow with it.
Three steps, each carrying what it cannot decide yet into the next piece:

1. Dot-unstuffing (RFC 5321 4.5.2, SMTP only): the first "." of every line
   goes. Lines here are the wire's: only CRLF starts one, as the terminator
   is only CRLF "." CRLF (the SMTP-smuggling rule).
2. Line ends: bare CR and bare LF become CRLF (message.canonical_line_ends);
   a CR at the end of a piece waits for the next one, which may start with LF.
   The piece is split at its CRLFs here, once, for this step and the next: it
   is canonical when what is left between them holds no CR and no LF, which
   two memchr() scans of their join tell (a count of each line end would read
   the piece byte by byte, three times).
3. Lines: the longest is measured (``long_lines = "refuse"`` answers from
   it); with ``long_lines = "fold"`` each line over the limit is made short
   (below); header fields that matter later are noted (``HeaderFields``),
   so the header fix-up and the loop count need no second pass.

Pieces whose lines all fit go through as they are, in one write, the header
section's too (of which only the field names are read); only a piece with an
over-long line is worked on line by line.

Lines longer than a message may carry (RFC 5322 2.1.1: 998 octets plus CRLF):
applications that write unwrapped HTML send them; refusing them loses the
mail, and relaying them as they are gets it refused further on. Postfix
accepts and breaks them, and so does this, once, before the message is queued:

* a header line is folded at the last space or tab that fits (RFC 5322
  2.2.3: CRLF before whitespace is folding white space, so the field's value
  does not change); without one, CRLF SP is inserted (Postfix's choice);
* a body line is split where it reaches the limit, backing off to the start
  of a UTF-8 character so that no character is cut in two.

A split never lands inside a line end (step 2 came first). Dots are not
stuffed again: the SMTP client stuffs every line on the way out, the new
ones included.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..message import canonical_line_ends
from ..message_data import MessageData

__all__ = ["HeaderFields", "Intake", "IntakeResult"]

BATCH: Final = 64 * 1024
"""Input gathered before the steps run: what the SMTP reader hands over ends
where a read did (an octet or two at a time from a client that trickles)."""
_NOTED: Final = frozenset({b"date", b"message-id", b"from"})
_HEAD: Final = 100
"""Octets of a header line kept to recognise its field name (RFC 5322 allows
whitespace before the colon; a hundred octets of it is no field we look for)."""


@dataclass(frozen=True, slots=True)
class HeaderFields:
    """What the header section holds of the fields the queue's front doors care about."""

    received: int = 0
    date: bool = False
    message_id: bool = False
    from_: bool = False


@dataclass(frozen=True, slots=True)
class IntakeResult:
    data: MessageData
    longest: int
    """The longest line as received, CRLF included (before any folding)."""
    folded: int
    """How many over-long lines were folded or split."""
    headers: HeaderFields
    failure: OSError | None
    """The temporary file could not take the data (disk full): nothing to queue."""


class _Unstuff:
    """Step 1. The "." after every CRLF goes; a CRLF split between pieces is seen from the
    last two octets of the one before (a CR at its end, LF "." at the next one's start).

    Nothing is held back, so a piece is not copied to be joined with what came
    before it: only a piece with a line to unstuff is (by ``replace``).
    """

    __slots__ = ("_tail", "unstuffed")

    def __init__(self) -> None:
        # A CRLF before the data: its first line starts like any other.
        self._tail = b"\r\n"
        self.unstuffed = False  # a line started with "." (its line may start with one still)

    def feed(self, piece: bytes) -> bytes:
        out = piece
        if b"\r\n." in piece:
            out = piece.replace(b"\r\n.", b"\r\n")
            self.unstuffed = True
        tail = self._tail
        if tail == b"\r\n" and piece[:1] == b".":
            out = out[1:]
            self.unstuffed = True
        elif tail[-1:] == b"\r" and piece[:2] == b"\n.":
            out = b"\n" + out[2:]
            self.unstuffed = True
        # As received, not as unstuffed: a CRLF whose "." went must not take the next octet too.
        self._tail = (tail + piece[-2:])[-2:]
        return out


class _LineEnds:
    """Step 2: canonical data, and its lines (split at CRLF; the last one goes on)."""

    __slots__ = ("_cr", "converted")

    def __init__(self) -> None:
        self._cr = False
        self.converted = False  # a bare CR or LF became CRLF (LF "." makes a line of ".")

    def feed(self, data: bytes, *, last: bool = False) -> tuple[bytes, list[bytes]]:
        if self._cr:
            data = b"\r" + data
        self._cr = not last and data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        lines = data.split(b"\r\n")
        between = b"".join(lines)
        if b"\r" in between or b"\n" in between:  # a bare CR or LF: rare
            data = canonical_line_ends(data)
            lines = data.split(b"\r\n")
            self.converted = True
        return data, lines


class _Lines:
    """Step 3: canonical data in, written to ``out`` folded if asked; lengths and fields noted."""

    __slots__ = (
        "_cut",
        "_head",
        "_held",
        "_in_header",
        "_length",
        "_out",
        "_received",
        "_seen",
        "_width",
        "folded",
        "longest",
    )

    def __init__(self, out: Callable[[bytes], None], fold_at: int | None) -> None:
        self._out = out
        self._width = None if fold_at is None else fold_at - 2  # octets before the CRLF
        self._held = b""  # folding only: the current line, not written yet (at most _width + 1)
        self._length = 0  # octets of the current line so far, as received
        self._head = b""  # the start of the current line, in the header section
        self._cut = False  # the current line was folded
        self._in_header = True
        self._received = 0
        self._seen: set[bytes] = set()
        self.longest = 0
        self.folded = 0

    @property
    def headers(self) -> HeaderFields:
        seen = self._seen
        return HeaderFields(self._received, b"date" in seen, b"message-id" in seen, b"from" in seen)

    def feed(self, data: bytes, lines: list[bytes]) -> None:
        """`data` and its lines as _LineEnds split it (the list is consumed)."""
        tail = lines.pop()  # the start of a line that goes on in the next piece
        widest = max(map(len, lines)) if lines else 0
        if lines and self._passes(lines[0], widest):
            # The common case: whole lines that fit, written as they came; of the
            # header section's, only the field names are looked at.
            first = self._length + len(lines[0])
            self.longest = max(self.longest, first + 2, widest + 2)
            if self._in_header:
                self._note_lines(lines)
            self._head = b""
            if self._width is None:
                self._out(data)
                self._length = len(tail)
                if self._in_header:
                    self._head = tail[:_HEAD]
                return
            self._out(self._held + data[: len(data) - len(tail)])
            self._held = b""
            self._length = 0
            self._add(tail)
            return
        for line in lines:
            self._add(line)
            self._end_line()
        self._add(tail)

    def _note_lines(self, lines: list[bytes]) -> None:
        """The header fields of whole lines, up to the blank line that ends the section."""
        if self._length + len(lines[0]) == 0:
            self._in_header = False  # the blank line: the body follows
            return
        self._note_field((self._head + lines[0][:_HEAD])[:_HEAD])  # goes on from the last piece
        for line in itertools.islice(lines, 1, None):
            if not line:
                self._in_header = False
                return
            self._note_field(line[:_HEAD])

    def finish(self) -> None:
        if self._length or self._held:
            self._end_line()  # canonical data ends with CRLF (message.canonical_data)

    def _passes(self, first: bytes, widest: int) -> bool:
        width = self._width
        return width is None or (self._length + len(first) <= width and widest <= width)

    def _add(self, part: bytes) -> None:
        if not part:
            return
        if self._in_header and len(self._head) < _HEAD:
            self._head += part[: _HEAD - len(self._head)]
        self._length += len(part)
        width = self._width
        if width is None:
            self._out(part)
            return
        # Taken in steps of at most the width, so a line of any length costs
        # linear time and a line's worth of memory.
        start = 0
        while start < len(part):
            room = width + 1 - len(self._held)
            if room <= 0:
                self._fold_once(width)
                continue
            self._held += part[start : start + room]
            start += room
        while len(self._held) > width:
            self._fold_once(width)

    def _fold_once(self, width: int) -> None:
        held = self._held
        self._cut = True
        if self._in_header:
            # At least one octet before the whitespace: a line starting with it is the fold.
            at = max(held.rfind(b" ", 1, width + 1), held.rfind(b"\t", 1, width + 1))
            if at > 0:
                self._out(held[:at] + b"\r\n")
                self._held = held[at:]
                return
            cut = _char_boundary(held, width)
            self._out(held[:cut] + b"\r\n")
            self._held = b" " + held[cut:]
            return
        cut = _char_boundary(held, width)
        self._out(held[:cut] + b"\r\n")
        self._held = held[cut:]

    def _end_line(self) -> None:
        self._out(self._held + b"\r\n")
        self._held = b""
        self.longest = max(self.longest, self._length + 2)
        if self._in_header:
            if self._length == 0:
                self._in_header = False  # the blank line: the body follows
            else:
                self._note_field(self._head)
        if self._cut:
            self.folded += 1
        self._length = 0
        self._head = b""
        self._cut = False

    def _note_field(self, head: bytes) -> None:
        if head[:1] in (b" ", b"\t"):
            return  # a continuation line
        name, colon, _ = head.partition(b":")
        if not colon:
            return
        name = name.rstrip(b" \t").lower()
        if name == b"received":
            self._received += 1
        elif name in _NOTED:
            self._seen.add(name)


def _char_boundary(line: bytes, cut: int) -> int:
    """``cut`` moved back to the first octet of a UTF-8 character (at most 3 octets)."""
    for back in range(4):
        if cut - back > 0 and line[cut - back] & 0xC0 != 0x80:
            return cut - back
    return cut


class Intake:
    """One message's data, fed as it arrives; ``finish`` says what came in."""

    __slots__ = ("_ends", "_failure", "_lines", "_pending", "_pending_size", "_unstuff", "data")

    def __init__(self, data: MessageData, *, fold_at: int | None, unstuff: bool) -> None:
        """``fold_at``: fold lines longer than this (CRLF included); None: keep them.

        ``unstuff``: the data is SMTP DATA as sent (dot-stuffed, terminator removed).
        """
        self.data = data
        self._unstuff = _Unstuff() if unstuff else None
        self._ends = _LineEnds()
        self._lines = _Lines(self._write, fold_at)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._failure: OSError | None = None

    def feed(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size < BATCH:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        # In batches even when handed much more: the line step splits what it gets.
        for start in range(0, len(data), BATCH):
            self._run(data[start : start + BATCH])

    def finish(self) -> IntakeResult:
        data = b"".join(self._pending)
        self._pending.clear()
        if self._unstuff is not None:
            data = self._unstuff.feed(data)
        lines = self._lines
        lines.feed(*self._ends.feed(data, last=True))
        lines.finish()
        # No line of the data can start with "." unless one did on the wire, or a
        # conversion or fold made a new line: then the SMTP client need not look.
        made = self._ends.converted or lines.folded > 0
        self.data.dot_lines = self._unstuff is None or self._unstuff.unstuffed or made
        return IntakeResult(self.data, lines.longest, lines.folded, lines.headers, self._failure)

    def _run(self, data: bytes) -> None:
        if self._unstuff is not None:
            data = self._unstuff.feed(data)
        self._lines.feed(*self._ends.feed(data))

    def _write(self, data: bytes) -> None:
        if self._failure is not None:
            return  # the rest is still read (and measured), then refused
        try:
            self.data.write(data)
        except OSError as exc:
            self._failure = exc
            self.data.close()
