"""The TLS policy: per-domain levels and the decision table, pure and I/O-free.

`TABLE` is the README's policy table as data, row for row and column for
column (tests/unit/test_policy_readme.py reads the README and compares every
cell). A cell the STARTTLS step cannot reach is absent: a `none` session never
sends STARTTLS, so nothing that follows a STARTTLS can happen under it, and
asking about it is a bug in the caller (`UnreachableCell`). `decide()` adds
the one thing the table cannot hold, downgrade memory (tls/downgrade.py), and
words the reason that logs and results carry.

A message sent with RFC 8689's REQUIRETLS has a column of its own, whatever
`tempfail_fallback` says: only a verified peer that offers REQUIRETLS after TLS
takes it, and a host that plainly cannot (`REQUIRETLS_REFUSED`) is told apart
from one that failed for now, since only the first kind makes the mail bounce.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import LocalProtocolError
from ..resolver import governing_key
from .downgrade import Downgrade, Remembered, TlsLevel, below_memory


class Level(enum.Enum):
    """How much TLS a domain requires (Postfix's smtp_tls_security_level names)."""

    NONE = "none"  # never STARTTLS
    MAY = "may"  # opportunistic: TLS when it works, clear otherwise
    ENCRYPT = "encrypt"  # TLS required, any certificate
    VERIFY = "verify"  # TLS required, certificate must chain to the trust store and match
    # Not a configuration value: what a host with usable TLSA records gets (RFC 7672).
    DANE = "dane"  # TLS required, certificate must match the DNSSEC-signed TLSA records

    @property
    def requires_tls(self) -> bool:
        return self in (Level.ENCRYPT, Level.VERIFY, Level.DANE)

    @property
    def requires_verification(self) -> bool:
        return self in (Level.VERIFY, Level.DANE)


CONFIG_LEVELS = (Level.NONE, Level.MAY, Level.ENCRYPT, Level.VERIFY)


class Event(enum.Enum):
    """What happened at the STARTTLS step of one session."""

    NOT_OFFERED = "STARTTLS not advertised"
    TEMPFAIL = "STARTTLS refused with a 4xx reply"
    PERMFAIL = "STARTTLS refused with a 5xx reply"
    NO_REPLY = "no reply to STARTTLS"
    HANDSHAKE_FAILED = "TLS handshake failed after 220"
    INJECTION = "cleartext bytes followed the 220 to STARTTLS"
    UNVERIFIED = "TLS up, certificate not verified"
    VERIFIED = "TLS up, certificate verified"
    # Seen in the EHLO reply after TLS, and only looked for when the message requires it.
    REQUIRETLS_NOT_OFFERED = "TLS up, certificate verified, REQUIRETLS not offered after TLS"


class Action(enum.Enum):
    USE_TLS = "use TLS"
    CONTINUE_CLEAR = "continue in clear on the same connection"
    RECONNECT_CLEAR = "reconnect to the same host in clear without STARTTLS"
    HOST_FAILS = "give up on this host"
    # RFC 8689 4.2.1: the host cannot take a REQUIRETLS message; when no host can, it bounces.
    REQUIRETLS_REFUSED = "give up on this host: it cannot meet REQUIRETLS"

    @property
    def gives_up(self) -> bool:
        return self in (Action.HOST_FAILS, Action.REQUIRETLS_REFUSED)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    # Set when downgrade memory made the host fail: what was remembered, what was seen.
    downgrade: Downgrade | None = None


class Column(enum.Enum):
    """A column of the policy table: the level, and for `may` the tempfail_fallback option."""

    NONE = "none"
    MAY_FALLBACK = "may, fallback on"
    MAY_NO_FALLBACK = "may, fallback off"
    ENCRYPT = "encrypt"
    VERIFY = "verify"
    DANE = "dane"
    REQUIRETLS = "REQUIRETLS message, verify or dane"

    @classmethod
    def of(cls, level: Level, tempfail_fallback: bool, requiretls: bool = False) -> Column:
        # tempfail_fallback (the seed's option, Exim's tls_tempfail_tryclear) applies to
        # `may` only: the required levels never go clear whatever it says.
        if requiretls:
            if not level.requires_verification:
                # Nothing authenticates the host's name: delivery/requiretls.py refuses
                # such hosts before any session, so there is no cell to look up.
                raise UnreachableRequiretls(level)
            return cls.REQUIRETLS
        if level is Level.MAY:
            return cls.MAY_FALLBACK if tempfail_fallback else cls.MAY_NO_FALLBACK
        return cls(level.value)


class UnreachableCell(LocalProtocolError):
    """decide() was asked about an event the STARTTLS step cannot observe under that level."""

    def __init__(self, event: Event, column: Column) -> None:
        super().__init__(f"{event.value!r} cannot happen under {column.value!r}")
        self.event = event
        self.column = column


class UnreachableRequiretls(LocalProtocolError):
    """decide() was asked about a REQUIRETLS message under a level that verifies no name."""

    def __init__(self, level: Level) -> None:
        super().__init__(f"a REQUIRETLS message never gets a session under {level.value!r}")
        self.level = level


_TLS, _CLEAR, _RECONNECT, _FAIL, _REFUSED = (
    Action.USE_TLS,
    Action.CONTINUE_CLEAR,
    Action.RECONNECT_CLEAR,
    Action.HOST_FAILS,
    Action.REQUIRETLS_REFUSED,
)
_NEVER = None  # the README's "-": the step cannot get there under that column


def _row(*cells: Action | None) -> Mapping[Column, Action]:
    return MappingProxyType(
        {column: action for column, action in zip(Column, cells, strict=True) if action is not None}
    )


TABLE: Mapping[Event, Mapping[Column, Action]] = MappingProxyType(
    {
        # Columns: none, may with fallback on, may with fallback off, encrypt, verify, dane,
        # REQUIRETLS. In the last, what may pass (a 4xx, a broken handshake, perhaps an
        # attacker's doing) fails the host for now; what shows the host cannot, refuses.
        Event.NOT_OFFERED: _row(_CLEAR, _CLEAR, _CLEAR, _FAIL, _FAIL, _FAIL, _REFUSED),
        Event.VERIFIED: _row(_NEVER, _TLS, _TLS, _TLS, _TLS, _TLS, _TLS),
        Event.UNVERIFIED: _row(_NEVER, _TLS, _TLS, _TLS, _FAIL, _FAIL, _REFUSED),
        Event.TEMPFAIL: _row(_NEVER, _CLEAR, _FAIL, _FAIL, _FAIL, _FAIL, _FAIL),
        Event.PERMFAIL: _row(_NEVER, _CLEAR, _CLEAR, _FAIL, _FAIL, _FAIL, _REFUSED),
        Event.NO_REPLY: _row(_NEVER, _FAIL, _FAIL, _FAIL, _FAIL, _FAIL, _FAIL),
        Event.HANDSHAKE_FAILED: _row(_NEVER, _RECONNECT, _FAIL, _FAIL, _FAIL, _FAIL, _FAIL),
        Event.INJECTION: _row(_NEVER, _RECONNECT, _FAIL, _FAIL, _FAIL, _FAIL, _FAIL),
        # Only a REQUIRETLS message looks for the keyword (RFC 8689 4.2.1).
        Event.REQUIRETLS_NOT_OFFERED: _row(
            _NEVER, _NEVER, _NEVER, _NEVER, _NEVER, _NEVER, _REFUSED
        ),
    }
)


def wants_starttls(level: Level) -> bool:
    """Whether to send STARTTLS when the server offers it."""
    return level is not Level.NONE


# What a level that never sends STARTTLS does with a server that offers it.
NOT_ASKED = Decision(Action.CONTINUE_CLEAR, "STARTTLS not asked; policy none does not use TLS")


def decide(
    level: Level,
    tempfail_fallback: bool,
    event: Event,
    detail: str = "",
    remembered: Remembered | None = None,
    *,
    requiretls: bool = False,
) -> Decision:
    """What to do after `event` under `level`; `detail` is the server's words, for the reason.

    `remembered` is the downgrade memory of the domain: a session that would reach less
    than it (tls/downgrade.py) is deferred as a possible attack, not taken for a plain
    server. It counts under `may` and `encrypt`; `none` is the operator's word for "no
    TLS", and `verify` and `dane` already refuse everything below a verified peer.
    `requiretls`: the message was sent with REQUIRETLS (its own column).
    """
    what = f"{event.value} ({detail})" if detail else event.value
    if requiretls:
        cell = TABLE[event][Column.of(level, tempfail_fallback, requiretls=True)]
        if event is Event.VERIFIED:
            return Decision(cell, f"{what}; REQUIRETLS needs the keyword after TLS too")
        why = "cannot meet it" if cell is Action.REQUIRETLS_REFUSED else "fails for now"
        return Decision(cell, f"{what}; the message requires REQUIRETLS (RFC 8689): host {why}")
    column = Column.of(level, tempfail_fallback)
    action = TABLE[event].get(column)
    if action is None:
        raise UnreachableCell(event, column)
    if memory_counts(level):
        downgrade = below_memory(remembered, reached(event, action))
        if downgrade is not None:
            return Decision(
                Action.HOST_FAILS,
                f"{what}, but {downgrade}; deferred until `relaymail tls forget` "
                "or remember_for passes",
                downgrade,
            )
    return Decision(action, _reason(level, event, action, what))


def memory_counts(level: Level) -> bool:
    """Whether downgrade memory can change a decision under `level` (see decide)."""
    return level in (Level.MAY, Level.ENCRYPT)


def reached(event: Event, action: Action) -> TlsLevel | None:
    """The level a session has once `action` is taken after `event`; None if it ends."""
    if action.gives_up:
        return None
    if action is not Action.USE_TLS:
        return TlsLevel.CLEAR
    return TlsLevel.VERIFIED if event is Event.VERIFIED else TlsLevel.TLS


def _fallback_decides(event: Event) -> bool:
    """Whether tempfail_fallback changes what `may` does after `event` (TLS tried and broke)."""
    row = TABLE[event]
    return row[Column.MAY_FALLBACK] is not row[Column.MAY_NO_FALLBACK]


def _reason(level: Level, event: Event, action: Action, what: str) -> str:
    if event is Event.VERIFIED:
        return what
    if event is Event.UNVERIFIED:
        if action is Action.HOST_FAILS:
            return f"{what}; policy {level.value} requires a verified peer"
        return f"{what}; policy {level.value} accepts it"
    if level is Level.NONE:
        return f"{what}; policy none does not use TLS"
    if level.requires_tls:
        return f"{what}; policy {level.value} never sends mail in clear"
    if event is Event.INJECTION:
        what += ", a possible STARTTLS response injection; those bytes were discarded"
    fallback_decides = _fallback_decides(event)
    if action is Action.HOST_FAILS:
        why = "tempfail_fallback is off" if fallback_decides else "the host is unusable"
        return f"{what}; {why}"
    because = "tempfail_fallback is on" if fallback_decides else "policy may"
    return f"{what}; {because}; {action.value}"


DEFAULT_SOURCE = "default level"


@dataclass(frozen=True, slots=True)
class PolicyTable:
    """Per-domain levels from the configuration: exact domain, then parent '.suffix', then '*'."""

    levels: tuple[tuple[str, Level], ...] = ()
    default: Level = Level.MAY

    def level_for(self, domain: str) -> tuple[Level, str]:
        """The level for `domain` and where it comes from (for the explanation)."""
        entries = dict(self.levels)
        key = governing_key(entries, domain)
        if key is not None:
            return entries[key], f'[tls.policy] "{key}"'
        return self.default, DEFAULT_SOURCE
