"""The pure parts behind inbound MAIL/RCPT and DATA: the path grammar and line folding."""

from __future__ import annotations

import pytest

from relaymail.inbound.checks import mail_param_problem
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
    refusal = mail_param_problem({"SIZE": "²"}, 100, tls=False)
    assert refusal == "501 5.5.4 SIZE takes a number of octets"
    assert mail_param_problem({"SIZE": "99"}, 100, tls=False) is None


def test_requiretls_is_taken_over_tls_only_and_without_a_value() -> None:
    assert mail_param_problem({"REQUIRETLS": None}, 100, tls=True) is None
    refused = mail_param_problem({"REQUIRETLS": None}, 100, tls=False)
    assert refused is not None and refused.startswith("530 5.7.10 ")
    valued = mail_param_problem({"REQUIRETLS": "YES"}, 100, tls=True)
    assert valued is not None and valued.startswith("501 5.5.4 ")
