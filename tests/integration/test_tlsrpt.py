"""TLS reports end to end: counted sessions, the TXT record from real DNS, a report mailed
through the real delivery engine to a loopback SMTP peer and POSTed to a loopback HTTPS
server, both checked against a JSON Schema written from RFC 8460 section 4."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from relaymail.delivery import DeliveryEngine, Status, deliver
from relaymail.delivery.plan import HostPolicy
from relaymail.message import Envelope
from relaymail.routing import HopSource, NextHop
from relaymail.tls.policy import Level
from relaymail.tls.reporting import (
    ReportState,
    TlsEvent,
    TlsReportStore,
    lookup_tlsrpt,
    send_daily_reports,
    session_event,
    utc_day,
)
from relaymail.tls.results import PolicyType, ResultType
from tests.integration.conftest import config_for
from tests.peers.certs import expired_server_context
from tests.peers.dns_server import AAAA, TXT, A, NXDomain, ServFail
from tests.peers.https_server import HTTPSServer, Response
from tests.peers.smtp_server import Script, SMTPPeer

# RFC 8460 4.3, spelled out here rather than taken from the code under test.
RESULT_TYPES = [
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
]  # fmt: skip
_DATE_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
_IP = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
_COUNT = {"type": "integer", "minimum": 0}

# RFC 8460 4.4 (and 4.3 for the result types) as a JSON Schema.
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "additionalProperties": False,
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object",
            "required": ["start-datetime", "end-datetime"],
            "additionalProperties": False,
            "properties": {
                "start-datetime": {"type": "string", "format": "date-time", "pattern": _DATE_TIME},
                "end-datetime": {"type": "string", "format": "date-time", "pattern": _DATE_TIME},
            },
        },
        "contact-info": {"type": "string", "format": "email"},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "additionalProperties": False,
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-domain"],
                        "additionalProperties": False,
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": {"type": "array", "items": {"type": "string"}},
                            "policy-domain": {"type": "string", "format": "hostname"},
                            "mx-host": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "summary": {
                        "type": "object",
                        "required": [
                            "total-successful-session-count",
                            "total-failure-session-count",
                        ],
                        "additionalProperties": False,
                        "properties": {
                            "total-successful-session-count": _COUNT,
                            "total-failure-session-count": _COUNT,
                        },
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "failed-session-count"],
                            "additionalProperties": False,
                            "properties": {
                                "result-type": {"enum": RESULT_TYPES},
                                "sending-mta-ip": _IP,
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": _IP,
                                "failed-session-count": {"type": "integer", "minimum": 1},
                                "additional-information": {"type": "string", "format": "uri"},
                                "failure-reason-code": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}
VALIDATOR = jsonschema.Draft202012Validator(
    REPORT_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def check_report(report: dict[str, Any]) -> None:
    VALIDATOR.validate(report)
    for policy in report["policies"]:
        failed = sum(d["failed-session-count"] for d in policy["failure-details"])
        assert failed == policy["summary"]["total-failure-session-count"]


YESTERDAY = utc_day(time.time()) - timedelta(days=1)
AT = datetime(YESTERDAY.year, YESTERDAY.month, YESTERDAY.day, 9, tzinfo=UTC).timestamp()
SUBMITTER = "relay.sender.test"


def events(domain: str = "dest.test") -> list[TlsEvent]:
    sts = {"policy_type": PolicyType.STS, "mx_host_patterns": ("*.dest.test",),
           "policy_strings": ("version: STSv1", "mode: enforce", "mx: *.dest.test",
                              "max_age: 604800")}  # fmt: skip
    return [
        TlsEvent(domain, True, AT, receiving_mx_hostname="mx1.dest.test", receiving_ip="192.0.2.1"),
        TlsEvent(domain, True, AT + 60, **sts),  # type: ignore[arg-type]
        *[
            TlsEvent(
                domain, False, AT + i, result_type=result, receiving_mx_hostname="mx2.dest.test",
                receiving_ip="2001:db8::25", sending_mta_ip="198.51.100.7",
                failure_reason_code=f"{result.value} seen", **sts,  # type: ignore[arg-type]
            )
            for i, result in enumerate(ResultType)
        ],
    ]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TlsReportStore]:
    store = TlsReportStore(tmp_path / "tlsrpt")
    yield store
    store.close()


class Mailer:
    """The `enqueue` callback: delivers at once with the real engine instead of queueing."""

    def __init__(self, peer: SMTPPeer, ca_file: Path) -> None:
        self.config = config_for([peer], ca_file=ca_file, domain="reports.test")
        self.queued: list[Envelope] = []

    async def __call__(self, envelope: Envelope, data: bytes) -> str:
        results = await deliver(envelope, data, self.config)
        assert [r.status for r in results] == [Status.DELIVERED], results
        self.queued.append(envelope)
        return f"Q{len(self.queued)}"


def mailed_report(peer: SMTPPeer, index: int = 0) -> tuple[EmailMessage, dict[str, Any]]:
    message = email.message_from_bytes(peer.transactions[index].data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    [attachment] = [p for p in message.iter_attachments()]
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    return message, json.loads(gzip.decompress(attachment.get_content()))


async def send(store, dns, mailer, **options):
    return await send_daily_reports(
        store, YESTERDAY, dns.resolver(), mailer,
        organization_name="Sender Inc.", submitter=SUBMITTER,
        contact_info="tlsrpt-admin@sender.test", **options,
    )  # fmt: skip


async def test_a_report_goes_by_mail_and_https_and_never_twice(
    store, smtp_peer, dns_server, ca_file, client_tls_context, tmp_path
):
    mailbox = await smtp_peer(Script())
    async with HTTPSServer({"/v1/tlsrpt": Response(200)}, names=("rpt.reports.test",)) as web:
        dns = dns_server([
            TXT("_smtp._tls.dest.test", "v=spf1 -all"),  # not ours: ignored
            TXT("_smtp._tls.dest.test",
                f"v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,"
                f"https://rpt.reports.test:{web.port}/v1/tlsrpt"),
            A("rpt.reports.test", "127.0.0.1"),
        ])  # fmt: skip
        await store.record(events())
        mailer = Mailer(mailbox, ca_file)

        [outcome] = await send(store, dns, mailer, ssl_context=client_tls_context)

        assert outcome.state is ReportState.SENT, outcome
        assert [r.ok for r in outcome.destinations] == [True, True], outcome.destinations
        message, mailed = mailed_report(mailbox)
        check_report(mailed)
        assert mailed["report-id"] == outcome.report_id
        assert message["TLS-Report-Domain"] == "dest.test"
        assert message["TLS-Report-Submitter"] == SUBMITTER
        assert message["Subject"] == (
            f"Report Domain: dest.test Submitter: {SUBMITTER} Report-ID: <{outcome.report_id}>"
        )
        assert mailbox.transactions[0].recipients == ("tlsrpt@reports.test",)

        [post] = web.requests
        assert (post.method, post.path) == ("POST", "/v1/tlsrpt")
        assert post.headers["content-type"] == "application/tlsrpt+gzip"
        assert post.host == f"rpt.reports.test:{web.port}"
        assert post.sni == "rpt.reports.test"  # though the connection went to 127.0.0.1
        assert json.loads(gzip.decompress(post.body)) == mailed

        policies = {p["policy"]["policy-type"]: p for p in mailed["policies"]}
        assert policies["no-policy-found"]["summary"]["total-successful-session-count"] == 1
        sts = policies["sts"]
        assert sts["summary"] == {
            "total-successful-session-count": 1,
            "total-failure-session-count": len(ResultType),
        }
        assert {d["result-type"] for d in sts["failure-details"]} == set(RESULT_TYPES)
        assert sts["policy"]["mx-host"] == ["*.dest.test"]
        assert mailed["date-range"] == {
            "start-datetime": f"{YESTERDAY}T00:00:00Z",
            "end-datetime": f"{YESTERDAY}T23:59:59Z",
        }

        # Again, and again after a restart: nothing more is sent.
        [again] = await send(store, dns, mailer, ssl_context=client_tls_context)
        assert again.state is ReportState.SENT and not again.destinations
        store.close()
        reopened = TlsReportStore(tmp_path / "tlsrpt")
        [after_restart] = await send(reopened, dns, mailer, ssl_context=client_tls_context)
        reopened.close()
        assert after_restart.state is ReportState.SENT and not after_restart.destinations
        assert len(mailbox.transactions) == 1 and len(web.requests) == 1


async def test_a_refused_upload_is_retried_alone_with_the_same_report_id(
    store, smtp_peer, dns_server, ca_file, client_tls_context
):
    mailbox = await smtp_peer(Script())
    async with HTTPSServer({"/r": Response(503)}, names=("rpt.reports.test",)) as web:
        dns = dns_server([
            TXT("_smtp._tls.dest.test",
                f"v=TLSRPTv1;rua=https://rpt.reports.test:{web.port}/r,mailto:t@reports.test"),
            A("rpt.reports.test", "127.0.0.1"),
        ])  # fmt: skip
        await store.record(events())
        mailer = Mailer(mailbox, ca_file)

        [first] = await send(store, dns, mailer, ssl_context=client_tls_context)
        assert first.state is ReportState.OPEN
        assert [(r.ok, r.detail) for r in first.destinations] == [
            (False, "127.0.0.1: HTTP 503 Service Unavailable"), (True, "queued as Q1"),
        ]  # fmt: skip

        web.serve("/r", Response(201))
        [second] = await send(store, dns, mailer, ssl_context=client_tls_context)
        assert second.state is ReportState.SENT
        assert [r.uri for r in second.destinations] == [f"https://rpt.reports.test:{web.port}/r"]
        assert len(mailbox.transactions) == 1
        ids = {json.loads(gzip.decompress(r.body))["report-id"] for r in web.requests}
        assert ids == {first.report_id} == {second.report_id}
        assert mailed_report(mailbox)[1]["report-id"] == first.report_id


async def test_an_https_receiver_is_verified_against_its_name(
    store, smtp_peer, dns_server, ca_file, client_tls_context
):
    # The certificate names another host: the upload must fail, and stay owed.
    async with HTTPSServer({"/": Response(200)}, names=("other.reports.test",)) as web:
        dns = dns_server([
            TXT("_smtp._tls.dest.test", f"v=TLSRPTv1; rua=https://rpt.reports.test:{web.port}/"),
            A("rpt.reports.test", "127.0.0.1"),
        ])  # fmt: skip
        await store.record(events())
        [outcome] = await send(
            store, dns, Mailer(await smtp_peer(Script()), ca_file), ssl_context=client_tls_context
        )
        assert outcome.state is ReportState.OPEN
        [result] = outcome.destinations
        assert not result.ok and "certificate" in result.detail.lower(), result.detail
        assert not web.requests


async def test_the_upload_tries_the_next_address_when_one_refuses(
    store, smtp_peer, dns_server, ca_file, client_tls_context
):
    async with HTTPSServer({"/r": Response(200)}, names=("rpt.reports.test",)) as web:
        dns = dns_server([
            TXT("_smtp._tls.dest.test", f"v=TLSRPTv1; rua=https://rpt.reports.test:{web.port}/r"),
            AAAA("rpt.reports.test", "::1"),  # tried first; nothing listens there
            A("rpt.reports.test", "127.0.0.1"),
        ])  # fmt: skip
        await store.record(events())
        [outcome] = await send(
            store, dns, Mailer(await smtp_peer(Script()), ca_file), ssl_context=client_tls_context
        )
        assert outcome.state is ReportState.SENT, outcome.destinations
        assert outcome.destinations[0].detail == "127.0.0.1: HTTP 200"
        assert [r.sni for r in web.requests] == ["rpt.reports.test"]


async def test_domains_without_a_usable_record_get_no_report_and_servfail_is_retried(
    store, smtp_peer, dns_server, ca_file
):
    mailbox = await smtp_peer(Script())
    dns = dns_server([
        NXDomain("_smtp._tls.none.test"),
        TXT("_smtp._tls.two.test", "v=TLSRPTv1; rua=mailto:a@reports.test"),
        TXT("_smtp._tls.two.test", "v=TLSRPTv1; rua=mailto:b@reports.test"),
        TXT("_smtp._tls.ftp.test", "v=TLSRPTv1; rua=ftp://reports.test/x"),
        ServFail("broken.test"),
    ])  # fmt: skip
    for domain in ("none.test", "two.test", "ftp.test", "broken.test"):
        await store.record(events(domain))
    mailer = Mailer(mailbox, ca_file)

    outcomes = {o.domain: o for o in await send(store, dns, mailer)}
    assert {d: o.state for d, o in outcomes.items()} == {
        "none.test": ReportState.NO_RECORD,
        "two.test": ReportState.NO_RECORD,
        "ftp.test": ReportState.NO_RECORD,
        "broken.test": None,
    }
    assert "_smtp._tls.broken.test" in outcomes["broken.test"].detail
    again = {o.domain: o for o in await send(store, dns, mailer)}
    assert again["none.test"].detail == "already done"
    assert again["broken.test"].state is None  # looked up again, fails again
    assert not mailbox.transactions


async def test_lookup_follows_the_record_through_real_dns(dns_server):
    long_uri = "https://reports.example.test/" + "x" * 300  # spans two character-strings
    dns = dns_server([TXT("_smtp._tls.dest.test", f"v=TLSRPTv1; rua=mailto:a@r.test,{long_uri}")])
    record = await lookup_tlsrpt("dest.test", dns.resolver())
    assert record is not None and record.rua == ("mailto:a@r.test", long_uri)
    assert await lookup_tlsrpt("absent.test", dns.resolver()) is None


async def test_today_cannot_be_reported_before_it_ends(store, dns_server):
    dns = dns_server([])
    with pytest.raises(ValueError, match="not over"):
        await send_daily_reports(
            store, date.today() + timedelta(days=2), dns.resolver(), _never,
            organization_name="O", submitter=SUBMITTER,
        )  # fmt: skip


async def _never(envelope: Envelope, data: bytes) -> str:
    raise AssertionError("nothing should be queued")


async def test_real_sessions_become_a_valid_report(store, smtp_peer, ca_file, dns_server):
    """STARTTLS outcomes seen by the real engine, turned into events, counted and reported."""
    good = await smtp_peer(Script())
    expired = await smtp_peer(Script(ssl_context=expired_server_context()))
    clear = await smtp_peer(Script(advertise_starttls=False))
    engine = DeliveryEngine(config_for([good], ca_file=ca_file, level="verify"))
    recorded = []
    try:
        for peer in (good, expired, clear):
            hop = NextHop("mx.example.test", peer.port, (peer.host,), HopSource.ROUTE)
            policy = HostPolicy(Level.VERIFY, "test")
            seen = await engine.inspect_host("dest.test", hop, peer.host, policy)
            assert seen.event is not None, seen.error
            event = session_event(
                "dest.test", event=seen.event, tls=seen.tls, mx_hostname=hop.name,
                receiving_ip=peer.host, at=AT, verification_required=True,
            )  # fmt: skip
            recorded.append(event)
    finally:
        await engine.close()
    assert [e.result_type for e in recorded] == [
        None, ResultType.CERTIFICATE_EXPIRED, ResultType.STARTTLS_NOT_SUPPORTED,
    ]  # fmt: skip
    await store.record(recorded)
    report = store.build_report(
        YESTERDAY, "dest.test", organization_name="Sender Inc.",
        contact_info="tlsrpt-admin@sender.test", report_id="r-1",
    )  # fmt: skip
    check_report(report)
    [policy] = report["policies"]
    assert policy["summary"] == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 2,
    }


async def test_a_non_ascii_mailto_address_is_unusable_and_the_others_still_get_the_report(
    store, smtp_peer, dns_server, ca_file
):
    # The report mail is 7-bit ASCII (no SMTPUTF8): a UTF-8 address cannot go into its To:.
    mailbox = await smtp_peer(Script())
    dns = dns_server([
        TXT("_smtp._tls.dest.test",
            "v=TLSRPTv1; rua=mailto:r%C3%A9ports@reports.test,mailto:tlsrpt@reports.test"),
    ])  # fmt: skip
    await store.record(events())
    [outcome] = await send(store, dns, Mailer(mailbox, ca_file))
    assert [(r.ok, r.permanent) for r in outcome.destinations] == [(False, True), (True, False)]
    assert [t.recipients for t in mailbox.transactions] == [("tlsrpt@reports.test",)]
