"""Sender login binding: an authenticated user sends only as the addresses it was given.

Pure: the envelope sender at MAIL, the From: and Sender: fields at the end of DATA,
each judged against the login's `AddressSet` (Postfix's reject_sender_login_mismatch,
maddy's and chasquid's default). The fields are split here and each
value is read with the email package's RFC 5322 address parser; a field it reads only
with a defect, or a header section that is not plainly fields, is refused rather than
judged, because a reader downstream may see a different address in it than we did.
"""

from __future__ import annotations

import email.errors
import re
from typing import Final

from ..address_field import UnreadableField, read_address_field
from ..address_set import AddressSet
from ..message import header_section
from .protocol import printable

__all__ = ["envelope_refusal", "header_refusal"]

_CHECKED_FIELDS: Final = ("From", "Sender")
# What some reader downstream may take for the end of a line (str.splitlines does), or
# of the string (NUL, in C).
_LINE_BREAKS: Final = re.compile(r"[\x00\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_UNDECODABLE: Final = re.compile(r"[\udc80-\udcff]")


def envelope_refusal(grant: AddressSet, user: str, sender: str) -> str | None:
    """The 553 reply for a MAIL FROM the login may not use; None when it may.

    The null sender carries no identity to forge (the header check still applies).
    """
    if not sender or grant.matches(sender):
        return None
    return f"553 5.7.1 Sender address <{sender}> is not owned by user {user}"


def header_refusal(grant: AddressSet, user: str, data: bytes) -> str | None:
    """The 553 reply for a From:/Sender: address the login may not use; None when all may."""
    try:
        fields = _fields(header_section(data))
    except _Unreadable as exc:
        return f"553 5.7.1 Header section cannot be checked: {exc}"
    for name, value in fields:
        try:
            parsed = read_address_field(name, value)
        except UnreadableField:
            parsed = None
        if parsed is None or any(
            isinstance(d, email.errors.InvalidHeaderDefect) for d in parsed.defects
        ):
            return f"553 5.7.1 {name}: header cannot be read as addresses"
        for address in parsed.addresses:
            if not grant.matches(address.addr_spec):
                shown = printable(address.addr_spec, 100)  # from the client: no controls back
                return f"553 5.7.1 {name}: address <{shown}> is not owned by user {user}"
    return None


class _Unreadable(Exception):
    pass


def _fields(section: bytes) -> list[tuple[str, str]]:
    """The From: and Sender: fields of a header section, unfolded, by their canonical name.

    Split here rather than by the email package, whose parser takes "From : x" (RFC 5322
    obs-optional, honoured by other readers) for another field and ends the header
    section at the first line that is not a field, hiding the fields after it.
    """
    # Other fields may be in a legacy 8-bit charset; only the checked ones must be UTF-8.
    lines = section.decode("utf-8", "surrogateescape").split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    fields: list[list[str]] = []
    for line in lines:
        if _LINE_BREAKS.search(line):
            raise _Unreadable("a line break or NUL inside a line")
        if line[:1] in (" ", "\t"):
            if not fields:
                raise _Unreadable("it starts with a continuation line")
            fields[-1][1] += line
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise _Unreadable("a line that is not a header field")
        fields.append([name.rstrip(" \t"), value])
    checked = [
        (canonical, value)
        for name, value in fields
        for canonical in _CHECKED_FIELDS
        if name.casefold() == canonical.casefold()
    ]
    for name, value in checked:
        if _UNDECODABLE.search(value):
            raise _Unreadable(f"{name}: is not UTF-8")
    return checked
