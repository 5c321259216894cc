"""Every cell of the README's policy table, against a real server misbehaving that way.

Columns: none | may, fallback on | may, fallback off | encrypt | verify. Each test
proves the outcome from both ends: the delivery result, and the server's transcript
(what crossed the wire in clear, how many connections were made).
"""

from __future__ import annotations

import pytest

from relaymail.delivery import AttemptResult, Status
from tests.integration.conftest import config_for, deliver, envelope_lines
from tests.peers.certs import expired_server_context, server_context, unknown_ca_server_context
from tests.peers.smtp_server import Script, StartTLS

COLUMNS = {
    "none": ("none", True),
    "may-fallback-on": ("may", True),
    "may-fallback-off": ("may", False),
    "encrypt": ("encrypt", True),
    "verify": ("verify", True),
}


def assert_never_clear(peer):
    """No MAIL, RCPT or DATA ever crossed the wire outside TLS."""
    assert all(tls for tls, _ in envelope_lines(peer)), envelope_lines(peer)


def assert_failed_host(results, peer):
    [result] = results
    assert result.status is Status.DEFERRED
    assert not peer.transactions
    assert_never_clear(peer)
    return result


def assert_clear_delivery(results, peer, connections=1):
    [result] = results
    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.used is False
    assert peer.connections == connections
    [transaction] = peer.transactions
    assert transaction.tls is False
    return result


# -- row: no STARTTLS advertised ---------------------------------------------------------


@pytest.mark.parametrize("column", ["none", "may-fallback-on", "may-fallback-off"])
async def test_no_starttls_advertised_goes_clear(smtp_peer, ca_file, column):
    peer = await smtp_peer(Script(advertise_starttls=False))
    level, fallback = COLUMNS[column]
    results = await deliver(config_for([peer], ca_file=ca_file, level=level, fallback=fallback))
    assert_clear_delivery(results, peer)
    assert "STARTTLS" not in peer.lines()


@pytest.mark.parametrize("column", ["encrypt", "verify"])
async def test_no_starttls_advertised_fails_the_host_when_tls_is_required(
    smtp_peer, ca_file, column
):
    peer = await smtp_peer(Script(advertise_starttls=False))
    level, fallback = COLUMNS[column]
    results = await deliver(config_for([peer], ca_file=ca_file, level=level, fallback=fallback))
    result = assert_failed_host(results, peer)
    assert "STARTTLS not advertised" in result.reason
    assert "never sends mail in clear" in result.reason
    assert not envelope_lines(peer)


@pytest.mark.parametrize("column", ["none", "may-fallback-on", "encrypt"])
async def test_helo_only_server(smtp_peer, ca_file, column):
    peer = await smtp_peer(Script(ehlo_reply="502 5.5.1 EHLO not implemented"))
    level, fallback = COLUMNS[column]
    results = await deliver(config_for([peer], ca_file=ca_file, level=level, fallback=fallback))
    assert "HELO client.relaymail.test" in peer.lines()
    if column == "encrypt":
        assert_failed_host(results, peer)
    else:
        assert_clear_delivery(results, peer)


# -- row: STARTTLS works -------------------------------------------------------------------


async def test_working_starttls_is_not_used_under_none(smtp_peer, ca_file):
    peer = await smtp_peer(Script())
    results = await deliver(config_for([peer], ca_file=ca_file, level="none"))
    assert_clear_delivery(results, peer)
    assert "STARTTLS" not in peer.lines()


@pytest.mark.parametrize("column", ["may-fallback-on", "may-fallback-off", "encrypt", "verify"])
async def test_working_starttls_is_used(smtp_peer, ca_file, column):
    peer = await smtp_peer(Script())
    level, fallback = COLUMNS[column]
    [result] = await deliver(config_for([peer], ca_file=ca_file, level=level, fallback=fallback))
    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.used and result.tls.version in ("TLSv1.2", "TLSv1.3")
    assert result.tls.cipher
    # The route names 127.0.0.1: the certificate's IP address SAN is what is checked.
    assert result.tls.verified is True
    assert_never_clear(peer)
    assert peer.transactions[0].tls


async def test_after_tls_ehlo_again_and_forget_the_clear_capabilities(smtp_peer, ca_file):
    # In clear the server claims a 100-byte limit; inside TLS it lifts it. The message
    # (larger than 100 bytes) must go by the post-TLS answer.
    peer = await smtp_peer(
        Script(ehlo=("SIZE 100", "PIPELINING"), ehlo_after_tls=("SIZE 10485760",))
    )
    [result] = await deliver(config_for([peer], ca_file=ca_file, level="encrypt"))
    assert result.status is Status.DELIVERED, result.reason
    assert [line for line in peer.lines(tls=True) if line.startswith("EHLO")] == [
        "EHLO client.relaymail.test"
    ]


