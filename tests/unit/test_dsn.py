"""RFC 3464 bounces and delay warnings, checked by parsing them back with the stdlib."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message

import pytest

from relaymail.body import MessageBody
from relaymail.dsn import (
    MAX_RETURNED_MESSAGE,
    Dsn,
    DsnAction,
    RecipientReport,
    build_bounce,
    build_delay_warning,
    build_relayed,
    diagnostic_code_for,
    header_section,
    recipient_facts,
    should_bounce,
    status_for,
)
from relaymail.dsn_request import Orcpt
from relaymail.smtp.reply import Reply

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
ARRIVED = NOW - timedelta(hours=5)
HEADERS = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <q3.1234@example.org>\r\n"
    b"X-Long: a header that was\r\n folded by its author\r\n"
)


def failed(address: str = "bob@example.com", reply: Reply | None = None) -> RecipientReport:
    return RecipientReport.from_reply(
        address,
        DsnAction.FAILED,
        reply or Reply(550, ("5.1.1 <bob@example.com>: no such user",)),
        remote_mta="mx.example.com",
        last_attempt=NOW - timedelta(minutes=1),
    )


def delayed(address: str = "carol@example.net") -> RecipientReport:
    return RecipientReport.from_reply(
        address,
        DsnAction.DELAYED,
        Reply(451, ("4.7.1 greylisted, come back later",)),
        remote_mta="mx.example.net",
        last_attempt=NOW - timedelta(minutes=3),
    )


def bounce(**overrides: object) -> Dsn:
    arguments: dict[str, object] = {
        "original_sender": "alice@example.org",
        "queue_id": "1K1CBR3JRJT",
        "original_headers": HEADERS,
        "recipients": [failed()],
        "reporting_mta": "mta.example.net",
        "arrival_date": ARRIVED,
        "now": NOW,
    }
    arguments.update(overrides)
    dsn = build_bounce(**arguments)  # type: ignore[arg-type]
    assert dsn is not None
    return dsn


def warning(**overrides: object) -> Dsn:
    arguments: dict[str, object] = {
        "original_sender": "alice@example.org",
        "queue_id": "1K1CBR3JRJT",
        "original_headers": HEADERS,
        "recipients": [delayed()],
        "reporting_mta": "mta.example.net",
        "arrival_date": ARRIVED,
        "retry_until": ARRIVED + timedelta(days=5),
        "now": NOW,
    }
    arguments.update(overrides)
    dsn = build_delay_warning(**arguments)  # type: ignore[arg-type]
    assert dsn is not None
    return dsn


def parse(dsn: Dsn) -> EmailMessage:
    message = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def status_blocks(message: EmailMessage) -> list[Message]:
    report = parts(message)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return [block for block in blocks if isinstance(block, Message)]


def test_bounce_is_a_multipart_report_with_text_status_and_headers() -> None:
    message = parse(bounce())

    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert message.defects == []
    assert all(part.defects == [] for part in parts(message))


def test_bounce_goes_from_the_null_sender_to_the_original_sender() -> None:
    dsn = bounce()
    message = parse(dsn)

    assert dsn.envelope.sender == ""
    assert dsn.envelope.recipients == ("alice@example.org",)
    assert message["To"].addresses[0].addr_spec == "alice@example.org"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mta.example.net"
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"].endswith("@mta.example.net>")
    assert message["In-Reply-To"] == "<q3.1234@example.org>"


def test_bounce_delivery_status_fields_parse() -> None:
    per_message, per_recipient = status_blocks(parse(bounce()))

    assert per_message["Reporting-MTA"] == "dns; mta.example.net"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVED
    assert per_recipient["Final-Recipient"] == "rfc822; bob@example.com"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.example.com"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.com>: no such user"
    last = email.utils.parsedate_to_datetime(per_recipient["Last-Attempt-Date"])
    assert last == NOW - timedelta(minutes=1)
    assert per_recipient["Will-Retry-Until"] is None


def test_one_status_block_per_recipient_in_order() -> None:
    reports = [failed("bob@example.com"), failed("dave@example.com")]
    blocks = status_blocks(parse(bounce(recipients=reports)))

    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@example.com",
        "rfc822; dave@example.com",
    ]


def test_original_headers_come_back_byte_for_byte() -> None:
    dsn = bounce()
    returned = parts(parse(dsn))[2]

    assert HEADERS in dsn.data
    assert returned.get_payload(decode=True) == HEADERS


def test_human_part_says_what_happened_in_plain_words() -> None:
    text = parts(parse(bounce()))[0].get_content()

    assert "could not be" in text and "delivered" in text
    assert "will not try again" in text
    assert "<bob@example.com>" in text
    assert "mx.example.com answered: 550 5.1.1" in text
    assert "The mailbox does not exist." in text
    assert all(len(line) <= 78 for line in text.splitlines())


def test_delay_warning_reports_delayed_and_until_when_we_retry() -> None:
    retry_until = ARRIVED + timedelta(days=5)
    message = parse(warning(retry_until=retry_until))
    text = parts(message)[0].get_content()
    per_message, per_recipient = status_blocks(message)

    assert per_message["Reporting-MTA"] == "dns; mta.example.net"
    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert per_recipient["Action"] == "delayed"
    assert per_recipient["Status"] == "4.7.1"
    assert email.utils.parsedate_to_datetime(per_recipient["Will-Retry-Until"]) == retry_until
    assert "only a warning" in text
    assert "do not need to send the message again" in text
    assert email.utils.format_datetime(retry_until) in text.replace("\n", " ")


def test_the_null_sender_never_gets_a_dsn() -> None:
    assert not should_bounce("")
    assert should_bounce("alice@example.org")
    common = {
        "original_sender": "",
        "queue_id": "1K1CBR3JRJT",
        "original_headers": HEADERS,
        "reporting_mta": "mta.example.net",
        "arrival_date": ARRIVED,
        "now": NOW,
    }
    assert build_bounce(recipients=[failed()], **common) is None  # type: ignore[arg-type]
    until = NOW + timedelta(days=1)
    assert build_delay_warning(recipients=[delayed()], retry_until=until, **common) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply(550, ("5.1.1 no such user",)), "5.1.1"),
        (Reply(552, ("5.2.2 mailbox full",)), "5.2.2"),
        (Reply(550, ("no such user",)), "5.0.0"),
        (Reply(451, ("try again later",)), "4.0.0"),
        (Reply(421, ("4.4.2 timeout",)), "4.4.2"),
        # an enhanced code of the wrong class is not believed (RFC 3463 2)
        (Reply(550, ("4.1.1 confused server",)), "5.0.0"),
    ],
)
def test_status_comes_from_the_enhanced_code_or_the_reply_class(reply: Reply, status: str) -> None:
    assert status_for(reply) == status


def test_diagnostic_code_is_the_smtp_reply() -> None:
    reply = Reply(550, ("5.1.1 no such user", "see https://example.com/help"))
    assert diagnostic_code_for(reply) == "smtp; 550 5.1.1 no such user see https://example.com/help"


def test_a_long_diagnostic_is_folded_and_unfolds_to_the_same_text() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    report = failed(reply=Reply(550, (f"5.7.1 {words}",)))
    dsn = bounce(recipients=[report])
    per_recipient = status_blocks(parse(dsn))[1]

    assert per_recipient["Diagnostic-Code"] == f"smtp; 550 5.7.1 {words}"
    assert all(len(line) <= 78 for line in dsn.data.split(b"\r\n"))


def test_control_characters_in_a_remote_reply_cannot_forge_fields() -> None:
    evil = RecipientReport(
        final_recipient="bob@example.com",
        action=DsnAction.FAILED,
        status="5.0.0",
        remote_mta="mx.example.com",
        diagnostic_code="smtp; 550 nope\r\nAction: delivered\r\nStatus: 2.0.0",
    )
    blocks = status_blocks(parse(bounce(recipients=[evil])))

    assert len(blocks) == 2
    assert blocks[1].get_all("Action") == ["failed"]
    assert blocks[1].get_all("Status") == ["5.0.0"]


def test_non_ascii_in_a_remote_reply_is_masked_in_an_ascii_dsn() -> None:
    report = failed(reply=Reply(550, ("5.1.1 Empfänger unbekannt",)))
    dsn = bounce(recipients=[report])

    assert dsn.data.isascii()
    assert "Empf?nger" in status_blocks(parse(dsn))[1]["Diagnostic-Code"]


def test_every_line_ends_with_crlf() -> None:
    for dsn in (bounce(), warning()):
        assert b"\n" not in dsn.data.replace(b"\r\n", b"")
        assert b"\r" not in dsn.data.replace(b"\r\n", b"")
        assert dsn.data.endswith(b"\r\n")


def test_international_addresses_use_the_global_types_of_rfc_6533() -> None:
    report = failed("jörg@bücher.example")
    dsn = bounce(original_sender="ünal@example.org", recipients=[report])
    message = parse(dsn)

    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/global-delivery-status",
        "message/global-headers",
    ]
    assert dsn.envelope.recipients == ("ünal@example.org",)
    assert "Final-Recipient: utf-8; jörg@bücher.example".encode() in dsn.data
    assert "<jörg@bücher.example>" in parts(message)[0].get_content()


def test_bounce_refuses_a_recipient_whose_action_is_not_failed() -> None:
    with pytest.raises(ValueError, match="action"):
        bounce(recipients=[delayed()])
    with pytest.raises(ValueError, match="action"):
        warning(recipients=[failed()])
    with pytest.raises(ValueError, match="at least one"):
        bounce(recipients=[])


def test_report_validates_status_and_dates() -> None:
    with pytest.raises(ValueError, match="status"):
        RecipientReport("bob@example.com", DsnAction.FAILED, "550")
    with pytest.raises(ValueError, match="type"):
        RecipientReport("bob@example.com", DsnAction.FAILED, "5.0.0", diagnostic_code="550 no")
    with pytest.raises(ValueError, match="timezone"):
        RecipientReport(
            "bob@example.com", DsnAction.FAILED, "5.0.0", last_attempt=datetime(2026, 1, 1)
        )
    with pytest.raises(ValueError, match="timezone"):
        bounce(now=datetime(2026, 1, 1))


def test_a_recipient_without_a_reply_is_explained_by_our_reason() -> None:
    report = RecipientReport(
        "bob@nowhere.example",
        DsnAction.FAILED,
        "5.4.4",
        reason="No mail server was found for nowhere.example.",
    )
    message = parse(bounce(recipients=[report]))
    text = parts(message)[0].get_content()

    assert "No mail server was found for nowhere.example." in text
    assert status_blocks(message)[1]["Diagnostic-Code"] is None


def test_header_section_is_everything_before_the_first_blank_line() -> None:
    data = HEADERS + b"\r\nbody line\r\n\r\nmore body\r\n"
    assert header_section(data) == HEADERS
    assert header_section(b"Subject: no body\r\n") == b"Subject: no body\r\n"


def test_header_section_of_a_huge_blank_line_free_message_is_capped_at_a_line() -> None:
    data = b"X-Filler: " + b"x" * 100 + b"\r\n"
    section = header_section(data * 2000)
    assert len(section) <= 64 * 1024
    assert section.endswith(b"\r\n")
    assert section.startswith(b"X-Filler: ")


@dataclass(frozen=True)
class Outcome:
    """Shaped like delivery.RecipientResult, as far as the DSN module reads it."""

    recipient: str
    status: str
    reason: str
    host: str | None = None
    reply: str | None = None
    enhanced_status: str | None = None


def test_recipient_facts_turn_a_bounced_result_into_a_failed_report() -> None:
    outcome = Outcome(
        "bob@example.com",
        "bounced",
        "mx.example.com refused the recipient: 550 5.1.1 no such user",
        host="mx.example.com",
        reply="550 5.1.1 no such user",
    )
    report = recipient_facts(outcome, last_attempt=NOW)

    assert report == RecipientReport(
        final_recipient="bob@example.com",
        action=DsnAction.FAILED,
        status="5.1.1",
        remote_mta="mx.example.com",
        diagnostic_code="smtp; 550 5.1.1 no such user",
        last_attempt=NOW,
        reason="mx.example.com refused the recipient: 550 5.1.1 no such user",
    )
    text = parts(parse(bounce(recipients=[report])))[0].get_content()
    assert text.count("550 5.1.1 no such user") == 1  # the reason quotes the reply once


def test_recipient_facts_for_a_deferral_without_any_reply() -> None:
    outcome = Outcome("bob@example.com", "deferred", "connection refused by all 2 hosts")
    report = recipient_facts(outcome)

    assert (report.action, report.status, report.diagnostic_code) == (
        DsnAction.DELAYED,
        "4.0.0",
        None,
    )
    assert report.reason == "connection refused by all 2 hosts"


def test_an_expired_deferral_is_failed_with_its_last_transient_status() -> None:
    outcome = Outcome(
        "bob@example.com",
        "bounced",
        "gave up after 5.0 days in the queue: 451 4.7.1 greylisted",
        host="mx.example.com",
        reply="451 4.7.1 greylisted",
        enhanced_status="4.7.1",
    )
    report = recipient_facts(outcome)

    assert (report.action, report.status) == (DsnAction.FAILED, "4.7.1")
    assert report.reason == outcome.reason
    per_recipient = status_blocks(parse(bounce(recipients=[report])))[1]
    assert per_recipient["Status"] == "4.7.1"


def test_recipient_facts_make_a_delivered_result_relayed() -> None:
    report = recipient_facts(
        Outcome("bob@example.com", "delivered", "accepted", host="mx.example.com",
                reply="250 2.0.0 queued as X1"),
        original_recipient=Orcpt("rfc822", "Bob+2Bnews@example.com"),
    )  # fmt: skip

    assert (report.action, report.status) == (DsnAction.RELAYED, "2.0.0")
    assert report.original_recipient == Orcpt("rfc822", "Bob+2Bnews@example.com")


def test_recipient_facts_refuse_a_result_of_no_known_status() -> None:
    with pytest.raises(ValueError, match="no DSN"):
        recipient_facts(Outcome("bob@example.com", "expanded", "250 ok"))


def test_original_recipient_and_envelope_id_are_shown_decoded_per_block() -> None:
    reports = [
        dataclasses.replace(failed(), original_recipient=Orcpt("rfc822", "Bob+2Bx@Example.COM")),
        failed("dave@example.com"),
    ]
    message = parse(bounce(recipients=reports, envid="QQ+3D1+2Bz"))
    per_message, first, second = status_blocks(message)

    assert per_message["Original-Envelope-Id"] == "QQ=1+z"
    assert first["Original-Recipient"] == "rfc822;Bob+x@Example.COM"
    assert first["Final-Recipient"] == "rfc822; bob@example.com"
    assert "Original-Recipient" not in second
    assert "you wrote rfc822;Bob+x@Example.COM" in " ".join(parts(message)[0].get_content().split())


def test_a_decoded_value_that_would_break_its_line_is_shown_as_xtext() -> None:
    report = dataclasses.replace(failed(), original_recipient=Orcpt("rfc822", "a+0D+0AB:c@d"))
    message = parse(bounce(recipients=[report], envid="x+0Ay"))
    per_message, block = status_blocks(message)

    assert per_message["Original-Envelope-Id"] == "x+0Ay"
    assert block["Original-Recipient"] == "rfc822;a+0D+0AB:c@d"


def test_ret_full_returns_the_whole_message_in_a_bounce() -> None:
    original = HEADERS + b"\r\nthe body, line one\r\n"
    message = parse(bounce(original_message=MessageBody.of(original)))
    returned = parts(message)[2]

    assert returned.get_content_type() == "message/rfc822"
    [inner] = returned.get_payload()  # type: ignore[misc]
    assert inner["Subject"] == "quarterly numbers"
    assert inner.get_payload() == "the body, line one\r\n"
    assert "Your message is attached." in " ".join(parts(message)[0].get_content().split())


def test_ret_full_over_the_limit_returns_the_headers() -> None:
    original = HEADERS + b"\r\n" + b"x" * (MAX_RETURNED_MESSAGE + 1) + b"\r\n"
    message = parse(bounce(original_message=MessageBody.of(original)))

    assert parts(message)[2].get_content_type() == "text/rfc822-headers"
    text = " ".join(parts(message)[0].get_content().split())
    assert "the whole message is larger than this mail system returns" in text


def test_relayed_report_says_relayed_with_the_reply() -> None:
    report = recipient_facts(
        Outcome("bob@example.com", "delivered", "accepted by mx.example.com",
                host="mx.example.com", reply="250 2.0.0 Ok: queued as X1"),
    )  # fmt: skip
    dsn = build_relayed(
        original_sender="alice@example.org", queue_id="1K1CBR3JRJT", original_headers=HEADERS,
        recipients=[report], reporting_mta="mta.example.net", arrival_date=ARRIVED, now=NOW,
        envid="E1",
    )  # fmt: skip
    assert dsn is not None
    message = parse(dsn)
    per_message, block = status_blocks(message)

    assert message["Subject"] == "Successful Mail Delivery Report"
    assert [p.get_content_type() for p in parts(message)][2] == "text/rfc822-headers"
    assert (block["Action"], block["Status"]) == ("relayed", "2.0.0")
    assert block["Diagnostic-Code"] == "smtp; 250 2.0.0 Ok: queued as X1"
    assert per_message["Original-Envelope-Id"] == "E1"


def test_a_dsn_unpacks_into_envelope_and_data() -> None:
    envelope, data = bounce()
    assert envelope.sender == ""
    assert data.startswith(b"From: Mail Delivery System")
