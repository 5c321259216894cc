"""SMTP AUTH accounts: a password hash and the sender addresses the login may use.

A `[users]` entry is either the hash alone or a table:

    alice = "$scrypt$..."                       # sends as its login (see below)
    [users.bob]
    password_hash = "$scrypt$..."
    addresses = ["bob@example.org", "@example.net"]   # "@domain": any address there

Without `addresses`, a login that is an address (`carol@example.org`) may send as
that address only, as in maddy and chasquid where the login *is* the address; a bare
login (`alice`) may send as `alice@` the local domain, the address `sendmail` would
give the same name. Matching: `AddressSet.allows`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .address_set import AddressSet
from .errors import AddressError
from .passwords import PasswordHash

__all__ = ["UserAccount", "parse_users"]


@dataclass(frozen=True, slots=True)
class UserAccount:
    password: PasswordHash
    senders: AddressSet
    """What the login may send as."""


def parse_users(raw: Mapping[str, Any], local_domain: str) -> dict[str, UserAccount]:
    """The [users] table; the ValueError names the user whose entry is bad."""
    accounts: dict[str, UserAccount] = {}
    for user, entry in raw.items():
        if not user or any(c.isspace() or ord(c) < 32 for c in user):
            raise ValueError(f"user {user!r}: a user name must be non-empty, without spaces")
        # The shapes are checked by config.parse_config, which names the key.
        encoded = entry if isinstance(entry, str) else entry["password_hash"]
        addresses = None if isinstance(entry, str) else entry.get("addresses")
        try:
            password = PasswordHash.parse(encoded)
            own = user if "@" in user else f"{user}@{local_domain}"
            senders = AddressSet.of(tuple(addresses) if addresses is not None else (own,))
        except (ValueError, AddressError) as exc:
            raise ValueError(f"user {user!r}: {exc}") from None
        accounts[user] = UserAccount(password, senders)
    return accounts
