"""The maildrop file format and the sender rule, without files or processes."""

from __future__ import annotations

import pytest

from relaymail.config import parse_config
from relaymail.errors import MaildropCorrupt
from relaymail.inbound.pickup import Sender, envelope_sender
from relaymail.maildrop import Submission, decode, encode, file_name, is_file_name

FULL = Submission(("a@x.test", "b@y.test"), b"Subject: s\r\n\r\nbody\r\n", 1764412345.5,
                  "", "Jörg Müller", (("N", "never"), ("B", "8BITMIME")))  # fmt: skip


@pytest.mark.parametrize("submission", [FULL, Submission(("a@x.test",), b"", 0.0)])
def test_encode_then_decode_gives_the_same_submission(submission):
    assert decode(encode(submission)) == submission


@pytest.mark.parametrize(
    "raw",
    [b"", b"relaymail-maildrop 2\n", encode(FULL)[:-1], encode(FULL) + b"x",
     encode(FULL).replace(b"size ", b"size 1"), encode(FULL).replace(b"\n\n", b"\n"),
     encode(FULL).replace(b"flag N", b"flag Q"), encode(FULL).replace(b"sender <>", b"sender a b"),
     encode(FULL).replace(b"sender <>", b"sender <>\nsender <>"),
     encode(FULL).replace(b"recipient a@x.test", b"recipient a@x.test\r"),
     encode(FULL).replace(b"J\xc3\xb6rg", b"J\xf6rg"),
     encode(FULL).replace(b"full-name J", b"full-name \x1bJ"),
     encode(FULL).replace(b"submitted-at 1764412345.500000", b"submitted-at nan"),
     encode(Submission((), b"", 0.0))],
)  # fmt: skip
def test_decode_refuses_what_sendmail_would_not_write(raw):
    with pytest.raises(MaildropCorrupt):
        decode(raw)


def test_file_names_are_recognised():
    name = file_name(1 << 60, 4242, bytes(range(16)))
    assert is_file_name(name)
    assert not is_file_name("t." + name) and not is_file_name(name + "x")


CONFIG = parse_config({"delivery": {"helo_name": "host.example"}})


@pytest.mark.parametrize(
    ("requested", "trusted", "sender"),
    [(None, False, Sender("www-data@host.example")),
     ("admin@example.org", False, Sender("www-data@host.example", refused="admin@example.org")),
     ("", False, Sender("www-data@host.example", refused="")),
     ("www-data@host.example", False, Sender("www-data@host.example")),
     ("admin@example.org", True, Sender("admin@example.org")),
     ("", True, Sender(""))],
)  # fmt: skip
def test_only_a_trusted_user_sets_the_sender(requested, trusted, sender):
    assert envelope_sender(requested, "www-data", trusted, CONFIG) == sender
