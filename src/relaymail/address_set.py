"""A set of mail addresses and "@domain" entries, matched as mail software compares them.

Used for what a login may send as ([users] addresses) and for the recipients a relay
domain has (the recipient verification list).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AddressError
from .message import check_address, domain_of

__all__ = ["AddressSet"]


@dataclass(frozen=True, slots=True)
class AddressSet:
    """Addresses and whole domains: what a login may send as, which relay recipients exist.

    Compared case-insensitively (local part too, as Postfix's login maps are looked
    up), the domain in its IDNA A-label form, so `Alice@Bücher.example` matches
    `alice@xn--bcher-kva.example`.
    """

    addresses: frozenset[str]
    """Whole addresses, in `_key` form."""
    domains: frozenset[str]
    """Domains ("@domain" entries) in lookup form: any address there."""

    @classmethod
    def of(cls, entries: tuple[str, ...]) -> AddressSet:
        """From config entries; AddressError names the bad entry."""
        addresses, domains = set(), set()
        for entry in entries:
            if entry.startswith("@"):
                check_address("postmaster" + entry)
                domains.add(domain_of("postmaster" + entry))
            else:
                check_address(entry)
                addresses.add(_key(entry))
        return cls(frozenset(addresses), frozenset(domains))

    def matches(self, address: str) -> bool:
        try:
            key = _key(address)
        except AddressError:
            return False
        return key in self.addresses or key.rpartition("@")[2] in self.domains


def _key(address: str) -> str:
    local, _, _ = address.rpartition("@")
    return f"{local.casefold()}@{domain_of(address)}"
