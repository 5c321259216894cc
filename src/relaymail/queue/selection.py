"""Which messages an admin change applies to, and what the change did: values and rules, no I/O.

`relaymail queue hold|release|delete|retry` name messages by id (several,
or on stdin as `postsuper -d -` takes them) or by filters (`--from`, `--to`,
`--domain`, `--older-than`); the store applies one change to all of them in
one transaction. Every backend matches addresses by the rules here: ASCII
letters in any case (what SQLite's LIKE does), `@domain` for any address
at that domain, `""` for the null sender.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .ids import parse_queue_id
from .store import AdminAction

# What `change` does: RELEASE also makes the mail due now, RETRY leaves held mail alone.
CHANGES = frozenset({AdminAction.HOLD, AdminAction.RELEASE, AdminAction.DELETE, AdminAction.RETRY})

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """One address (`""` the null sender), or with `whole_domain` every address at a domain."""

    address: str
    whole_domain: bool = False

    @classmethod
    def parse(cls, text: str) -> AddressPattern:
        """`user@domain`, `@domain`, or `""`/`<>` for the null sender."""
        if text in ("", "<>"):
            return cls("")
        if text.startswith("@"):
            return cls(text[1:], whole_domain=True)
        return cls(text)

    def matches(self, address: str) -> bool:
        folded = address.translate(_ASCII_LOWER)
        wanted = self.address.translate(_ASCII_LOWER)
        if self.whole_domain:
            return folded.endswith("@" + wanted)
        return folded == wanted

    def like(self) -> str:
        """The same test as a LIKE pattern (ESCAPE '\\'): LIKE folds ASCII case only."""
        literal = self.address.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"%@{literal}" if self.whole_domain else literal


@dataclass(frozen=True, slots=True)
class Selection:
    """The messages that match every part given; nothing given means every message.

    `ids` are queue ids as the admin typed them (unknown ones are reported, not
    errors); `recipient` matches a recipient still to be delivered.
    """

    ids: tuple[str, ...] | None = None
    sender: AddressPattern | None = None
    recipient: AddressPattern | None = None
    received_before: float | None = None

    @property
    def everything(self) -> bool:
        return self == Selection()

    def queue_ids(self) -> frozenset[int] | None:
        """The ids named, as numbers; text that is no queue id names nothing."""
        if self.ids is None:
            return None
        return frozenset(q for q in map(parse_queue_id, self.ids) if q is not None)

    def missing(self, found: Iterable[int]) -> tuple[str, ...]:
        """The ids named (as typed, once each) that are not among `found`."""
        present = set(found)
        return tuple(dict.fromkeys(i for i in self.ids or () if parse_queue_id(i) not in present))

    def matches(self, qid: int, sender: str, pending: Iterable[str], received_at: float) -> bool:
        """The rule for a backend that filters in Python (SQL backends say the same in SQL)."""
        named = self.queue_ids()
        if named is not None and qid not in named:
            return False
        if self.sender is not None and not self.sender.matches(sender):
            return False
        if self.recipient is not None and not any(self.recipient.matches(r) for r in pending):
            return False
        return self.received_before is None or received_at < self.received_before


@dataclass(frozen=True, slots=True)
class AdminOutcome:
    """What one admin change did, message by message."""

    action: AdminAction
    changed: tuple[str, ...]  # the messages it applied to, in queue order
    held: tuple[str, ...] = ()  # retry: held messages it left alone
    missing: tuple[str, ...] = ()  # ids named that are not in the queue
    recipients: int = 0  # retry, release: waiting recipients now due (some may have been)
