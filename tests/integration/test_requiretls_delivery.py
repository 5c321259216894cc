"""REQUIRETLS (RFC 8689) in delivery, against scripted next hops on 127.0.0.1 with real TLS.

Every test proves both ends: the delivery result (status, RFC 3463 code, the attempts'
results) and the server's transcript (what crossed the wire, in clear or in TLS).
"""

from __future__ import annotations

from relaymail.delivery import AttemptResult, DeliveryEngine, Status
from relaymail.message import Envelope
from tests.integration.conftest import MESSAGE, config_for, deliver, envelope_lines
from tests.peers.certs import unknown_ca_server_context
from tests.peers.smtp_server import DEFAULT_CAPABILITIES, Script

OFFERS_REQUIRETLS = (*DEFAULT_CAPABILITIES, "REQUIRETLS")


def mail_lines(peer) -> list[tuple[bool, str]]:
    return [(tls, line) for tls, line in envelope_lines(peer) if line.startswith("MAIL")]


def results_of(result) -> list[AttemptResult]:
    return [attempt.result for attempt in result.attempts]


async def test_a_verified_host_offering_requiretls_gets_the_mail_with_requiretls_on_mail(
    smtp_peer, ca_file
):
    peer = await smtp_peer(Script(ehlo_after_tls=OFFERS_REQUIRETLS))
    config = config_for([peer], ca_file=ca_file, level="verify")

    [result] = await deliver(config, requiretls=True)

    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.used and result.tls.verified
    mail = f"MAIL FROM:<a@sender.test> SIZE={len(MESSAGE)} REQUIRETLS"
    assert mail_lines(peer) == [(True, mail)]
    assert all(tls for tls, _ in envelope_lines(peer))
    assert "REQUIRETLS" in (result.policy or "")


async def test_a_message_without_requiretls_does_not_send_it_on(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ehlo_after_tls=OFFERS_REQUIRETLS))

    [result] = await deliver(config_for([peer], ca_file=ca_file, level="verify"))

    assert result.status is Status.DELIVERED, result.reason
    assert [line.endswith("REQUIRETLS") for _, line in mail_lines(peer)] == [False]


async def test_a_verified_host_without_requiretls_bounces_5_7_30_and_gets_no_mail(
    smtp_peer, ca_file
):
    peer = await smtp_peer(Script())

    [result] = await deliver(
        config_for([peer], ca_file=ca_file, level="verify"), requiretls=True
    )

    assert (result.status, result.enhanced_status) == (Status.BOUNCED, "5.7.30")
    assert AttemptResult.REQUIRETLS_REFUSED in results_of(result)
    assert "REQUIRETLS" in result.reason
    assert envelope_lines(peer) == []
    assert peer.lines(tls=True)[-1] == "QUIT"  # a refusal still ends the session politely


async def test_an_unverified_certificate_bounces_5_7_30(smtp_peer, ca_file):
    peer = await smtp_peer(
        Script(ssl_context=unknown_ca_server_context(), ehlo_after_tls=OFFERS_REQUIRETLS)
    )

    [result] = await deliver(
        config_for([peer], ca_file=ca_file, level="verify"), requiretls=True
    )

    assert (result.status, result.enhanced_status) == (Status.BOUNCED, "5.7.30")
    assert AttemptResult.REQUIRETLS_REFUSED in results_of(result)
    assert envelope_lines(peer) == []


async def test_454_to_starttls_defers_and_never_goes_clear_whatever_tempfail_fallback_says(
    smtp_peer, ca_file
):
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))

    [result] = await deliver(
        config_for([peer], ca_file=ca_file, level="verify", fallback=True), requiretls=True
    )

    assert result.status is Status.DEFERRED, result.reason
    assert AttemptResult.TLS_POLICY_FAILED in results_of(result)
    assert envelope_lines(peer) == []
    assert peer.connections == 1  # no reconnection in clear either


