"""Reading an address header field (From:, Sender:) with the email package, within bounds.

The stdlib's RFC 5322 parser is the reader we trust to see what mail readers see,
but not with hostile input: it raises IndexError, AttributeError, RecursionError
and more on values such as "<" or ",g:<a@b>;a<(<", and its time and memory grow
faster than the value (a From: of 224 KB of encoded words took 3.5 GB). Every
caller that judges an author (sender login, DKIM) reads through here, so such a
field is one refusal, never a traceback or the daemon's memory.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.errors import MessageDefect
from email.headerregistry import Address, AddressHeader, BaseHeader
from typing import Final

__all__ = ["MAX_ADDRESS_FIELD", "AddressField", "UnreadableField", "read_address_field"]

MAX_ADDRESS_FIELD: Final = 4096
"""Characters of an unfolded address field the parser is given: a real From: with a
long display name in encoded words is a few hundred."""


class UnreadableField(ValueError):
    """An address field too long, or too broken, for the parser to read."""


@dataclass(frozen=True, slots=True)
class AddressField:
    """What the parser read: the addresses, and what it found wrong on the way."""

    addresses: tuple[Address, ...]
    defects: tuple[MessageDefect, ...]


def read_address_field(name: str, value: str) -> AddressField:
    """`value` of field `name` as the email package reads it (defects included)."""
    if len(value) > MAX_ADDRESS_FIELD:
        raise UnreadableField(f"{name}: longer than {MAX_ADDRESS_FIELD} characters")
    try:
        parsed = email.policy.default.header_factory(name, value)
    except Exception:  # the parser's own failures on hostile values (module doc)
        raise UnreadableField(f"{name}: does not parse as RFC 5322 says") from None
    if not (isinstance(parsed, AddressHeader) and isinstance(parsed, BaseHeader)):
        raise UnreadableField(f"{name}: not an address field")
    return AddressField(tuple(parsed.addresses), tuple(parsed.defects))
