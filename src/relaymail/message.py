"""Envelopes, addresses and the canonical form of message data.

Message data crosses module borders in one canonical form (canonical.py):
bytes with CRLF line endings and no dot-stuffing. The address checks
(address.py) and the canonical form live in modules of their own, which
`sendmail` imports without this one; they are re-exported here.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from .address import check_address, check_envelope, check_mailbox, domain_key, domain_of, qualify
from .canonical import canonical_data, canonical_line_ends, header_section, split_header_section
from .dsn_request import NO_DSN, DsnRequest
from .errors import AddressError
from .headers import has_control_characters

__all__ = [
    "DotStuffer",
    "Envelope",
    "Origin",
    "canonical_data",
    "canonical_line_ends",
    "check_address",
    "check_mailbox",
    "domain_key",
    "domain_of",
    "dot_stuff",
    "header_section",
    "lookup_domain",
    "message_id",
    "qualify",
    "split_header_section",
]

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


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

    Immutable, compared by value, checked when made (address.check_envelope, which
    `sendmail` calls without this module). A NamedTuple rather than a dataclass:
    one is made for every message, and a tuple is the cheapest to make and compare.
    """

    __slots__ = ()

    def __new__(
        cls,
        sender: str,
        recipients: tuple[str, ...],
        requiretls: bool = False,
        dsn: DsnRequest | None = None,
    ) -> Envelope:
        check_envelope(sender, recipients)
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


def lookup_domain(text: str) -> str:
    """A domain given by a user (command line) in lookup form; AddressError if it is none.

    Unlike domain_of, which reads what a checked address holds, this judges the
    whole input: empty labels, controls, overlong names, address literals.
    """
    if "@" in text or " " in text or "<" in text or ">" in text or has_control_characters(text):
        raise AddressError(f"{text[:80]!r}: not a domain name")
    domain = domain_of(f"x@{text}")
    labels = domain.split(".")
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f"{text[:80]!r}: not a domain name")
    return domain


def message_id(data: bytes) -> str | None:
    """The Message-ID field's value, unfolded, for log lines (which escape it); at most 200."""
    unfolded = header_section(data).replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    for line in unfolded.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            return value.strip().decode("utf-8", "replace")[:200] or None
    return None


def dot_stuff(data: bytes) -> bytes:
    """Transparency per RFC 5321 4.5.2, on canonical data; the terminator is not added."""
    return DotStuffer().feed(data)


class DotStuffer:
    """Dot-stuffing of canonical data that arrives in chunks (a body read from the queue).

    A line may begin in one chunk and its CRLF end in the one before, even split
    between them (CR at the end of one, LF "." at the start of the next), so the last two
    octets of the data so far are kept.
    """

    __slots__ = ("_stuff", "_tail")

    def __init__(self, *, stuff: bool = True) -> None:
        """`stuff=False`: data known to have no line that starts with "." (the intake
        says so of what it received) is passed on unsearched, its line ends followed."""
        self._stuff = stuff
        self._tail = b"\r\n"  # the data starts at the beginning of a line

    @property
    def at_line_start(self) -> bool:
        """Whether the data so far ends with CRLF (or is empty)."""
        return self._tail == b"\r\n"

    def feed(self, chunk: bytes) -> bytes:
        """`chunk` stuffed, given every chunk before it."""
        if not chunk:
            return chunk
        stuffed = chunk
        if self._stuff:
            # `in` allocates nothing: most messages have no line to stuff, and keep their bytes.
            if b"\r\n." in chunk:
                stuffed = chunk.replace(b"\r\n.", b"\r\n..")
            if chunk[:1] == b"." and self._tail == b"\r\n":
                stuffed = b"." + stuffed
            elif chunk[:2] == b"\n." and self._tail[-1:] == b"\r":
                stuffed = b"\n." + stuffed[1:]
        self._tail = (self._tail + chunk[-2:])[-2:]
        return stuffed
