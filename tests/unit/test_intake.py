"""The intake: wire pieces in, canonical, unstuffed, folded data out, whatever the piece sizes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaymail.inbound.intake import BATCH, HeaderFields, Intake, IntakeResult
from relaymail.message_data import IN_MEMORY, MessageData


def take(
    raw: bytes, *, fold_at: int | None = 1000, unstuff: bool = False, pieces: int = 0
) -> IntakeResult:
    """``raw`` through an intake, in one piece or in ``pieces`` random cuts."""
    intake = Intake(MessageData(), fold_at=fold_at, unstuff=unstuff)
    cuts = sorted(random.Random(len(raw)).sample(range(len(raw) + 1), min(pieces, len(raw) + 1)))
    for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        intake.feed(raw[start:end])
    return intake.finish()


def test_fold_keeps_short_data_and_makes_every_line_fit() -> None:
    data = (
        b"Subject: " + b"ab " * 600 + b"\r\nX: " + b"y" * 1200 + b"\r\n\r\n" + b"z" * 2500 + b"\r\n"
    )
    folded = take(data)
    assert folded.folded == 3
    out = folded.data.read()
    assert max(map(len, out.split(b"\r\n"))) <= 998
    header, body = out.split(b"\r\n\r\n")
    assert all(
        line[:1] in b" \t" for line in header.split(b"\r\n")[1:] if not line.startswith(b"X:")
    )
    assert body.replace(b"\r\n", b"") == b"z" * 2500
    assert take(b"a\r\n\r\nb\r\n").data.read() == b"a\r\n\r\nb\r\n"


def test_fold_never_cuts_a_utf8_character() -> None:
    body = "é".encode() * 1000  # two octets each: 998 falls on a character boundary, 999 not
    folded = take(b"\r\n" + b"a" + body + b"\r\n", pieces=7)
    for line in folded.data.read().split(b"\r\n"):
        line.decode("utf-8")


@pytest.mark.parametrize("pieces", [0, 3, 40])
def test_a_line_of_megabytes_is_split_the_same_whatever_the_pieces(pieces: int) -> None:
    line = bytes(range(33, 127)) * 30_000  # 2.8 MB, no whitespace: header and body alike
    result = take(b"X-Long: " + line + b"\r\n\r\n" + line + b"\r\n", pieces=pieces)
    out = result.data.read()
    assert result.folded == 2
    assert result.longest == len(line) + 10
    assert max(map(len, out.split(b"\r\n"))) == 998
    header, body = out.split(b"\r\n\r\n")
    # Folded at its only space, then cut with an added space (Postfix's way).
    first, folded_at_space, *cut = header.split(b"\r\n")
    assert first + folded_at_space + b"".join(piece[1:] for piece in cut) == b"X-Long: " + line
    assert all(piece[:1] == b" " for piece in cut)
    assert body.replace(b"\r\n", b"") == line


def test_refuse_mode_measures_without_folding() -> None:
    data = b"Subject: x\r\n\r\n" + b"a" * 1500 + b"\r\n"
    result = take(data, fold_at=None, pieces=5)
    assert (result.data.read(), result.longest, result.folded) == (data, 1502, 0)


def test_crlf_data_is_left_alone_and_its_lines_measured() -> None:
    data = b"Subject: x\r\n\r\n" + b"a" * 100 + b"\r\n"
    result = take(data)
    assert (result.data.read(), result.longest) == (data, 102)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"a\nb\r\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
        (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r", b"a\r\n"),
        (b"no line end", b"no line end\r\n"),
        (b"", b""),
    ],
)
def test_bare_line_ends_become_crlf_even_across_pieces(raw: bytes, canonical: bytes) -> None:
    for pieces in (0, 1, 2, len(raw)):
        assert take(raw, pieces=pieces).data.read() == canonical


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"..leading\r\n", b".leading\r\n"),
        (b"a\r\n..b\r\n...c\r\n", b"a\r\n.b\r\n..c\r\n"),
        (b"a\n.b\r\n", b"a\r\n.b\r\n"),  # a bare LF starts no line on the wire
        (b".\r\n", b"\r\n"),
        (b"", b""),
    ],
)
def test_dots_are_unstuffed_at_every_wire_line_start(wire: bytes, message: bytes) -> None:
    for pieces in (0, 1, 2, len(wire)):
        assert take(wire, unstuff=True, pieces=pieces).data.read() == message


@pytest.mark.parametrize("line", [b".x\r\n", b"..\r\n", b"\r\n", b".\r.\n.\r\n"])
def test_unstuffing_is_the_same_wherever_the_batches_split(line: bytes) -> None:
    # Lines of a few octets: the batch boundaries fall between CR, LF and "." in every way.
    wire = line * (5 * BATCH // len(line) + 1)
    expected = wire.replace(b"\r\n.", b"\r\n").removeprefix(b".")
    expected = expected.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    for pieces in (0, 7, 300):
        assert take(wire, unstuff=True, pieces=pieces).data.read() == expected


def test_header_fields_are_noted_in_the_header_section_only() -> None:
    data = (
        b"Received: a\r\nRECEIVED : b\r\n\tfolded\r\nX-Received: no\r\ndate: x\r\n"
        b"\r\nReceived: body\r\nMessage-ID: <body@x>\r\nFrom: body\r\n"
    )
    assert take(data, pieces=9).headers == HeaderFields(received=2, date=True)
    assert take(b"\r\nReceived: body only\r\n").headers == HeaderFields()
    everything = b"Received: x\r\nReceived: y\r\nFrom: a\r\nMessage-Id : <i@x>\r\n"
    assert take(everything).headers == HeaderFields(2, date=False, message_id=True, from_=True)


def test_a_large_message_goes_to_a_file_and_reads_back_the_same(tmp_path: object) -> None:
    body = b"".join(b"line %d\r\n" % n for n in range(200_000))  # 2.2 MB
    data = b"Subject: big\r\n\r\n" + body
    result = take(data, unstuff=True, pieces=len(data) // BATCH * 3)
    assert result.data.size == len(data) > IN_MEMORY
    assert result.data.in_memory() is None
    assert result.data.read() == data
    result.data.prepend(b"Date: x\r\n")
    assert b"".join(result.data.chunks()) == b"Date: x\r\n" + data
    result.data.close()


_FIELDS = [b"Received: r", b"RECEIVED : r", b"\tfolded: no", b"X-Received: no", b"date: d",
           b"Message-ID: <i@x>", b"From: f", b"Subject: s", b"no colon"]  # fmt: skip


def _header_oracle(lines: list[bytes]) -> HeaderFields:
    received, seen = 0, set()
    for line in lines:
        if not line:
            break
        name, colon, _ = line.partition(b":")
        if colon and line[:1] not in (b" ", b"\t"):
            name = name.rstrip(b" \t").lower()
            received += name == b"received"
            seen.add(name)
    return HeaderFields(received, b"date" in seen, b"message-id" in seen, b"from" in seen)


@settings(max_examples=60, deadline=None)
@given(
    pad=st.integers(0, 40),
    fields=st.lists(st.sampled_from(_FIELDS), max_size=12),
    body=st.lists(st.sampled_from([b"", b"Received: body", b"text", b"x" * 70]), max_size=8),
    fold_at=st.sampled_from([None, 1000, 80]),
    pieces=st.sampled_from([0, 3, 50]),
)
def test_a_header_section_crossing_a_batch_is_noted_and_kept_as_in_one_piece(
    pad: int, fields: list[bytes], body: list[bytes], fold_at: int | None, pieces: int
) -> None:
    # Padding lines put the batch boundary anywhere among the fields that matter.
    padding = [b"X-Pad: " + b"p" * 61] * (BATCH // 70 - 20 + pad)
    lines = [*padding, *fields, b"", *body]
    raw = b"".join(line + b"\r\n" for line in lines)
    result = take(raw, fold_at=fold_at, pieces=pieces)
    assert result.data.read() == raw  # every line fits: nothing folded
    assert (result.longest, result.folded) == (max(map(len, lines)) + 2, 0)
    assert result.headers == _header_oracle(lines)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b" ", b"x" * 40])),
    st.sampled_from([None, 20, 1000]),
    st.integers(0, 5),
)
def test_data_said_to_have_no_dot_lines_has_none(parts: list[bytes], fold_at: int | None,
                                                 pieces: int) -> None:  # fmt: skip
    # The SMTP client skips stuffing on this word (MessageBody.dot_lines): it must hold.
    result = take(b"".join(parts), fold_at=fold_at, unstuff=True, pieces=pieces)
    data = result.data.read()
    if not result.data.dot_lines:
        assert not data.startswith(b".") and b"\r\n." not in data


def test_plain_smtp_data_is_known_to_have_no_dot_lines_and_other_data_is_not() -> None:
    assert not take(b"a\r\nb. c.\r\n", unstuff=True, pieces=3).data.dot_lines
    assert take(b"a\r\n..b\r\n", unstuff=True).data.dot_lines  # unstuffed
    assert take(b"a\n.b\r\n", unstuff=True).data.dot_lines  # a bare LF made a line
    assert take(b"a" * 30 + b".b\r\n", fold_at=20, unstuff=True).data.dot_lines  # folded
    assert take(b"a\r\nb\r\n", unstuff=False).data.dot_lines  # not SMTP: never searched
    data = take(b"a\r\n", unstuff=True).data
    data.prepend(b"X: y\r\n")
    assert not data.dot_lines
    data.prepend(b".X: y\r\n")
    assert data.dot_lines
