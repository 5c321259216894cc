"""The README's policy table, row by row, as pure decisions."""

import pytest

from relaymail.errors import LocalProtocolError
from relaymail.tls.downgrade import Downgrade, DowngradeKind, Remembered, TlsLevel
from relaymail.tls.policy import (
    Action,
    Event,
    Level,
    PolicyTable,
    UnreachableCell,
    UnreachableRequiretls,
    decide,
    wants_starttls,
)

CLEAR, RECONNECT, FAIL, TLS = (
    Action.CONTINUE_CLEAR,
    Action.RECONNECT_CLEAR,
    Action.HOST_FAILS,
    Action.USE_TLS,
)
# Columns: may+fallback, may-no-fallback, encrypt, verify, dane (none never sends STARTTLS).
TABLE = {
    Event.NOT_OFFERED: (CLEAR, CLEAR, FAIL, FAIL, FAIL),
    Event.VERIFIED: (TLS, TLS, TLS, TLS, TLS),
    Event.UNVERIFIED: (TLS, TLS, TLS, FAIL, FAIL),
    Event.TEMPFAIL: (CLEAR, FAIL, FAIL, FAIL, FAIL),
    Event.PERMFAIL: (CLEAR, CLEAR, FAIL, FAIL, FAIL),
    Event.NO_REPLY: (FAIL, FAIL, FAIL, FAIL, FAIL),
    Event.HANDSHAKE_FAILED: (RECONNECT, FAIL, FAIL, FAIL, FAIL),
    Event.INJECTION: (RECONNECT, FAIL, FAIL, FAIL, FAIL),
}
# The events of the STARTTLS step; the last one is looked for only for a REQUIRETLS message.
STARTTLS_EVENTS = [e for e in Event if e is not Event.REQUIRETLS_NOT_OFFERED]
REFUSED = Action.REQUIRETLS_REFUSED


@pytest.mark.parametrize("event", STARTTLS_EVENTS)
def test_decision_table_matches_the_readme(event):
    may_on, may_off, encrypt, verify, dane = TABLE[event]
    assert decide(Level.MAY, True, event).action is may_on
    assert decide(Level.ENCRYPT, True, event).action is encrypt
    assert decide(Level.ENCRYPT, False, event).action is encrypt
    assert decide(Level.VERIFY, True, event).action is verify
    assert decide(Level.VERIFY, False, event).action is verify
    assert decide(Level.MAY, False, event).action is may_off
    assert decide(Level.DANE, True, event).action is dane
    assert decide(Level.DANE, False, event).action is dane


def test_none_goes_clear_without_starttls_and_cannot_meet_what_follows_it():
    assert decide(Level.NONE, True, Event.NOT_OFFERED).action is CLEAR
    assert decide(Level.NONE, False, Event.NOT_OFFERED).action is CLEAR
    for event in set(Event) - {Event.NOT_OFFERED}:
        for fallback in (True, False):
            with pytest.raises(UnreachableCell) as raised:
                decide(Level.NONE, fallback, event)
            assert isinstance(raised.value, LocalProtocolError)
            assert raised.value.event is event


def test_none_never_starttls():
    assert not wants_starttls(Level.NONE)
    assert all(wants_starttls(level) for level in (Level.MAY, Level.ENCRYPT, Level.VERIFY))


def test_required_levels_never_allow_clear_whatever_happened():
    for level in (Level.ENCRYPT, Level.VERIFY, Level.DANE):
        for event in STARTTLS_EVENTS:
            for fallback in (True, False):
                action = decide(level, fallback, event).action
                assert action in (TLS, FAIL), (level, event, fallback)


def test_requiretls_takes_only_a_verified_peer_whatever_tempfail_fallback_says():
    for level in (Level.VERIFY, Level.DANE):
        for fallback in (True, False):
            actions = {e: decide(level, fallback, e, requiretls=True).action for e in Event}
            assert actions == {
                Event.VERIFIED: TLS,
                # What shows the host cannot take it: the mail bounces if no host can.
                Event.NOT_OFFERED: REFUSED,
                Event.UNVERIFIED: REFUSED,
                Event.PERMFAIL: REFUSED,
                Event.REQUIRETLS_NOT_OFFERED: REFUSED,
                # What may pass: the host fails for now, the mail is deferred.
                Event.TEMPFAIL: FAIL,
                Event.NO_REPLY: FAIL,
                Event.HANDSHAKE_FAILED: FAIL,
                Event.INJECTION: FAIL,
            }, (level, fallback)
            assert all(a.gives_up for a in actions.values() if a is not TLS)


def test_requiretls_has_no_cell_under_a_level_that_authenticates_no_name():
    for level in (Level.NONE, Level.MAY, Level.ENCRYPT):
        with pytest.raises(UnreachableRequiretls) as raised:
            decide(level, True, Event.VERIFIED, requiretls=True)
        assert isinstance(raised.value, LocalProtocolError)
        assert raised.value.level is level


