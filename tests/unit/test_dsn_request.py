"""RFC 3461's parameters: parsed into types, kept as sent, written back on the wire."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaymail.dsn_request import (
    NO_RECIPIENT_DSN,
    DsnRequest,
    Notify,
    Orcpt,
    RecipientDsn,
    Ret,
    orcpt_for,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    xtext_decode,
    xtext_display,
    xtext_encode,
)


@pytest.mark.parametrize(
    ("value", "notify", "wire"),
    [
        ("NEVER", Notify.NEVER, "NEVER"),
        ("never", Notify.NEVER, "NEVER"),
        ("delay,Success", Notify.SUCCESS | Notify.DELAY, "SUCCESS,DELAY"),
        ("FAILURE", Notify.FAILURE, "FAILURE"),
        ("FAILURE,FAILURE", Notify.FAILURE, "FAILURE"),
    ],
)
def test_notify_parses_and_goes_on_in_rfc_order(value: str, notify: Notify, wire: str) -> None:
    assert parse_notify(value) == notify
    assert notify.wire == wire


@pytest.mark.parametrize(
    "value", [None, "", "NEVER,SUCCESS", "SUCCESS,,DELAY", "ALWAYS", "SUCCESS "]
)
def test_notify_refuses_what_rfc_3461_does_not_allow(value: str | None) -> None:
    with pytest.raises(ValueError):
        parse_notify(value)


def test_ret_parses_in_any_case_and_refuses_others() -> None:
    assert parse_ret("hdrs") is Ret.HDRS
    assert parse_ret("FULL") is Ret.FULL
    with pytest.raises(ValueError, match="FULL or HDRS"):
        parse_ret("BODY")


def test_envid_is_kept_as_sent_and_must_be_short_xtext() -> None:
    assert parse_envid("QQ+2Bx+3D1") == "QQ+2Bx+3D1"
    for bad in ("a+2b", "a=b", "x" * 101, "a b", None):
        with pytest.raises(ValueError):
            parse_envid(bad)


def test_orcpt_keeps_type_and_xtext_octet_for_octet() -> None:
    orcpt = parse_orcpt("RFC822;Bob+2BNews@Example.ORG", smtputf8=False)

    assert orcpt == Orcpt("RFC822", "Bob+2BNews@Example.ORG")
    assert orcpt.wire == "RFC822;Bob+2BNews@Example.ORG"
    assert orcpt.display == "RFC822;Bob+News@Example.ORG"


@pytest.mark.parametrize(
    ("value", "smtputf8"),
    [
        ("rfc822", False),  # no address
        (";a@b", False),  # no type
        ("rfc822;a+zz@b", False),  # bad hex
        ("rfc822;a=b@c", False),
        ("rfc822;jörg@b", True),  # raw UTF-8 only in the utf-8 type
        ("utf-8;jörg@b", False),  # ... and only with SMTPUTF8
        ("rfc822;" + "a" * 500, False),  # over 500 characters
    ],
)
def test_orcpt_refuses_malformed_values(value: str, smtputf8: bool) -> None:
    with pytest.raises(ValueError):
        parse_orcpt(value, smtputf8=smtputf8)


def test_orcpt_of_the_utf8_type_takes_escapes_and_with_smtputf8_the_characters() -> None:
    escaped = parse_orcpt("utf-8;j\\x{F6}rg@b.example", smtputf8=False)
    assert escaped.display == "utf-8;jörg@b.example"
    assert parse_orcpt("utf-8;jörg@b.example", smtputf8=True).xtext == "jörg@b.example"


def test_a_decoded_value_with_a_control_or_space_is_shown_as_xtext() -> None:
    assert xtext_display("a+0D+0Ab") == "a+0D+0Ab"
    assert xtext_display("a+20b") == "a+20b"
    assert xtext_display("a+2Bb") == "a+b"
    assert xtext_display("caf+C3+A9") == "caf+C3+A9"


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127)))
def test_xtext_encoding_round_trips(text: str) -> None:
    encoded = xtext_encode(text)
    assert xtext_decode(encoded) == text
    assert all("!" <= c <= "~" and c != "=" for c in encoded)


def test_orcpt_for_an_address_names_it_in_its_type() -> None:
    assert orcpt_for("a+b@c.example") == Orcpt("rfc822", "a+2Bb@c.example")
    international = orcpt_for("jörg@c.example")
    assert international == Orcpt("utf-8", "j\\x{F6}rg@c.example")
    assert international.display == "utf-8;jörg@c.example"


def test_recipient_defaults_report_failures_and_delays_but_not_success() -> None:
    assert NO_RECIPIENT_DSN.wants(Notify.FAILURE)
    assert NO_RECIPIENT_DSN.wants(Notify.DELAY)
    assert not NO_RECIPIENT_DSN.wants(Notify.SUCCESS)
    never = RecipientDsn(Notify.NEVER)
    assert not any(never.wants(e) for e in (Notify.SUCCESS, Notify.FAILURE, Notify.DELAY))
    success = RecipientDsn(Notify.SUCCESS)
    assert success.wants(Notify.SUCCESS) and not success.wants(Notify.FAILURE)


def test_the_wire_forms_of_mail_and_rcpt() -> None:
    request = DsnRequest(Ret.HDRS, "E+2B1").with_recipients(
        [("a@b", RecipientDsn(Notify.SUCCESS | Notify.FAILURE, Orcpt("rfc822", "A@B"))),
         ("c@d", NO_RECIPIENT_DSN)]
    )  # fmt: skip

    assert request.mail_wire == " RET=HDRS ENVID=E+2B1"
    assert request.of("a@b").wire == " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A@B"
    assert request.of("c@d").wire == ""
    assert list(request.recipients) == ["a@b"]
    assert RecipientDsn.from_stored("SUCCESS,FAILURE", "rfc822;A@B") == request.of("a@b")


def test_alias_expansion_hands_notify_on_and_names_the_original() -> None:
    request = DsnRequest().with_recipients([("list@x", RecipientDsn(Notify.FAILURE))])
    expanded = request.expanded(
        [("list@x", ("a@y", "b@y")), ("kept@x", ("kept@x",)), ("root", ("admin@x",))]
    )

    assert expanded.of("a@y") == RecipientDsn(Notify.FAILURE, Orcpt("rfc822", "list@x"))
    assert expanded.of("b@y") == expanded.of("a@y")
    assert expanded.of("kept@x") == NO_RECIPIENT_DSN
    assert expanded.of("admin@x") == RecipientDsn(None, Orcpt("rfc822", "root"))


def test_a_utf8_orcpt_goes_escaped_into_a_transaction_without_smtputf8() -> None:
    dsn = RecipientDsn(Notify.FAILURE, parse_orcpt("utf-8;jörg@b.example", smtputf8=True))

    assert dsn.on_wire(smtputf8=True) == " NOTIFY=FAILURE ORCPT=utf-8;jörg@b.example"
    assert dsn.on_wire(smtputf8=False) == " NOTIFY=FAILURE ORCPT=utf-8;j\\x{F6}rg@b.example"
