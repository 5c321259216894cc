"""What the queue gets from a front door besides the data: trace headers and the header fix-up.

SMTP and the maildrop pickup both use it, so both hand the queue the same
kind of message; intake.py makes the data itself canonical.

Header fix-up is Postfix's cleanup for mail from its own users: a message
submitted locally or by an authenticated client, or through a submission
port, gets a ``Date:`` and a ``Message-ID:`` when it has none (RFC 6409 8.2,
8.3: the submission server may add them; large receivers score mail without
them). Mail relayed from other MTAs is left as it is: it is someone else's
message, and changing it breaks their DKIM signatures.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from ..headers import field
from .checks import IPAddress

if TYPE_CHECKING:
    from .intake import HeaderFields

__all__ = [
    "local_received_header",
    "missing_fields",
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


def _message_id(hostname: str) -> str:
    # Time, process and 32 random bits: unique across processes and restarts
    # without any shared counter (RFC 5322 3.6.4).
    return f"<{time.time_ns():x}.{os.getpid()}.{os.urandom(4).hex()}@{hostname}>"


def missing_fields(headers: HeaderFields, *, hostname: str, add_from: str | None = None) -> bytes:
    """The ``Date:`` and ``Message-ID:`` fields a message with these ``headers`` lacks.

    ``add_from`` is a ready mailbox (relaymail.headers.mailbox) for a missing
    ``From:``: local submission knows who sent the mail; an SMTP client's
    envelope sender is not the author, so SMTP passes None. They go in front
    of the header section (MessageData.prepend); data without one starts with
    its blank line, which stays. Raises HeaderValueError if ``add_from``
    holds a line break.
    """
    added = []
    if add_from is not None and not headers.from_:
        added.append(_folded(field("From", add_from)))
    if not headers.date:
        added.append(field("Date", rfc5322_date()))
    if not headers.message_id:
        added.append(field("Message-ID", _message_id(hostname)))
    return "".join(f"{line}\r\n" for line in added).encode("utf-8")


def _folded(line: str, width: int = 78) -> str:
    """`line` folded at its spaces where it passes `width` (RFC 5322 2.2.3: CRLF before
    whitespace, which unfolding takes out again): a From: made of a long -F name is
    encoded words or a quoted string, each part short, together beyond 998 octets."""
    name, *words = line.split(" ")
    lines, current = [], f"{name} {words.pop(0)}" if words else name  # never "From:" alone
    for word in words:
        if len(current) + 1 + len(word) > width:
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}"
    return "\r\n".join([*lines, current])


def trace_protocol(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The "with" keyword of RFC 3848 / RFC 6531 for a session."""
    if not esmtp:
        return "SMTP"
    return (
        ("UTF8SMTP" if smtputf8 else "ESMTP")
        + ("S" if tls else "")
        + ("A" if authenticated else "")
    )
