"""A message body read in chunks: dot-stuffing and 7-bit conversion across chunk boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaymail.body import CHUNK_SIZE, HEAD_LIMIT, MessageBody
from relaymail.delivery.convert import to_7bit
from relaymail.delivery.plan import DomainPlan
from relaymail.delivery.run import DomainRun
from relaymail.errors import BodyUnreadable
from relaymail.message import DotStuffer, dot_stuff
from relaymail.message_data import IN_MEMORY
from relaymail.smtp.client import Capabilities
from relaymail.smtp.reply import Reply
from relaymail.tls.policy import Level


def stuffed_in_chunks(data: bytes, chunk_size: int) -> tuple[bytes, bool]:
    stuffer = DotStuffer()
    out = b"".join(stuffer.feed(c) for c in MessageBody.of(data, chunk_size).chunks())
    return out, stuffer.at_line_start


@pytest.mark.parametrize(
    ("data", "chunk_size", "stuffed"),
    [
        # A line split exactly at the boundary, a dot starting the next chunk.
        (b"ab\r\n.cd\r\n", 4, b"ab\r\n..cd\r\n"),
        # CRLF split across chunks, the dot after the LF.
        (b"ab\r\n.cd\r\n", 3, b"ab\r\n..cd\r\n"),
        # The dot alone in its chunk, and a dot at the very start.
        (b".\r\n.\r\n", 1, b"..\r\n..\r\n"),
        # A dot inside a line is no line start, whatever the chunks.
        (b"a.b\r\nc\r.\r\n", 2, b"a.b\r\nc\r.\r\n"),
    ],
)
def test_dot_stuffing_across_chunk_boundaries(data: bytes, chunk_size: int, stuffed: bytes) -> None:
    assert stuffed_in_chunks(data, chunk_size) == (stuffed, True)


@given(
    st.lists(st.sampled_from([b".", b"\r\n", b"\r", b"\n", b"a", b".."]), max_size=40),
    st.integers(1, 7),
)
def test_chunked_stuffing_is_the_stuffing_of_the_whole(parts: list[bytes], chunk: int) -> None:
    data = b"".join(parts)
    at_line_start = data == b"" or data.endswith(b"\r\n")
    assert stuffed_in_chunks(data, chunk) == (dot_stuff(data), at_line_start)


def test_data_without_a_final_crlf_is_not_at_a_line_start() -> None:
    assert stuffed_in_chunks(b"a\r\nb", 2) == (b"a\r\nb", False)


EIGHT_BIT = (
    b"Subject: caf\xc3\xa9\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + b"\xc3\xa9t\xc3\xa9 "
    * 40
    + b"\r\n.line\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nascii\r\n--b--\r\n"
)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 16])
def test_the_7bit_form_sent_in_chunks_is_the_conversion_of_the_whole(chunk_size: int) -> None:
    run = DomainRun("example.com", DomainPlan(Level.MAY, "default"), "a@example.org",
                    MessageBody.of(EIGHT_BIT, chunk_size), True, {})  # fmt: skip
    caps = Capabilities.from_ehlo(Reply(250, ("mx", "SMTPUTF8")))

    body = run.data_for(caps)
    converted = to_7bit(EIGHT_BIT, utf8_headers=True)
    # Chunked as the original was, unless that was one chunk: then one chunk again.
    whole = chunk_size >= len(EIGHT_BIT)
    assert (body.size, body.chunk_size) == (len(converted), len(converted) if whole else chunk_size)
    assert b"\xc3" not in body.read_all()[body.read_all().index(b"--b") :]  # UTF-8 header only
    assert stuffed_in_chunks(body.read_all(), chunk_size)[0] == dot_stuff(converted)
    assert run.data_for(Capabilities.from_ehlo(Reply(250, ("mx", "8BITMIME")))) is run.body


def test_the_head_is_the_header_section_found_across_chunks_and_capped() -> None:
    assert MessageBody.of(b"A: 1\r\nB: 2\r\n\r\nbody\r\n", 3).head() == b"A: 1\r\nB: 2\r\n"
    assert MessageBody.of(b"\r\nbody\r\n", 3).head() == b""
    endless = b"X: " + b"y" * (HEAD_LIMIT * 2)
    assert len(MessageBody.of(endless).head()) == HEAD_LIMIT


def test_a_body_in_memory_is_one_chunk_uncopied_up_to_in_memory_then_chunk_size() -> None:
    small = b"Subject: x\r\n\r\n" + b"y" * (IN_MEMORY - 16) + b"\r\n"
    (only,) = MessageBody.of(small).chunks()
    assert only is small
    assert MessageBody.of(small).head() == b"Subject: x\r\n"
    large = small + b"z" * 10
    assert [len(c) for c in MessageBody.of(large).chunks()] == [CHUNK_SIZE] * 4 + [10]
    assert list(MessageBody.of(b"").chunks()) == []


def test_a_stuffer_told_there_is_nothing_to_stuff_follows_the_line_ends_only() -> None:
    stuffer = DotStuffer(stuff=False)
    assert stuffer.feed(b"a\r\n.b\r") == b"a\r\n.b\r" and not stuffer.at_line_start
    assert stuffer.feed(b"\n") == b"\n" and stuffer.at_line_start


def test_a_body_that_ends_early_or_fails_raises_body_unreadable() -> None:
    short = MessageBody(10, lambda offset, length: b"abc"[offset : offset + length], 2)
    with pytest.raises(BodyUnreadable, match="octet 3 of 10"):
        short.read_all()

    def failing(offset: int, length: int) -> bytes:
        raise BodyUnreadable("disk I/O error")

    with pytest.raises(BodyUnreadable, match="disk I/O error"):
        MessageBody(5, failing).eight_bit()
