"""TLS reporting (RFC 8460): counting, the JSON report, the TXT record, the file name, the mail."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from relaymail.tls.context import CLEAR, TlsFacts
from relaymail.tls.policy import Event
from relaymail.tls.reporting import (
    DomainSummary,
    FailureDetail,
    PolicySummary,
    TlsEvent,
    TlsReport,
    TlsReportStore,
    TlsRptRecord,
    build_report_mail,
    parse_tlsrpt_record,
    preview_reports,
    report_filename,
    report_json,
    select_tlsrpt_record,
    session_event,
    utc_day,
)
from relaymail.tls.results import PolicyType, ResultType
from relaymail.tls.verify import VERIFIED, VerifyResult

DAY = date(2026, 3, 14)
NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()
STS_LINES = ("version: STSv1", "mode: enforce", "mx: *.mail.example.com", "max_age: 86400")


def ok(domain: str = "example.com", at: float = NOON, **facts: object) -> TlsEvent:
    return TlsEvent(domain, True, at, **facts)  # type: ignore[arg-type]


def failed(
    result: ResultType,
    domain: str = "example.com",
    at: float = NOON,
    mx: str = "mx1.example.com",
    ip: str = "192.0.2.1",
    reason: str | None = None,
    **facts: object,
) -> TlsEvent:
    return TlsEvent(
        domain, False, at, result_type=result, receiving_mx_hostname=mx, receiving_ip=ip,
        failure_reason_code=reason, **facts,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):
    store = TlsReportStore(tmp_path)
    yield store
    store.close()


# -- result types and events ----------------------------------------------------------


def test_result_types_are_those_of_rfc_8460_section_4_3():
    assert {r.value for r in ResultType} == {
        "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
        "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
        "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
    }  # fmt: skip
    assert {p.value for p in PolicyType} == {"sts", "tlsa", "no-policy-found"}


def test_a_failed_event_needs_a_result_type_and_a_success_has_none():
    with pytest.raises(ValueError):
        TlsEvent("example.com", False, NOON)
    with pytest.raises(ValueError):
        TlsEvent("example.com", True, NOON, result_type=ResultType.CERTIFICATE_EXPIRED)


def session(event: Event, tls: TlsFacts = CLEAR, **options: object) -> TlsEvent:
    arguments: dict[str, object] = {
        "event": event, "tls": tls, "mx_hostname": "MX1.Example.COM.", "receiving_ip": "192.0.2.1",
        "at": NOON, "verification_required": True,
    }  # fmt: skip
    arguments.update(options)
    return session_event("Bücher.example", **arguments)  # type: ignore[arg-type]


def test_a_verified_session_is_a_success_for_the_a_label_domain():
    event = session(Event.VERIFIED, TlsFacts(used=True, verification=VERIFIED))
    assert event.success and event.result_type is None
    assert event.policy_domain == "xn--bcher-kva.example"
    assert event.receiving_mx_hostname == "mx1.example.com"


def test_an_unverified_certificate_is_a_success_when_no_verification_was_required():
    expired = VerifyResult(False, ResultType.CERTIFICATE_EXPIRED, "expired 2020-01-01 00:00Z")
    tls = TlsFacts(used=True, verification=expired)
    assert session(Event.UNVERIFIED, tls, verification_required=False).success


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (ResultType.CERTIFICATE_EXPIRED, "expired 2020-01-01 00:00Z"),
        (ResultType.CERTIFICATE_HOST_MISMATCH, "mx1 not in other"),
        (ResultType.CERTIFICATE_NOT_TRUSTED, "the chain does not lead to a trusted CA"),
        (ResultType.VALIDATION_FAILURE, "the server sent no certificate"),
    ],
)
def test_a_failed_check_gives_the_event_its_result_type(result: ResultType, words: str):
    tls = TlsFacts(used=True, verification=VerifyResult(False, result, words))
    event = session(Event.UNVERIFIED, tls)
    assert not event.success
    assert event.result_type is result
    assert event.failure_reason_code == words


def test_an_unverified_session_without_a_check_is_a_validation_failure():
    event = session(Event.UNVERIFIED, TlsFacts(used=True), detail="something unforeseen")
    assert event.result_type is ResultType.VALIDATION_FAILURE
    assert event.failure_reason_code == "something unforeseen"


@pytest.mark.parametrize(
    ("event", "result"),
    [
        (Event.NOT_OFFERED, ResultType.STARTTLS_NOT_SUPPORTED),
        (Event.PERMFAIL, ResultType.STARTTLS_NOT_SUPPORTED),
        (Event.TEMPFAIL, ResultType.STARTTLS_NOT_SUPPORTED),
        (Event.HANDSHAKE_FAILED, ResultType.VALIDATION_FAILURE),
        (Event.NO_REPLY, ResultType.VALIDATION_FAILURE),
        (Event.INJECTION, ResultType.VALIDATION_FAILURE),
    ],
)
def test_sessions_without_tls_fail_even_under_opportunistic_policy(event: Event, result):
    recorded = session(event, detail="454 4.7.0 TLS not available", verification_required=False)
    assert recorded.result_type is result
    assert event.value in (recorded.failure_reason_code or "")


# -- counting ---------------------------------------------------------------------------


async def test_events_are_added_up_per_day_domain_and_policy(store: TlsReportStore):
    sts = {"policy_type": PolicyType.STS, "policy_strings": STS_LINES,
           "mx_host_patterns": ("*.mail.example.com",)}  # fmt: skip
    await store.record(
        [
            ok(), ok(), ok(**sts),
            failed(ResultType.STARTTLS_NOT_SUPPORTED),
            failed(ResultType.STARTTLS_NOT_SUPPORTED),
            failed(ResultType.CERTIFICATE_EXPIRED, reason="expired", **sts),
            ok("other.example"),
            ok(at=NOON + 86400),  # the next day
        ]
    )  # fmt: skip
    await store.record([failed(ResultType.STARTTLS_NOT_SUPPORTED, ip="192.0.2.2")])

    assert store.domains(DAY) == ["example.com", "other.example"]
    assert store.days() == [DAY, date(2026, 3, 15)]
    summary = store.summary(DAY, "example.com")
    none, sts_policy = summary.policies
    assert (none.policy_type, none.successful_sessions, none.failed_sessions) == (
        PolicyType.NO_POLICY_FOUND, 2, 3,
    )  # fmt: skip
    assert [(f.receiving_ip, f.sessions) for f in none.failures] == [
        ("192.0.2.1", 2), ("192.0.2.2", 1),
    ]  # fmt: skip
    assert sts_policy.policy_strings == STS_LINES
    assert sts_policy.mx_host_patterns == ("*.mail.example.com",)
    assert (sts_policy.successful_sessions, sts_policy.failed_sessions) == (1, 1)
    assert sts_policy.failures[0].failure_reason_code == "expired"
    assert summary.sessions == 7


async def test_concurrent_records_lose_nothing(store: TlsReportStore):
    events = [ok(), failed(ResultType.DANE_REQUIRED)]
    await asyncio.gather(*(store.record(events) for _ in range(200)))
    [policy] = store.summary(DAY, "example.com").policies
    assert (policy.successful_sessions, policy.failed_sessions) == (200, 200)
    assert policy.failures[0].sessions == 200


async def test_counts_survive_reopening_the_store(tmp_path: Path):
    first = TlsReportStore(tmp_path)
    await first.record([ok(), ok()])
    first.close()
    second = TlsReportStore(tmp_path)
    second.record_blocking([ok()])
    assert second.summary(DAY, "example.com").policies[0].successful_sessions == 3
    assert (tmp_path / "tlsrpt.db").exists()
    second.close()


def test_long_and_multiline_reasons_are_capped_so_they_stay_one_counter(store: TlsReportStore):
    store.record_blocking([failed(ResultType.VALIDATION_FAILURE, reason="x\r\n" * 500)])
    [detail] = store.summary(DAY, "example.com").policies[0].failures
    reason = detail.failure_reason_code or ""
    assert len(reason) <= 200 and "\n" not in reason


def test_prune_forgets_older_days(store: TlsReportStore):
    store.record_blocking([ok(), failed(ResultType.STARTTLS_NOT_SUPPORTED), ok(at=NOON + 86400)])
    assert store.prune(date(2026, 3, 15)) == 1
    assert store.days() == [date(2026, 3, 15)]


def test_utc_day_is_the_utc_calendar_day():
    assert utc_day(datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC).timestamp()) == DAY
    assert utc_day(datetime(2026, 3, 15, 0, 0, 0, tzinfo=UTC).timestamp()) == date(2026, 3, 15)


# -- the JSON report -----------------------------------------------------------------


def test_report_json_has_the_shape_of_rfc_8460_section_4_4():
    summary = DomainSummary(
        DAY,
        "example.com",
        (
            PolicySummary(
                PolicyType.STS, STS_LINES, ("*.mail.example.com",), 5326, 303,
                (
                    FailureDetail(
                        ResultType.CERTIFICATE_EXPIRED, 100,
                        receiving_mx_hostname="mx1.mail.example.com", receiving_ip="192.0.2.1",
                        sending_mta_ip="198.51.100.1", failure_reason_code="expired",
                    ),
                    FailureDetail(ResultType.STARTTLS_NOT_SUPPORTED, 203),
                ),
            ),
            PolicySummary(PolicyType.NO_POLICY_FOUND, (), (), 12, 0, ()),
        ),
    )  # fmt: skip
    report = report_json(
        summary, organization_name="Company-X", contact_info="sts-reporting@company-x.example",
        report_id="5065427c-23d3-47ca-b6e0-946ea0e8c4be",
    )  # fmt: skip
    assert report == {
        "organization-name": "Company-X",
        "date-range": {
            "start-datetime": "2026-03-14T00:00:00Z",
            "end-datetime": "2026-03-14T23:59:59Z",
        },
        "contact-info": "sts-reporting@company-x.example",
        "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
        "policies": [
            {
                "policy": {
                    "policy-type": "sts",
                    "policy-domain": "example.com",
                    "policy-string": list(STS_LINES),
                    "mx-host": ["*.mail.example.com"],
                },
                "summary": {
                    "total-successful-session-count": 5326,
                    "total-failure-session-count": 303,
                },
                "failure-details": [
                    {
                        "result-type": "certificate-expired",
                        "sending-mta-ip": "198.51.100.1",
                        "receiving-mx-hostname": "mx1.mail.example.com",
                        "receiving-ip": "192.0.2.1",
                        "failed-session-count": 100,
                        "failure-reason-code": "expired",
                    },
                    {"result-type": "starttls-not-supported", "failed-session-count": 203},
                ],
            },
            {
                "policy": {"policy-type": "no-policy-found", "policy-domain": "example.com"},
                "summary": {
                    "total-successful-session-count": 12,
                    "total-failure-session-count": 0,
                },
                "failure-details": [],
            },
        ],
    }
    json.dumps(report)  # plain JSON types only


def test_the_store_builds_the_report_from_its_counts(store: TlsReportStore):
    store.record_blocking([ok(), failed(ResultType.STARTTLS_NOT_SUPPORTED)])
    report = store.build_report(
        DAY, "example.com", organization_name="Org", contact_info="c@org.example", report_id="r1"
    )
    [policy] = report["policies"]
    assert policy["summary"] == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 1,
    }
    assert policy["failure-details"] == [
        {
            "result-type": "starttls-not-supported",
            "receiving-mx-hostname": "mx1.example.com",
            "receiving-ip": "192.0.2.1",
            "failed-session-count": 1,
        }
    ]


def test_preview_shows_what_today_would_report(store: TlsReportStore):
    store.record_blocking([ok(), ok("other.example")])
    reports = preview_reports(
        store, organization_name="Org", contact_info="c@org.example", clock=lambda: NOON + 60
    )
    assert [r["policies"][0]["policy"]["policy-domain"] for r in reports] == [
        "example.com", "other.example",
    ]  # fmt: skip
    assert reports[0]["report-id"] == "(not sent)"
    only = preview_reports(
        store, DAY, "other.example", organization_name="Org", contact_info="c@org.example"
    )
    assert len(only) == 1
    unknown = preview_reports(
        store, DAY, "nothing.example", organization_name="O", contact_info="c@o.example"
    )
    assert unknown == []


# -- the TLSRPT record (RFC 8460 3) -------------------------------------------------------


def test_rua_lists_several_uris_separated_by_commas():
    record = parse_tlsrpt_record(
        "v=TLSRPTv1; rua=mailto:reports@example.com , https://reporting.example.com/v1/tlsrpt"
    )
    assert record == TlsRptRecord(
        ("mailto:reports@example.com", "https://reporting.example.com/v1/tlsrpt")
    )


def test_a_final_semicolon_and_extensions_are_accepted():
    record = parse_tlsrpt_record("v=TLSRPTv1;rua=mailto:r@example.com;ext_1=value;")
    assert record.rua == ("mailto:r@example.com",)


@pytest.mark.parametrize(
    "text",
    [
        "v=TLSRPTv1",  # no rua
        "v=TLSRPTv1;",  # no rua
        "rua=mailto:r@example.com; v=TLSRPTv1",  # version not first
        "v=TLSRPTv10; rua=mailto:r@example.com",
        "v=TLSRPTv1; rua=",
        "v=TLSRPTv1; rua=not a uri",
        "v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com",
        "v=TLSRPTv1; rua=mailto:r@example.com; garbage",
        "V=tlsrptv1; rua=mailto:r@example.com",  # the version tag is case-sensitive
    ],
)
def test_malformed_records_are_refused(text: str):
    with pytest.raises(ValueError):
        parse_tlsrpt_record(text)


def test_only_one_record_beginning_with_the_version_counts():
    good = "v=TLSRPTv1; rua=mailto:r@example.com"
    assert select_tlsrpt_record(["v=spf1 -all", good, "google-site-verification=x"]) == (
        TlsRptRecord(("mailto:r@example.com",))
    )
    assert select_tlsrpt_record([good, "v=TLSRPTv1; rua=mailto:other@example.com"]) is None
    assert select_tlsrpt_record([good, "v=TLSRPTv1; broken"]) is None
    assert select_tlsrpt_record(["v=TLSRPTv1; broken"]) is None
    assert select_tlsrpt_record([]) is None


# -- file name and mail (RFC 8460 5.1, 5.3) --------------------------------------------------


def test_the_file_name_follows_section_5_1():
    assert report_filename("mail.sender.example", "example.com", DAY, "abc123") == (
        "mail.sender.example!example.com!1773446400!1773532799!abc123.json.gz"
    )
    with pytest.raises(ValueError):
        report_filename("s.example", "example.com", DAY, "not-alnum")


def sample_report() -> TlsReport:
    summary = DomainSummary(
        DAY, "example.net", (PolicySummary(PolicyType.NO_POLICY_FOUND, (), (), 3, 0, ()),)
    )
    return TlsReport(
        DAY, "example.net", "mail.sender.example", "0a1b2c",
        report_json(summary, organization_name="Sender", contact_info="tlsrpt@sender.example",
                    report_id="20260314.0a1b2c@mail.sender.example"),
    )  # fmt: skip


def test_the_report_mail_is_a_multipart_report_with_the_gzipped_json():
    report = sample_report()
    mail = build_report_mail(
        report, ["tlsrpt@example.net"], from_address="tlsrpt@mail.sender.example",
        now=datetime(2026, 3, 15, 1, 0, tzinfo=UTC),
    )  # fmt: skip
    assert mail.envelope.sender == "tlsrpt@mail.sender.example"
    assert mail.envelope.recipients == ("tlsrpt@example.net",)
    assert b"\r\n" in mail.data and b"\n" not in mail.data.replace(b"\r\n", b"")
    # RFC 5322 2.1.1: 998 is the limit; only the file name (domain names) may pass 78.
    assert max(len(line) for line in mail.data.split(b"\r\n") if b"filename" not in line) <= 78
    assert max(len(line) for line in mail.data.split(b"\r\n")) <= 998

    message = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == (
        "Report Domain: example.net Submitter: mail.sender.example "
        "Report-ID: <20260314.0a1b2c@mail.sender.example>"
    )
    assert message["TLS-Report-Domain"] == "example.net"
    assert message["TLS-Report-Submitter"] == "mail.sender.example"
    assert message["TLS-Required"] == "No"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "aggregate TLS report" in text.get_content()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == report.filename
    assert attachment.get_filename() == (
        "mail.sender.example!example.net!1773446400!1773532799!0a1b2c.json.gz"
    )
    assert json.loads(gzip.decompress(attachment.get_content())) == report.json


def test_a_retry_sends_the_same_bytes():
    report = sample_report()
    assert report.gzipped() == report.gzipped()
    now = datetime(2026, 3, 15, 1, 0, tzinfo=UTC)
    first = build_report_mail(report, ["a@example.net"], from_address="s@sender.example", now=now)
    again = build_report_mail(report, ["a@example.net"], from_address="s@sender.example", now=now)
    assert first == again
