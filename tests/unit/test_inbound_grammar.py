"""The pure parts behind inbound MAIL/RCPT and DATA: the path grammar and line folding."""

from __future__ import annotations

import pytest

from relaymail.inbound.checks import mail_param_problem
from relaymail.inbound.cleanup import fold_long_lines
from relaymail.inbound.grammar import POSTMASTER, SmtpPath, parse_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<a@b.example>", SmtpPath("a@b.example")),
        ("<a@b.example> SIZE=10", SmtpPath("a@b.example", "SIZE=10")),
        ("<>", SmtpPath("")),
        ("<Postmaster>", SmtpPath(POSTMASTER)),
        ("<@a.example,@b.example:u@c.example>", SmtpPath("u@c.example")),
        ("a@b.example", SmtpPath("a@b.example")),
        ('<"x y"@b.example>', SmtpPath('"x y"@b.example')),
        ("<u@[127.0.0.1]>", SmtpPath("u@[127.0.0.1]")),
        ("<üser@bücher.example>", SmtpPath("üser@bücher.example")),
        # A bare name: the handler qualifies it with [local] domain, or refuses it.
        ("<root>", SmtpPath("root")),
        ('<"help desk"> NOTIFY=NEVER', SmtpPath('"help desk"', "NOTIFY=NEVER")),
    ],
)
def test_paths_that_parse(text: str, expected: SmtpPath) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<",
        "<a@b",
        "<<\udcff>>",
        "\udcff@",
        "<a@>",
        "<@b>",
        "<a b@c>",
        "<a@b.example",
        "root",
        "<ro ot>",
    ],
)
def test_paths_that_do_not(text: str) -> None:
    assert parse_path(text) is None


def test_size_takes_ascii_digits_only() -> None:
    assert mail_param_problem({"SIZE": "²"}, 100) == "501 5.5.4 SIZE takes a number of octets"
    assert mail_param_problem({"SIZE": "99"}, 100) is None


def test_fold_keeps_short_data_and_makes_every_line_fit() -> None:
    data = (
        b"Subject: " + b"ab " * 600 + b"\r\nX: " + b"y" * 1200 + b"\r\n\r\n" + b"z" * 2500 + b"\r\n"
    )
    folded = fold_long_lines(data, 1000)
    assert folded.lines == 3
    lines = folded.data.split(b"\r\n")
    assert max(map(len, lines)) <= 998
    header, body = folded.data.split(b"\r\n\r\n")
    assert all(
        line[:1] in b" \t" for line in header.split(b"\r\n")[1:] if not line.startswith(b"X:")
    )
    assert body.replace(b"\r\n", b"") == b"z" * 2500
    assert fold_long_lines(b"a\r\n\r\nb\r\n", 1000).data == b"a\r\n\r\nb\r\n"


def test_fold_never_cuts_a_utf8_character() -> None:
    body = "é".encode() * 1000  # two octets each: 998 falls on a character boundary, 999 not
    folded = fold_long_lines(b"\r\n" + b"a" + body + b"\r\n", 1000)
    for line in folded.data.split(b"\r\n"):
        line.decode("utf-8")
