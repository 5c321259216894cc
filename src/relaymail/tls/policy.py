"""The TLS policy: per-domain levels and the decision table, pure and I/O-free.

This module is the README's policy table in code. `decide()` maps
(level, tempfail_fallback, what happened at the STARTTLS step) to an action;
every action carries the sentence that explains it in logs and results.
Keep the table here next to the README's when changing either.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..resolver import governing_key


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


class Action(enum.Enum):
    USE_TLS = "use TLS"
    CONTINUE_CLEAR = "continue in clear on the same connection"
    RECONNECT_CLEAR = "reconnect to the same host in clear without STARTTLS"
    HOST_FAILS = "give up on this host"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str


# What `may` does after each event. tempfail_fallback (the seed's option, Exim's
# tls_tempfail_tryclear) governs the rows where TLS was attempted and broke for
# what may be a passing reason: off, those hosts fail instead of going clear.
_TEMPORARY = frozenset({Event.TEMPFAIL, Event.HANDSHAKE_FAILED, Event.INJECTION})
_MAY: dict[Event, Action] = {
    Event.NOT_OFFERED: Action.CONTINUE_CLEAR,
    Event.PERMFAIL: Action.CONTINUE_CLEAR,
    Event.TEMPFAIL: Action.CONTINUE_CLEAR,
    Event.NO_REPLY: Action.HOST_FAILS,
    Event.HANDSHAKE_FAILED: Action.RECONNECT_CLEAR,
    Event.INJECTION: Action.RECONNECT_CLEAR,
}


def wants_starttls(level: Level) -> bool:
    """Whether to send STARTTLS when the server offers it."""
    return level is not Level.NONE


def decide(
    level: Level,
    tempfail_fallback: bool,
    event: Event,
    detail: str = "",
    promised: str | None = None,
) -> Decision:
    """What to do after `event` under `level`; `detail` is the server's words, for the reason.

    `promised` says why the domain is known to do TLS (downgrade memory): then a
    missing STARTTLS is a possible stripping attack, not a plain server.
    """
    what = f"{event.value} ({detail})" if detail else event.value
    if event is Event.NOT_OFFERED and promised and level is Level.MAY:
        return Decision(
            Action.HOST_FAILS,
            f"{what}, but {promised}: possible STARTTLS stripping; deferred until "
            "`relaymail tls forget` or remember_for passes",
        )
    if event is Event.VERIFIED:
        return Decision(Action.USE_TLS, what)
    if event is Event.UNVERIFIED:
        if level.requires_verification:
            return Decision(
                Action.HOST_FAILS, f"{what}; policy {level.value} requires a verified peer"
            )
        return Decision(Action.USE_TLS, f"{what}; policy {level.value} accepts it")
    if level is Level.NONE:
        return Decision(Action.CONTINUE_CLEAR, f"{what}; policy none does not use TLS")
    if level.requires_tls:
        return Decision(
            Action.HOST_FAILS, f"{what}; policy {level.value} never sends mail in clear"
        )
    if event is Event.INJECTION:
        what += ", a possible STARTTLS response injection; those bytes were discarded"
    if event in _TEMPORARY and not tempfail_fallback:
        return Decision(Action.HOST_FAILS, f"{what}; tempfail_fallback is off")
    action = _MAY[event]
    if action is Action.HOST_FAILS:
        return Decision(action, f"{what}; the host is unusable")
    because = "tempfail_fallback is on" if event in _TEMPORARY else "policy may"
    return Decision(action, f"{what}; {because}; {action.value}")


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
