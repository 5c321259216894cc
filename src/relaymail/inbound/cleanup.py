"""What the queue gets from a front door: canonical lines, trace header, loop count, folding,
and the header fix-up.

SMTP uses it now, local pickup will: both hand the queue the same bytes.

Header fix-up is Postfix's cleanup for mail from its own users: a message
submitted locally or by an authenticated client, or through a submission
port, gets a ``Date:`` and a ``Message-ID:`` when it has none (RFC 6409 8.2,
8.3: the submission server may add them; large receivers score mail without
them). Mail relayed from other MTAs is left as it is: it is someone else's
message, and changing it breaks their DKIM signatures.

Lines longer than a message may carry (RFC 5322 2.1.1: 998 octets plus CRLF)
are made short. Applications that write unwrapped HTML send such lines;
refusing them loses the mail, and relaying them as they are gets it refused
further on. Postfix accepts and breaks them, and so does ``fold_long_lines``, once, before the
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

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ..headers import field
from ..message import canonical_data, header_section
from .checks import IPAddress

__all__ = [
    "Folded",
    "canonical_lines",
    "count_received",
    "fix_up_headers",
    "fold_long_lines",
    "local_received_header",
    "received_header",
    "rfc5322_date",
    "trace_protocol",
]

_TRACE_HELO: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,252}|\[[A-Za-z0-9.:]{1,60}\]")


def rfc5322_date(when: float | None = None) -> str:
    """``when`` (default: now) as an RFC 5322 3.3 date-time in local time."""
    # strftime's names are English here: Python leaves LC_TIME at "C". Not
    # email.utils: sendmail's start-up would pay for the email package.
    return time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(when))


def received_header(
    queue_id: str,
    *,
    helo: str | None,
    client_ip: IPAddress | None,
    hostname: str,
    protocol: str,
    tls: tuple[str, str] | None,
    recipients: Sequence[str],
    date: str | None = None,
) -> bytes:
    """The Received: trace header (RFC 5321 4.4) we prepend, folded, ending in CRLF.

    The "id" clause is the queue id, so a header a user quotes leads to our
    log lines; the store allocates it and calls this (queue.TraceHeader).
    ``tls`` is (protocol version, cipher).
    """
    if client_ip is None:
        literal = "unknown"
    elif client_ip.version == 6:
        literal = f"[IPv6:{client_ip.compressed}]"
    else:
        literal = f"[{client_ip}]"
    # The HELO name is the client's claim; anything that is not plainly a
    # domain or address literal would let it write into our header's syntax.
    claimed = helo if helo and _TRACE_HELO.fullmatch(helo) else "unknown"
    lines = [
        f"Received: from {claimed} ({literal})",
        f"\tby {hostname} (relaymail) with {protocol} id {queue_id}",
    ]
    if tls is not None:
        lines.append(f"\t(using {tls[0]} with cipher {tls[1]})")
    return _stamped(lines, recipients, date)


def local_received_header(
    queue_id: str, *, hostname: str, uid: int, recipients: Sequence[str], date: str | None = None
) -> bytes:
    """The Received: header of locally submitted mail, as Postfix's pickup writes it.

    There is no "from" clause (no remote host): the submitting user's uid is
    the trace, in the comment Postfix uses (``by host (Postfix, from userid 33)``).
    """
    lines = [f"Received: by {hostname} (relaymail, from userid {uid})", f"\tid {queue_id}"]
    return _stamped(lines, recipients, date)


def _stamped(lines: list[str], recipients: Sequence[str], date: str | None) -> bytes:
    # One recipient is named (RFC 5321 4.4 "for"); more would tell each
    # recipient who else got a copy (Bcc included), as Postfix avoids too.
    when = date or rfc5322_date()
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {when}")
    else:
        lines[-1] += f"; {when}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _has_field(headers: bytes, name: bytes) -> bool:
    # RFC 5322 4.5.3 (obsolete syntax, still sent): whitespace before the colon.
    pattern = rb"^" + re.escape(name) + rb"[ \t]*:"
    return re.search(pattern, headers, re.IGNORECASE | re.MULTILINE) is not None


def _message_id(hostname: str) -> str:
    # Time, process and 32 random bits: unique across processes and restarts
    # without any shared counter (RFC 5322 3.6.4).
    return f"<{time.time_ns():x}.{os.getpid()}.{os.urandom(4).hex()}@{hostname}>"


def fix_up_headers(data: bytes, *, hostname: str, add_from: str | None = None) -> bytes:
    """Canonical ``data`` with a ``Date:`` and ``Message-ID:`` added where missing.

    ``add_from`` is a ready mailbox (relaymail.headers.mailbox) for a missing
    ``From:``: local submission knows who sent the mail; an SMTP client's
    envelope sender is not the author, so SMTP passes None. The new fields go
    in front of the header section; nothing else changes. Raises
    HeaderValueError if ``add_from`` holds a line break.
    """
    headers = header_section(data)
    added = []
    if add_from is not None and not _has_field(headers, b"From"):
        added.append(field("From", add_from))
    if not _has_field(headers, b"Date"):
        added.append(field("Date", rfc5322_date()))
    if not _has_field(headers, b"Message-ID"):
        added.append(field("Message-ID", _message_id(hostname)))
    if not added:
        return data
    prefix = "".join(f"{line}\r\n" for line in added).encode("utf-8")
    # Data without a header section starts with its blank line, which stays.
    return prefix + data


def trace_protocol(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The "with" keyword of RFC 3848 / RFC 6531 for a session."""
    if not esmtp:
        return "SMTP"
    return (
        ("UTF8SMTP" if smtputf8 else "ESMTP")
        + ("S" if tls else "")
        + ("A" if authenticated else "")
    )


_RECEIVED_FIELD: Final = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


def count_received(data: bytes) -> int:
    """Received: fields in the header section of canonical message data."""
    return len(_RECEIVED_FIELD.findall(header_section(data)))


def canonical_lines(data: bytes) -> tuple[bytes, int]:
    """``data`` in canonical form (message.canonical_data), and its longest line with CRLF.

    canonical_data rewrites every line ending through a regex: 350 us per
    100 KB here. Mail from conforming clients has nothing to rewrite, and the
    split that measures the lines also proves that (no CR or LF left once
    the CRLFs are gone), at a third of the cost.
    """
    lines = data.split(b"\r\n")
    rest = b"".join(lines)
    if b"\n" in rest or b"\r" in rest or (data and not data.endswith(b"\r\n")):
        data = canonical_data(data)
        lines = data.split(b"\r\n")
    return data, max(map(len, lines)) + 2


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
