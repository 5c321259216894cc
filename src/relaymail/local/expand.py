"""Local names: bare names qualified with the local domain, aliases expanded. Pure.

Applied where mail enters the queue, so a queued envelope already carries its
final recipients and the scheduler never sees an alias.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..message import qualify
from .aliases import Aliases, alias_key

__all__ = ["Expansion", "expand", "expansions", "merged", "qualify"]


@dataclass(frozen=True, slots=True)
class Expansion:
    """What one recipient became: itself, qualified, or the addresses its alias lists."""

    original: str
    recipients: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.recipients != (self.original,)


def expansions(recipients: Sequence[str], aliases: Aliases, domain: str) -> tuple[Expansion, ...]:
    """Each recipient's expansion, in order (for logging what became of whom)."""
    return tuple(
        Expansion(r, _unique(_leaves(qualify(r, domain), aliases, domain, ()))) for r in recipients
    )


def merged(found: Sequence[Expansion]) -> tuple[str, ...]:
    """The recipients of all expansions, each once, in first-seen order."""
    return _unique(a for e in found for a in e.recipients)


def expand(recipients: Sequence[str], aliases: Aliases, domain: str) -> tuple[str, ...]:
    """The final recipients: qualified, aliases expanded (nested), duplicates removed."""
    return merged(expansions(recipients, aliases, domain))


def _leaves(address: str, aliases: Aliases, domain: str, path: tuple[str, ...]) -> Iterator[str]:
    key = alias_key(address, domain)
    alias = aliases.get(key)
    # On the path: a name that lists itself (the only cycle parse_aliases lets
    # through) is kept as an address, not expanded again.
    if alias is None or alias.name in path:
        yield address
        return
    for target in alias.targets:
        qualified = qualify(target.address, domain)
        if target.expand:
            yield from _leaves(qualified, aliases, domain, (*path, alias.name))
        else:
            yield qualified


def _unique(addresses: Iterator[str] | Sequence[str]) -> tuple[str, ...]:
    # The domain is case-insensitive everywhere; the local part is kept as
    # written (RFC 5321 2.4), so only exact duplicates of it are dropped.
    seen: dict[str, str] = {}
    for address in addresses:
        local, at, domain = address.rpartition("@")
        seen.setdefault(f"{local}{at}{domain.lower()}", address)
    return tuple(seen.values())
