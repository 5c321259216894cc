"""What sendmail makes of the message it reads before the maildrop (commands/sendmail.prepare)."""

from __future__ import annotations

import pytest

from relaymail.commands.sendmail import parse_args, prepare


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"Subject: x\r\nBcc: s@x.test\r\n\r\nb\r\n", b"Subject: x\r\n\r\nb\r\n"),
        # RFC 5322's obsolete "Name :" form is the same field.
        (b"Subject: x\r\nBcc : s@x.test\r\n t@x.test\r\n\r\nb\r\n", b"Subject: x\r\n\r\nb\r\n"),
        (b"Resent-Bcc: s@x.test\r\nSubject: x\r\n\r\nb\r\n", b"Subject: x\r\n\r\nb\r\n"),
        (b"X-Bcc-Note: kept\r\n\r\nb\r\n", b"X-Bcc-Note: kept\r\n\r\nb\r\n"),
    ],
)
def test_bcc_is_removed_without_t_too(given: bytes, kept: bytes) -> None:
    data, recipients = prepare(given, parse_args(["u@x.test"]))
    assert (data, recipients) == (kept, ["u@x.test"])


@pytest.mark.parametrize(
    ("given", "made"),
    [
        (b"hello world: body\r\n", b"\r\nhello world: body\r\n"),  # a space: no field name
        (b"3,0\r\n", b"\r\n3,0\r\n"),
        (b"From root  Wed Dec  2 00:00:00 2026\r\nSubject: x\r\n\r\nb\r\n",
         b"Subject: x\r\n\r\nb\r\n"),
        (b"From : Alice <a@x.test>\r\n\r\nb\r\n", b"From : Alice <a@x.test>\r\n\r\nb\r\n"),
        (b"Subject: x\r\n folded\r\nbody at once\r\n",
         b"Subject: x\r\n folded\r\n\r\nbody at once\r\n"),
    ],
)  # fmt: skip
def test_the_header_section_ends_at_the_first_line_that_is_no_field(
    given: bytes, made: bytes
) -> None:
    assert prepare(given, parse_args(["u@x.test"]))[0] == made


@pytest.mark.parametrize(
    ("argv", "extract", "dot_ends", "sender", "recipients"),
    [
        (["-ti"], True, False, None, []),
        (["-it", "u@x.test"], True, False, None, ["u@x.test"]),
        (["-tif", "root"], True, False, "root", []),
        (["-tifroot"], True, False, "root", []),
        (["-vt", "-oi", "u@x.test"], True, False, None, ["u@x.test"]),
        (["-oi", "-t"], True, False, None, []),  # -o takes a value: "i", not a cluster
        (["-t", "--", "-ti"], True, True, None, ["-ti"]),
    ],
)
def test_flags_without_a_value_cluster_as_getopt_takes_them(
    argv: list[str], extract: bool, dot_ends: bool, sender: str | None, recipients: list[str]
) -> None:
    options = parse_args(argv)
    assert (options.extract, options.dot_ends, options.sender, options.recipients) == (
        extract, dot_ends, sender, recipients,
    )  # fmt: skip


@pytest.mark.parametrize("argv", [["-tx"], ["-tbs"], ["-tf"], ["-tq"], ["-t-", "-bs"], ["-t-help"]])
def test_a_cluster_with_an_unknown_or_refused_flag_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_args(argv)