@pytest.mark.parametrize(
    ("context", "why"),
    [
        (server_context(("wrong.example.test",)), "certificate-host-mismatch"),
        (unknown_ca_server_context(), "certificate-not-trusted"),
        (expired_server_context(), "certificate-expired"),
    ],
    ids=["wrong-name", "unknown-ca", "expired"],
)
async def test_verify_fails_the_host_for_a_bad_certificate_but_may_reports_it(
    smtp_peer, ca_file, context, why
):
    peer = await smtp_peer(Script(ssl_context=context))
    [result] = await deliver(config_for([peer], ca_file=ca_file, level="verify"))
    assert result.status is Status.DEFERRED
    assert why in result.reason
    assert not peer.transactions
    assert_never_clear(peer)
    assert not envelope_lines(peer)  # the session ended before any envelope command

    [result] = await deliver(config_for([peer], ca_file=ca_file, level="may"))
    assert result.status is Status.DELIVERED
    assert result.tls.used and result.tls.verified is False
    assert any(why in a.detail for a in result.attempts)


async def test_encrypt_accepts_any_certificate(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ssl_context=unknown_ca_server_context()))
    [result] = await deliver(config_for([peer], ca_file=ca_file, level="encrypt"))
    assert result.status is Status.DELIVERED
    assert result.tls.used and not result.tls.verified


# -- rows: 4xx and 5xx to STARTTLS ---------------------------------------------------------


@pytest.mark.parametrize("reply", ["454 4.7.0 TLS not available", "502 5.5.1 no TLS here"])
async def test_refused_starttls_under_none_is_never_asked(smtp_peer, ca_file, reply):
    peer = await smtp_peer(Script(starttls=reply))
    results = await deliver(config_for([peer], ca_file=ca_file, level="none"))
    assert_clear_delivery(results, peer)
    assert "STARTTLS" not in peer.lines()


async def test_454_to_starttls_continues_in_clear_when_fallback_on(smtp_peer, ca_file):
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available due to temporary reason"))
    results = await deliver(config_for([peer], ca_file=ca_file, level="may", fallback=True))
    result = assert_clear_delivery(results, peer, connections=1)
    [step] = [a for a in result.attempts if a.result == AttemptResult.CONTINUED_CLEAR]
    assert "454 4.7.0" in step.detail and "tempfail_fallback is on" in step.detail


async def test_421_to_starttls_is_the_end_of_that_connection_even_with_fallback_on(
    smtp_peer, ca_file
):
    # RFC 5321 3.8: after a 421 nothing more is sent on the connection; the choice the
    # table made (clear) is carried out on a new one.
    peer = await smtp_peer(Script(starttls="421 4.3.2 Service shutting down"))
    results = await deliver(config_for([peer], ca_file=ca_file, level="may", fallback=True))
    result = assert_clear_delivery(results, peer, connections=2)
    assert [line.text for line in peer.transcript if line.session == 1] == [
        "EHLO client.relaymail.test", "STARTTLS"
    ]  # fmt: skip
    assert AttemptResult.RECONNECTED_CLEAR in [a.result for a in result.attempts]


async def test_454_to_starttls_fails_the_host_when_fallback_off(smtp_peer, ca_file):
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    results = await deliver(config_for([peer], ca_file=ca_file, level="may", fallback=False))
    result = assert_failed_host(results, peer)
    assert "tempfail_fallback is off" in result.reason
    assert not envelope_lines(peer)


@pytest.mark.parametrize("fallback", [True, False])
async def test_5xx_to_starttls_continues_in_clear_under_may(smtp_peer, ca_file, fallback):
    peer = await smtp_peer(Script(starttls="502 5.5.1 command not implemented"))
    results = await deliver(config_for([peer], ca_file=ca_file, level="may", fallback=fallback))
    assert_clear_delivery(results, peer, connections=1)


@pytest.mark.parametrize("reply", ["454 4.7.0 TLS not available", "502 5.5.1 no"])
@pytest.mark.parametrize("column", ["encrypt", "verify"])
async def test_refused_starttls_fails_the_host_when_tls_is_required(
    smtp_peer, ca_file, reply, column
):
    peer = await smtp_peer(Script(starttls=reply))
    level, fallback = COLUMNS[column]
    results = await deliver(config_for([peer], ca_file=ca_file, level=level, fallback=fallback))
    assert_failed_host(results, peer)
    assert not envelope_lines(peer)


# -- row: no reply / dropped connection after STARTTLS ------------------------------------


