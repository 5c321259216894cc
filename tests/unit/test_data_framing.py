"""Where a message's data ends: data_reader.read_data on a real asyncio.StreamReader.

The rule it must follow (RFC 5321 4.1.1.4), written as a search: the data ends at
the first CRLF "." CRLF of the stream with the DATA command's own CRLF in front,
so an empty message is a lone "." line. Nothing else ends it (a bare LF "." LF
is no end: SMTP smuggling), and what follows the terminator is the next
command's, left in the reader. The tests feed the reader in arbitrary pieces,
with windows (StreamReader limits) small enough to make every read overrun.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from relaymail.inbound.data_reader import ClientGone, read_data
from relaymail.inbound.protocol import STREAM_WINDOW


def by_the_rule(stream: bytes) -> tuple[bytes, bytes] | None:
    """(the data as sent, what is left for the next command); None if it never ends."""
    with_start = b"\r\n" + stream
    end = with_start.find(b"\r\n.\r\n")
    if end == -1:
        return None
    return with_start[2 : end + 2], with_start[end + 5 :]


async def read(
    stream: bytes, cuts: Sequence[int], *, window: int = STREAM_WINDOW, size_limit: int = 10**9
) -> tuple[bool | None, list[bytes], bytes]:
    """(read_data's answer or None if the client left first, the pieces, what is left)."""
    reader = asyncio.StreamReader(limit=window)

    async def client() -> None:
        start = 0
        for end in [*cuts, len(stream)]:
            reader.feed_data(stream[start:end])
            start = end
            await asyncio.sleep(0)  # the reader looks at each piece before the next comes
        reader.feed_eof()

    pieces: list[bytes] = []
    sending = asyncio.ensure_future(client())
    try:
        answer: bool | None = await read_data(reader, size_limit, pieces.append)
    except ClientGone:
        answer = None
    await sending
    return answer, pieces, bytes(reader._buffer)  # type: ignore[attr-defined]


_OCTETS = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n", b".."])
    | st.binary(max_size=40),
    max_size=40,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(stream=_OCTETS, cut_at=st.lists(st.integers(min_value=0), max_size=8),
       window=st.sampled_from([5, 6, 7, 9, 16, STREAM_WINDOW]))  # fmt: skip
def test_the_data_ends_where_the_rule_says_however_it_arrives(
    stream: bytes, cut_at: list[int], window: int
) -> None:
    cuts = sorted({cut % (len(stream) + 1) for cut in cut_at})
    answer, pieces, left = asyncio.run(read(stream, cuts, window=window))
    expected = by_the_rule(stream)
    if expected is None:
        assert answer is None
    else:
        assert (answer, b"".join(pieces), left) == (True, *expected)


def test_every_cut_around_the_terminator() -> None:
    # Some longer than the window, so that a read overruns it just before the end.
    datas = (b"", b"\r\n", b".", b"..\r\n", b"a.\r\n", b"a\r\n.\r", b"a\n.\n", b"x\r.\r\n",
             b"x" * 8, b"x" * 9 + b".", b"x" * 7 + b"\r\n.x\r\n")  # fmt: skip
    for data in datas:
        stream = data + b".\r\n" if data.endswith(b"\r\n") or not data else data + b"\r\n.\r\n"
        stream += b"NOOP\r\n"
        expected = by_the_rule(stream)
        assert expected is not None
        for cut in range(len(stream) + 1):
            for second in range(cut, len(stream) + 1):
                answer, pieces, left = asyncio.run(read(stream, [cut, second], window=6))
                assert (answer, b"".join(pieces), left) == (True, *expected), (cut, second)


def test_lines_ending_in_a_dot_do_not_make_a_piece_each() -> None:
    # Prose: every line ends a sentence. Each one read as a piece of its own made a
    # 100 KB message cost four times the CPU (and "a.\r\n" lines a hostile amount).
    body = b"This line ends a sentence.\r\n" * 8000
    answer, pieces, left = asyncio.run(read(body + b".\r\nQUIT\r\n", [1000, 90_000]))
    assert (answer, b"".join(pieces), left) == (True, body, b"QUIT\r\n")
    assert len(pieces) <= 2 + len(body) // STREAM_WINDOW + 2


def test_over_the_size_limit_the_data_is_read_to_its_end_and_refused() -> None:
    stream = b"a.\r\n" * 100 + b".\r\nRSET\r\n"
    answer, _, left = asyncio.run(read(stream, [7, 50], size_limit=40))
    assert (answer, left) == (False, b"RSET\r\n")


def test_smuggled_ends_are_data() -> None:
    stream = b"one\n.\nMAIL FROM:<x@y>\r\n\r.\r\n\n.\r\nDATA\r\n\r\n.\r\n"
    answer, pieces, left = asyncio.run(read(stream, [4, 5, 6]))
    assert (answer, b"".join(pieces), left) == (True, stream[:-3], b"")
