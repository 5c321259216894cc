"""Header fix-up and the local trace header: pure functions over canonical data."""

from __future__ import annotations

import email.utils
import re

import pytest

from relaymail.errors import HeaderValueError
from relaymail.inbound.cleanup import local_received_header, missing_fields, rfc5322_date
from relaymail.inbound.intake import Intake
from relaymail.message import split_header_section
from relaymail.message_data import MessageData

MESSAGE_ID = re.compile(r"<[0-9a-f]+\.[0-9]+\.[0-9a-f]{8}@mail\.example\.org>")


def fix_up_headers(data: bytes, *, hostname: str, add_from: str | None = None) -> bytes:
    """``data`` as a front door queues it: the missing fields in front."""
    intake = Intake(MessageData(), fold_at=None, unstuff=False)
    intake.feed(data)
    added = missing_fields(intake.finish().headers, hostname=hostname, add_from=add_from)
    return added + data


def fields(data: bytes) -> dict[str, str]:
    headers, _ = split_header_section(data)
    return {
        name.lower(): value.strip()
        for name, _, value in (line.decode().partition(":") for line in headers.split(b"\r\n"))
        if name
    }


def test_missing_date_and_message_id_are_added_in_front() -> None:
    data = b"Subject: hi\r\nFrom: <a@example.org>\r\n\r\nbody\r\n"
    fixed = fix_up_headers(data, hostname="mail.example.org")
    assert fixed.endswith(data)
    added = fields(fixed[: -len(data)] + b"\r\n")
    assert set(added) == {"date", "message-id"}
    assert MESSAGE_ID.fullmatch(added["message-id"])
    assert email.utils.parsedate_to_datetime(added["date"]).tzinfo is not None


def test_present_fields_are_kept_whatever_their_case_or_space_before_the_colon() -> None:
    data = b"DATE : Mon, 02 Nov 2026 10:00:00 +0000\r\nmessage-id: <x@y>\r\n\r\nbody\r\n"
    assert fix_up_headers(data, hostname="mail.example.org") == data


def test_fields_in_the_body_do_not_count() -> None:
    data = b"Subject: hi\r\n\r\nDate: not a header\r\nMessage-ID: <x@y>\r\n"
    assert set(fields(fix_up_headers(data, hostname="h.example"))) == {
        "date",
        "message-id",
        "subject",
    }


def test_message_without_a_header_section_keeps_its_blank_line() -> None:
    fixed = fix_up_headers(b"\r\nbody only\r\n", hostname="h.example")
    _, body = split_header_section(fixed)
    assert body == b"body only\r\n"
    assert set(fields(fixed)) == {"date", "message-id"}


def test_two_messages_get_different_message_ids() -> None:
    first, second = (fix_up_headers(b"\r\n", hostname="h.example") for _ in range(2))
    assert fields(first)["message-id"] != fields(second)["message-id"]


def test_from_is_added_only_when_asked_and_missing() -> None:
    fixed = fix_up_headers(b"Subject: x\r\n\r\n", hostname="h.example", add_from="<u@h.example>")
    assert fields(fixed)["from"] == "<u@h.example>"
    kept = fix_up_headers(b"From: <a@b>\r\n\r\n", hostname="h.example", add_from="<u@h.example>")
    assert fields(kept)["from"] == "<a@b>"


def test_a_from_with_a_line_break_is_refused() -> None:
    with pytest.raises(HeaderValueError):
        fix_up_headers(b"\r\n", hostname="h.example", add_from="<u@h>\r\nBcc: x@y")


def test_local_received_header_is_postfix_shaped() -> None:
    header = local_received_header(
        "1K1H0AB2CDE",
        hostname="mail.example.org",
        uid=33,
        recipients=["root@example.org"],
        date="Mon, 02 Nov 2026 10:00:00 +0000",
    )
    assert header == (
        b"Received: by mail.example.org (relaymail, from userid 33)\r\n"
        b"\tid 1K1H0AB2CDE\r\n"
        b"\tfor <root@example.org>; Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    )


def test_rfc5322_date_round_trips() -> None:
    parsed = email.utils.parsedate_to_datetime(rfc5322_date(1_800_000_000.0))
    assert parsed.timestamp() == 1_800_000_000.0