@pytest.mark.parametrize("behaviour", [StartTLS.DROP, StartTLS.SILENT])
@pytest.mark.parametrize("column", ["may-fallback-on", "may-fallback-off", "encrypt", "verify"])
async def test_no_reply_to_starttls_fails_the_host(smtp_peer, ca_file, behaviour, column):
    peer = await smtp_peer(Script(starttls=behaviour))
    level, fallback = COLUMNS[column]
    config = config_for([peer], ca_file=ca_file, level=level, fallback=fallback,
                        command_timeout=0.5)  # fmt: skip
    results = await deliver(config)
    result = assert_failed_host(results, peer)
    assert peer.connections == 1  # no cleartext retry on the same host
    assert "no reply to STARTTLS" in result.reason
    assert not envelope_lines(peer)


# -- rows: 220, then the handshake fails; bytes injected behind the 220 -------------------

HANDSHAKE_FAILURES = [StartTLS.GARBAGE, StartTLS.EOF_AFTER_220, StartTLS.STALL, StartTLS.INJECT]


@pytest.mark.parametrize("behaviour", HANDSHAKE_FAILURES)
async def test_failed_handshake_reconnects_in_clear_when_fallback_on(smtp_peer, ca_file, behaviour):
    peer = await smtp_peer(Script(starttls=behaviour))
    config = config_for([peer], ca_file=ca_file, level="may", command_timeout=0.5)
    results = await deliver(config)
    result = assert_clear_delivery(results, peer, connections=2)
    assert "STARTTLS" in peer.lines(session=1)
    assert "STARTTLS" not in peer.lines(session=2)  # the retry does not ask again
    assert not envelope_lines(peer)[0][0]
    assert [line for line in peer.lines(session=1) if line.startswith(("MAIL", "RCPT"))] == []
    steps = [a.result for a in result.attempts]
    assert steps[:2] == [AttemptResult.TLS_FAILED_RECONNECT_CLEAR, AttemptResult.RECONNECTED_CLEAR]


async def test_injected_bytes_are_a_failed_handshake_and_never_acted_on(smtp_peer, ca_file, caplog):
    # The injection claims a post-TLS EHLO reply with no STARTTLS, and "250 OK"
    # answers to whatever comes next. A client acting on them would send the
    # envelope into that forged dialogue.
    peer = await smtp_peer(
        Script(starttls=StartTLS.INJECT, starttls_injection=b"250-mx\r\n250 AUTH PLAIN\r\n")
    )
    results = await deliver(config_for([peer], ca_file=ca_file, level="may"))
    result = assert_clear_delivery(results, peer, connections=2)
    [step] = [a for a in result.attempts if a.result == AttemptResult.TLS_FAILED_RECONNECT_CLEAR]
    assert "injection" in step.detail
    assert any("cleartext bytes followed the 220" in r.getMessage() for r in caplog.records)
    assert peer.sessions[0].plaintext_after_starttls == b""


@pytest.mark.parametrize("behaviour", HANDSHAKE_FAILURES)
@pytest.mark.parametrize("column", ["may-fallback-off", "encrypt", "verify"])
async def test_failed_handshake_fails_the_host_otherwise(smtp_peer, ca_file, behaviour, column):
    peer = await smtp_peer(Script(starttls=behaviour))
    level, fallback = COLUMNS[column]
    config = config_for([peer], ca_file=ca_file, level=level, fallback=fallback,
                        command_timeout=0.5)  # fmt: skip
    results = await deliver(config)
    assert_failed_host(results, peer)
    assert peer.connections == 1
    assert not envelope_lines(peer)


# -- failover order -------------------------------------------------------------------------


async def test_same_host_cleartext_retry_comes_before_the_next_host(smtp_peer, ca_file):
    first = await smtp_peer(Script(starttls=StartTLS.GARBAGE))
    second = await smtp_peer(Script())
    [result] = await deliver(config_for([first, second], ca_file=ca_file, level="may"))
    assert result.status is Status.DELIVERED
    assert first.connections == 2 and len(first.transactions) == 1
    assert second.connections == 0


async def test_required_tls_moves_on_to_a_host_that_has_it(smtp_peer, ca_file):
    broken = await smtp_peer(Script(starttls="454 4.7.0 keys missing"))
    good = await smtp_peer(Script())
    [result] = await deliver(config_for([broken, good], ca_file=ca_file, level="encrypt"))
    assert result.status is Status.DELIVERED
    assert result.tls.used
    assert not broken.transactions and good.transactions[0].tls
    assert next(a.result for a in result.attempts) == AttemptResult.TLS_POLICY_FAILED


