import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaymail.errors import RemoteProtocolError
from relaymail.smtp.reply import MAX_LINE, Reply, ReplyParser


def parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def test_multi_line_reply_is_one_reply():
    [reply] = parse_all(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n")
    assert reply.code == 250
    assert reply.lines == ("mx.example", "PIPELINING", "SIZE 1000")


def test_enhanced_status_code_is_read_only_when_its_class_matches():
    assert parse_all(b"550 5.1.1 no such user\r\n")[0].enhanced == "5.1.1"
    assert parse_all(b"550 4.1.1 inconsistent\r\n")[0].enhanced is None
    assert parse_all(b"250 ok\r\n")[0].enhanced is None


def test_bare_code_without_text_and_bare_lf_are_accepted():
    assert parse_all(b"250\n")[0] == Reply(250, ("",))


@pytest.mark.parametrize(
    "data",
    [b"hello\r\n", b"25\r\n", b"2500 x\r\n", b"250_x\r\n", b"999 x\r\n", b"250-a\r\n251 b\r\n"],
)
def test_malformed_replies_are_the_servers_fault(data):
    with pytest.raises(RemoteProtocolError):
        parse_all(data)


def test_oversized_line_is_refused_before_its_end_arrives():
    parser = ReplyParser()
    with pytest.raises(RemoteProtocolError, match="longer than"):
        parser.feed(b"250 " + b"x" * (MAX_LINE + 10))


def test_endless_multi_line_reply_is_refused():
    with pytest.raises(RemoteProtocolError, match="lines"):
        parse_all(b"250-x\r\n" * 1000)


def test_unconsumed_bytes_include_parsed_but_unclaimed_replies():
    parser = ReplyParser()
    parser.feed(b"220 go ahead\r\n250-injected\r\n250 OK\r\npartial")
    assert parser.next_reply() == Reply(220, ("go ahead",))
    assert parser.take_unconsumed() == b"250-injected\r\n250 OK\r\npartial"
    assert not parser.has_data


@given(
    code=st.integers(200, 599),
    lines=st.lists(
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
        min_size=1,
        max_size=5,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_any_split_of_the_stream_gives_the_same_reply(code, lines, cuts):
    wire = b"".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
        for i, line in enumerate(lines)
    )
    parser = ReplyParser()
    start = 0
    for cut in sorted(c % (len(wire) + 1) for c in cuts):
        parser.feed(wire[start:cut])
        start = max(start, cut)
    parser.feed(wire[start:])
    reply = parser.next_reply()
    assert reply is not None
    assert reply.code == code
    assert reply.lines == tuple(lines)
    assert parser.next_reply() is None
