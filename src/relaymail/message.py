"""Envelopes, addresses and the canonical form of message data.

Message data crosses module borders in one canonical form: bytes with CRLF
line endings and no dot-stuffing. The SMTP client stuffs dots on the way out;
the inbound server normalises bare LF / bare CR on the way in.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from .dsn_request import NO_DSN, DsnRequest
from .errors import AddressError
from .headers import CONTROL_CHARACTERS

_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")
# Besides what ends or splits a path, every control: an address also goes into
# header fields (From:, To: of a DSN), where they are line breaks to some readers.
_NOT_IN_PATH = re.compile(f"[<> ]|{CONTROL_CHARACTERS.pattern}")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")

# The default of every listener's max_message_size, and so of sendmail's limit.
DEFAULT_MAX_MESSAGE_SIZE = 35 * 1024 * 1024


class _EnvelopeFields(NamedTuple):
    sender: str
    recipients: tuple[str, ...]
    requiretls: bool = False
    dsn: DsnRequest | None = None


class Envelope(_EnvelopeFields):
    """The SMTP envelope: reverse-path ("" for the null sender) and forward-paths.

    `requiretls`: MAIL FROM carried RFC 8689's REQUIRETLS, so every hop must be
    verified TLS to a server that offers REQUIRETLS, or the mail bounces.

    `dsn`: the RFC 3461 parameters of MAIL and each RCPT (dsn_request.py); None
    when the sender gave none.

    Immutable, compared by value, checked when made. A NamedTuple rather than a
    dataclass: `sendmail` checks its envelope here, and the dataclasses module
    (it imports inspect) would cost that command a third of its start-up.
    """

    __slots__ = ()

    def __new__(
        cls,
        sender: str,
        recipients: tuple[str, ...],
        requiretls: bool = False,
        dsn: DsnRequest | None = None,
    ) -> Envelope:
        if sender:
            check_address(sender)
        if not recipients:
            raise AddressError("an envelope needs at least one recipient")
        for rcpt in recipients:
            check_address(rcpt)
        if dsn is not None and dsn.is_empty:
            dsn = None
        return super().__new__(cls, sender, tuple(recipients), requiretls, dsn)

    def with_recipients(self, recipients: tuple[str, ...]) -> Envelope:
        """The same envelope for `recipients` (checked before: a subset, or their expansion)."""
        return self._replace(recipients=recipients)

    @property
    def dsn_request(self) -> DsnRequest:
        """The RFC 3461 parameters, empty when none were given."""
        return self.dsn if self.dsn is not None else NO_DSN

    @property
    def needs_smtputf8(self) -> bool:
        return any(not a.isascii() for a in (self.sender, *self.recipients))


class Origin(enum.StrEnum):
    """Who handed a message to the queue: decides, among others, whether we sign it (DKIM)."""

    LOCAL = "local"
    """The maildrop (sendmail), and mail the daemon writes itself (TLS reports)."""
    AUTHENTICATED = "authenticated"
    """An SMTP client that logged in (AUTH)."""
    RELAY_NETWORKS = "relay_networks"
    """An SMTP client in the listener's relay_networks, not logged in."""
    OUTSIDE = "outside"
    """Anyone else: mail relayed to us from other MTAs; it is theirs, never signed by us."""


def qualify(name: str, domain: str) -> str:
    """`name@domain` for a bare name (Postfix's myorigin); anything else, "" too, as it is."""
    return f"{name}@{domain}" if name and "@" not in name else name


def check_address(address: str) -> None:
    """Reject what cannot go into MAIL FROM / RCPT TO without quoting trouble."""
    if "@" not in address:
        raise AddressError(f"{address!r}: no domain (expected local@domain)")
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise AddressError(f"{address!r}: empty local part or domain")
    if _NOT_IN_PATH.search(address):
        raise AddressError(f"{address!r}: contains characters not allowed in a path")
    if len(address.encode()) > 254:
        raise AddressError(f"{address!r}: longer than 254 octets (RFC 5321 4.5.3.1.3)")


def domain_of(address: str) -> str:
    """The recipient domain in its lookup form: lower-case, IDNA A-labels."""
    domain = address.rpartition("@")[2].rstrip(".").lower()
    if domain.startswith("[") and domain.endswith("]"):
        return domain
    if domain.isascii():
        return domain
    import idna  # only international domains pay for its tables (sendmail starts fast)

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"{address!r}: invalid international domain ({exc})") from exc


def lookup_domain(text: str) -> str:
    """A domain given by a user (command line) in lookup form; AddressError if it is none.

    Unlike domain_of, which reads what a checked address holds, this judges the
    whole input: empty labels, controls, overlong names, address literals.
    """
    if _NOT_IN_PATH.search(text) or "@" in text:
        raise AddressError(f"{text[:80]!r}: not a domain name")
    domain = domain_of(f"x@{text}")
    labels = domain.split(".")
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f"{text[:80]!r}: not a domain name")
    return domain


def canonical_line_ends(raw: bytes) -> bytes:
    """Every bare CR and bare LF in ``raw`` made a CRLF."""
    crlf = raw.count(b"\r\n")
    # Three C-speed counts spare the regex for data that is already canonical (the norm).
    bare = raw.count(b"\n") != crlf or raw.count(b"\r") != crlf
    return _BARE_LINE_END.sub(b"\r\n", raw) if bare else raw


def canonical_data(raw: bytes) -> bytes:
    """Normalise every line ending to CRLF and make the data end with one."""
    data = canonical_line_ends(raw)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def header_section(data: bytes) -> bytes:
    """The header section of canonical data: its fields with the last CRLF, not the blank line.

    Data that starts with the blank line has none (RFC 5322 2.1); data without
    a blank line is all header section.
    """
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def message_id(data: bytes) -> str | None:
    """The Message-ID field's value, unfolded, for log lines (which escape it); at most 200."""
    unfolded = header_section(data).replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    for line in unfolded.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            return value.strip().decode("utf-8", "replace")[:200] or None
    return None


def split_header_section(data: bytes) -> tuple[bytes, bytes]:
    """(header section, body) of canonical data; the blank line between them is dropped."""
    headers = header_section(data)
    return headers, data[len(headers) + 2 :]


def dot_stuff(data: bytes) -> bytes:
    """Transparency per RFC 5321 4.5.2, on canonical data; the terminator is not added."""
    return DotStuffer().feed(data)


class DotStuffer:
    """Dot-stuffing of canonical data that arrives in chunks (a body read from the queue).

    A line may begin in one chunk and its CRLF end in the one before, even split
    between them (CR at the end of one, LF "." at the start of the next), so the last two
    octets of the data so far are kept.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the data starts at the beginning of a line

    @property
    def at_line_start(self) -> bool:
        """Whether the data so far ends with CRLF (or is empty)."""
        return self._tail == b"\r\n"

    def feed(self, chunk: bytes) -> bytes:
        """`chunk` stuffed, given every chunk before it."""
        if not chunk:
            return chunk
        # find() allocates nothing: most messages have no line to stuff, and keep their bytes.
        stuffed = chunk.replace(b"\r\n.", b"\r\n..") if b"\r\n." in chunk else chunk
        if chunk[:1] == b"." and self._tail == b"\r\n":
            stuffed = b"." + stuffed
        elif chunk[:2] == b"\n." and self._tail[-1:] == b"\r":
            stuffed = b"\n." + stuffed[1:]
        self._tail = (self._tail + chunk[-2:])[-2:]
        return stuffed