async def test_downgrade_memory_defers_when_starttls_vanishes(smtp_peer, ca_file, tmp_path):
    from relaymail.config import parse_config
    from tests.integration.conftest import hop
    from tests.integration.daemon_process import RELAYMAIL, run_command, write_toml

    peer = await smtp_peer(Script())
    raw = {
        "delivery": {"helo_name": "client.relaymail.test", "connection_idle_time": 0.01},
        "tls": {"ca_file": str(ca_file), "remember": True},
        "queue": {"directory": str(tmp_path / "queue")},
        "routes": {"dest.test": [hop(peer)]},
    }
    config = parse_config(raw)
    [result] = await deliver(config)
    assert result.status is Status.DELIVERED and result.tls.used

    peer.script = Script(advertise_starttls=False)  # stripped, as by a man in the middle
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    assert "possible STARTTLS stripping" in result.reason
    assert len(peer.transactions) == 1

    path = write_toml(tmp_path / "relaymail.toml", {"queue": {"directory": tmp_path / "queue"}})
    code, out, _ = await run_command(RELAYMAIL, "tls", "--config", str(path), "forget", "dest.test")
    assert code == 0 and "forgotten" in out
    [result] = await deliver(config)
    assert result.status is Status.DELIVERED and not result.tls.used


async def test_a_kept_session_below_a_domains_memory_does_not_carry_its_mail(
    smtp_peer, ca_file, tmp_path
):
    # Two domains on one host (as everything a big provider hosts): a clear session
    # kept from the one never seen with TLS must not carry the mail of the one that was.
    from relaymail.config import parse_config
    from relaymail.delivery import DeliveryEngine
    from relaymail.message import Envelope
    from tests.integration.conftest import MESSAGE, hop

    peer = await smtp_peer(Script())
    config = parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "connection_idle_time": 30},
        "tls": {"ca_file": str(ca_file), "remember": True},
        "queue": {"directory": str(tmp_path / "queue")},
        "routes": {"seen.test": [hop(peer)], "never.test": [hop(peer)]},
    })  # fmt: skip
    engine = DeliveryEngine(config)
    try:
        [first] = await engine.deliver(Envelope("a@sender.test", ("u@seen.test",)), MESSAGE)
        assert first.status is Status.DELIVERED and first.tls.verified
        await engine.close()  # the TLS session goes; the memory stays
        engine = DeliveryEngine(config)

        peer.script = Script(advertise_starttls=False)  # stripped from now on
        [clear] = await engine.deliver(Envelope("a@sender.test", ("v@never.test",)), MESSAGE)
        assert clear.status is Status.DELIVERED and not clear.tls.used  # and kept
        [held] = await engine.deliver(Envelope("a@sender.test", ("w@seen.test",)), MESSAGE)
        assert held.status is Status.DEFERRED
        assert "possible STARTTLS stripping" in held.reason
        [again] = await engine.deliver(Envelope("a@sender.test", ("x@never.test",)), MESSAGE)
        assert again.status is Status.DELIVERED
    finally:
        await engine.close()
    assert [t.recipients for t in peer.transactions] == [
        ("u@seen.test",), ("v@never.test",), ("x@never.test",)
    ]
    assert not [line for tls, line in envelope_lines(peer) if "seen.test" in line and not tls]
    assert peer.connections == 3  # seen's first; never's, kept and reused; seen's refused


async def test_a_kept_session_is_held_against_the_memory_as_it_is_now(
    smtp_peer, ca_file, tmp_path
):
    # Judged clear while nothing was remembered, the session is kept; another delivery
    # (to another MX of the domain, say) then sees TLS: the kept one may not carry more.
    from relaymail.config import parse_config
    from relaymail.delivery import DeliveryEngine
    from relaymail.message import Envelope
    from relaymail.tls.downgrade import TlsLevel
    from relaymail.tls.memory import TlsMemory
    from tests.integration.conftest import MESSAGE, hop

    peer = await smtp_peer(Script(advertise_starttls=False))
    config = parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "connection_idle_time": 30},
        "tls": {"ca_file": str(ca_file), "remember": True},
        "queue": {"directory": str(tmp_path / "queue")},
        "routes": {"dest.test": [hop(peer)]},
    })  # fmt: skip
    engine = DeliveryEngine(config)
    try:
        [clear] = await engine.deliver(Envelope("a@sender.test", ("u@dest.test",)), MESSAGE)
        assert clear.status is Status.DELIVERED and not clear.tls.used  # and kept
        memory = TlsMemory(config.queue, config.tls.remember_for)
        memory.saw("dest.test", TlsLevel.TLS)
        memory.close()
        [held] = await engine.deliver(Envelope("a@sender.test", ("v@dest.test",)), MESSAGE)
    finally:
        await engine.close()
    assert held.status is Status.DEFERRED and "possible STARTTLS stripping" in held.reason
    assert [t.recipients for t in peer.transactions] == [("u@dest.test",)]
