import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaymail.errors import AddressError
from relaymail.message import (
    Envelope,
    canonical_data,
    domain_of,
    dot_stuff,
    header_section,
    split_header_section,
)


def unstuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_line_endings_become_crlf():
    assert canonical_data(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert canonical_data(b"") == b""


def test_dots_at_line_start_are_doubled():
    assert dot_stuff(b".a\r\nb\r\n.\r\n..c\r\n") == b"..a\r\nb\r\n..\r\n...c\r\n"


@given(st.binary(max_size=300))
def test_stuffing_round_trips_and_never_ends_the_data_early(raw):
    data = canonical_data(raw)
    stuffed = dot_stuff(data)
    assert b"\r\n.\r\n" not in b"\r\n" + stuffed
    assert unstuff(stuffed) == data


def test_domains_are_lower_case_a_labels():
    assert domain_of("User@Example.ORG") == "example.org"
    assert domain_of("josé@bücher.example") == "xn--bcher-kva.example"
    assert domain_of("u@[127.0.0.1]") == "[127.0.0.1]"


@pytest.mark.parametrize(
    "address",
    ["nodomain", "a@", "@b", "a b@c", "a@b>", "a@b\r\nRCPT", "a\x7f@b", "a\x85@b", "a\u2028@b",
     "a\udcff@b"],
)  # fmt: skip
def test_unusable_addresses_are_refused(address):
    with pytest.raises(AddressError):
        Envelope("s@x.example", (address,))


def test_international_addresses_need_smtputf8():
    assert Envelope("s@x.example", ("josé@example.org",)).needs_smtputf8
    assert not Envelope("", ("u@example.org",)).needs_smtputf8


@pytest.mark.parametrize(
    ("data", "headers", "body"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n", b"A: 1\r\nB: 2\r\n", b"body\r\n\r\nmore\r\n"),
        (b"A: 1\r\n", b"A: 1\r\n", b""),  # no blank line: all header section
        (b"A: 1\r\n\r\n", b"A: 1\r\n", b""),
        (b"\r\nbody\r\n\r\nB: 2\r\n", b"", b"body\r\n\r\nB: 2\r\n"),  # starts with the blank line
        (b"", b"", b""),
    ],
)
def test_the_header_section_ends_at_the_first_blank_line(data, headers, body):
    assert header_section(data) == headers
    assert split_header_section(data) == (headers, body)