def test_only_a_requiretls_message_looks_for_the_keyword():
    for level in Level:
        with pytest.raises(UnreachableCell):
            decide(level, True, Event.REQUIRETLS_NOT_OFFERED)


def test_a_requiretls_decision_says_requiretls_decided_it():
    refused = decide(Level.VERIFY, True, Event.UNVERIFIED, "self-signed", requiretls=True)
    failed = decide(Level.DANE, True, Event.TEMPFAIL, "454 4.7.0 later", requiretls=True)
    assert "REQUIRETLS (RFC 8689)" in refused.reason and "self-signed" in refused.reason
    assert "REQUIRETLS (RFC 8689)" in failed.reason and "454 4.7.0 later" in failed.reason
    assert refused.reason != failed.reason


def test_reasons_explain_the_decision_in_words():
    reason = decide(Level.MAY, True, Event.TEMPFAIL, "454 4.7.0 TLS not available").reason
    assert "454 4.7.0 TLS not available" in reason
    assert "tempfail_fallback is on" in reason
    assert "continue in clear" in reason
    assert "tempfail_fallback is off" in decide(Level.MAY, False, Event.TEMPFAIL).reason
    assert "never sends mail in clear" in decide(Level.ENCRYPT, True, Event.PERMFAIL).reason
    assert "injection" in decide(Level.MAY, True, Event.INJECTION).reason


def test_policy_lookup_exact_then_parent_then_default():
    table = PolicyTable(
        levels=(("bank.example", Level.ENCRYPT), (".corp.example", Level.VERIFY)),
        default=Level.MAY,
    )
    assert table.level_for("bank.example")[0] is Level.ENCRYPT
    assert table.level_for("sub.bank.example")[0] is Level.MAY
    assert table.level_for("mx.eu.corp.example")[0] is Level.VERIFY
    assert table.level_for("other.example") == (Level.MAY, "default level")


SINCE = 1793700000.0  # 2026-11-03
VERIFIED_SINCE = Remembered("bank.example", TlsLevel.VERIFIED, SINCE, SINCE)
TLS_SINCE = Remembered("bank.example", TlsLevel.TLS, SINCE, SINCE)


def test_remembered_tls_turns_a_missing_starttls_into_a_failed_host():
    decision = decide(Level.MAY, True, Event.NOT_OFFERED, remembered=TLS_SINCE)
    assert decision.action is FAIL
    assert decision.downgrade == Downgrade(TLS_SINCE, TlsLevel.CLEAR)
    assert decision.downgrade.kind is DowngradeKind.STRIPPING
    assert "TLS since 2026-11-03, now in clear: possible STARTTLS stripping" in decision.reason


def test_remembered_verified_tls_catches_an_unverified_certificate():
    for level in (Level.MAY, Level.ENCRYPT):
        decision = decide(level, True, Event.UNVERIFIED, "self-signed", remembered=VERIFIED_SINCE)
        assert decision.action is FAIL
        assert decision.downgrade == Downgrade(VERIFIED_SINCE, TlsLevel.TLS)
        assert decision.downgrade.kind is DowngradeKind.CERTIFICATE
        assert "verified since 2026-11-03, now an unverified certificate: possible downgrade" in (
            decision.reason
        )
    assert decide(Level.MAY, True, Event.UNVERIFIED, remembered=TLS_SINCE).action is TLS


# Every way a session can end up below what was remembered: each one is deferred.
@pytest.mark.parametrize(
    ("event", "fallback"),
    [
        (Event.NOT_OFFERED, True),
        (Event.TEMPFAIL, True),  # a forged 454 would otherwise send in clear
        (Event.PERMFAIL, True),
        (Event.PERMFAIL, False),
        (Event.HANDSHAKE_FAILED, True),  # `may` would reconnect in clear
        (Event.INJECTION, True),
    ],
)
def test_every_road_to_clear_is_closed_by_the_memory(event, fallback):
    assert decide(Level.MAY, fallback, event).action in (CLEAR, RECONNECT)
    assert decide(Level.MAY, fallback, event, remembered=TLS_SINCE).action is FAIL


def test_the_memory_changes_nothing_at_or_above_its_level_nor_under_none():
    assert decide(Level.MAY, True, Event.VERIFIED, remembered=VERIFIED_SINCE).action is TLS
    assert decide(Level.ENCRYPT, True, Event.UNVERIFIED, remembered=TLS_SINCE).action is TLS
    # `none` is the operator's own "no TLS": the memory does not overrule it.
    assert decide(Level.NONE, True, Event.NOT_OFFERED, remembered=VERIFIED_SINCE).action is CLEAR
    # A host that fails anyway keeps its own reason.
    failed = decide(Level.VERIFY, True, Event.UNVERIFIED, remembered=VERIFIED_SINCE)
    assert failed.action is FAIL and failed.downgrade is None
