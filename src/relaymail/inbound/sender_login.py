"""Sender login binding: an authenticated user sends only as the addresses it was given.

Pure: the envelope sender at MAIL, the From: and Sender: fields at the end of DATA,
each judged against the login's `AddressSet` (Postfix's reject_sender_login_mismatch,
maddy's and chasquid's default). Header fields are read with the email package's
RFC 5322 parser; a field it reads only with a defect is refused rather than judged,
because a reader downstream may see a different address in it than we did.
"""

from __future__ import annotations

import email.errors
import email.policy
from email.headerregistry import AddressHeader, BaseHeader
from email.parser import HeaderParser
from typing import Final

from ..address_set import AddressSet
from ..message import header_section
from .protocol import printable

__all__ = ["envelope_refusal", "header_refusal"]

_CHECKED_FIELDS: Final = ("From", "Sender")
_PARSER: Final = HeaderParser(policy=email.policy.default)


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
        text = header_section(data).decode("utf-8")
    except UnicodeDecodeError:
        return "553 5.7.1 Header section is not UTF-8; From: cannot be checked"
    fields = _PARSER.parsestr(text)
    for name in _CHECKED_FIELDS:
        for value in fields.get_all(name) or ():
            readable = isinstance(value, AddressHeader) and isinstance(value, BaseHeader)
            if not readable or any(
                isinstance(d, email.errors.InvalidHeaderDefect) for d in value.defects
            ):
                return f"553 5.7.1 {name}: header cannot be read as addresses"
            for address in value.addresses:
                if not grant.matches(address.addr_spec):
                    shown = printable(address.addr_spec, 100)  # from the client: no controls back
                    return f"553 5.7.1 {name}: address <{shown}> is not owned by user {user}"
    return None