async def test_a_domain_whose_level_authenticates_no_name_bounces_without_a_session(
    smtp_peer, ca_file
):
    peer = await smtp_peer(Script(ehlo_after_tls=OFFERS_REQUIRETLS))
    for level in ("none", "may", "encrypt"):
        [result] = await deliver(
            config_for([peer], ca_file=ca_file, level=level), requiretls=True
        )

        assert (result.status, result.enhanced_status) == (Status.BOUNCED, "5.7.30"), level
        assert results_of(result) == [AttemptResult.REQUIRETLS_UNAUTHENTICATED]
    assert peer.connections == 0


async def test_a_refusing_host_then_a_qualifying_one_delivers(smtp_peer, ca_file):
    plain = await smtp_peer(Script())
    good = await smtp_peer(Script(ehlo_after_tls=OFFERS_REQUIRETLS))

    [result] = await deliver(
        config_for([plain, good], ca_file=ca_file, level="verify"), requiretls=True
    )

    assert result.status is Status.DELIVERED, result.reason
    assert (len(plain.transactions), len(good.transactions)) == (0, 1)
    assert results_of(result)[0] is AttemptResult.REQUIRETLS_REFUSED


async def test_a_refusing_host_and_one_that_fails_for_now_defer(smtp_peer, ca_file):
    plain = await smtp_peer(Script())
    busy = await smtp_peer(Script(starttls="454 4.7.0 try later"))

    [result] = await deliver(
        config_for([plain, busy], ca_file=ca_file, level="verify"), requiretls=True
    )

    # The second host may qualify once it works: not a bounce yet.
    assert result.status is Status.DEFERRED, result.reason
    assert envelope_lines(plain) == envelope_lines(busy) == []


async def test_a_4xx_at_a_qualifying_host_defers_as_usual(smtp_peer, ca_file):
    peer = await smtp_peer(
        Script(ehlo_after_tls=OFFERS_REQUIRETLS, rcpt_reply="451 4.3.0 try again")
    )

    [result] = await deliver(
        config_for([peer], ca_file=ca_file, level="verify"), requiretls=True
    )

    assert result.status is Status.DEFERRED, result.reason
    assert result.reply is not None and result.reply.startswith("451")


async def test_an_smtps_route_is_held_to_requiretls_like_starttls(smtp_peer, ca_file):
    offering = await smtp_peer(
        Script(implicit_tls=True, ehlo=OFFERS_REQUIRETLS, ehlo_after_tls=OFFERS_REQUIRETLS)
    )
    silent = await smtp_peer(Script(implicit_tls=True))
    routes = [f"smtps://127.0.0.1:{peer.port}" for peer in (offering, silent)]

    [delivered] = await deliver(
        config_for(routes[:1], ca_file=ca_file, level="verify"), requiretls=True
    )
    [bounced] = await deliver(
        config_for(routes[1:], ca_file=ca_file, level="verify"), requiretls=True
    )

    assert delivered.status is Status.DELIVERED, delivered.reason
    assert [line.endswith(" REQUIRETLS") for _, line in mail_lines(offering)] == [True]
    assert (bounced.status, bounced.enhanced_status) == (Status.BOUNCED, "5.7.30")
    assert envelope_lines(silent) == []


async def test_a_session_kept_from_other_mail_is_not_reused_for_a_requiretls_message(
    smtp_peer, ca_file
):
    peer = await smtp_peer(Script())  # verified TLS, no REQUIRETLS: fine for other mail
    engine = DeliveryEngine(config_for([peer], ca_file=ca_file, level="verify"))
    try:
        [plain] = await engine.deliver(Envelope("a@sender.test", ("u@dest.test",)), MESSAGE)
        [flagged] = await engine.deliver(
            Envelope("a@sender.test", ("u@dest.test",), requiretls=True), MESSAGE
        )
    finally:
        await engine.close()

    assert plain.status is Status.DELIVERED, plain.reason
    assert (flagged.status, flagged.enhanced_status) == (Status.BOUNCED, "5.7.30")
    assert len(peer.transactions) == 1 and peer.connections == 2
