"""The admin listener's HTTP against hostile clients, over raw loopback sockets.

Each test speaks bytes to a real listener (`admin.http.listen`) with short limits, and
checks the status line it gets, or that the connection was closed; afterwards a plain GET
must still work, so no client leaves the server stuck.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relaymail.admin.http import Limits, Request, Response, listen
from tests.integration.daemon_process import free_port

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits(
    max_head=4096, max_headers=20, head_timeout=0.5, idle_timeout=0.5, max_connections=4
)
GET = b"GET / HTTP/1.1\r\nHost: admin\r\n\r\n"


async def answer(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("a defect in a page")
    return Response(200, f"{request.method} {request.path}\n".encode())


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = free_port()
    listening = await listen("127.0.0.1", port, answer, LIMITS)
    yield port
    listening.close()


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send `data`, then read until the server closes (it must, within the test's timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    except ConnectionResetError:
        return b""  # closed at accept: reset, nothing said
    finally:
        writer.close()


def responses(raw: bytes, heads: frozenset[int] = frozenset()) -> list[tuple[bytes, bytes]]:
    """(status line, body) of each response in `raw`; those numbered in `heads` have no body."""
    found = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status, *fields = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (f.partition(b": ") for f in fields)
                      if k.lower() == b"content-length")  # fmt: skip
        if len(found) in heads:
            length = 0
        found.append((status, raw[:length]))
        raw = raw[length:]
    return found


def status_lines(raw: bytes) -> list[bytes]:
    return [status for status, _ in responses(raw)]


async def still_serves(port: int) -> None:
    raw = await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_lines(raw) == [b"HTTP/1.1 200 OK"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, b"400 Bad Request"),
        (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400 Bad Request"),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 5000 + b"\r\n\r\n",
         b"431 Request Header Fields Too Large"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 30 + b"\r\n",
         b"431 Request Header Fields Too Large"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
         b"405 Method Not Allowed"),
        (b"DELETE /message/X HTTP/1.1\r\nHost: a\r\n\r\n", b"405 Method Not Allowed"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
         b"413 Request Entity Too Large"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
         b"413 Request Entity Too Large"),
        (b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n", b"500 Internal Server Error"),
    ],
)  # fmt: skip
async def test_a_bad_request_gets_its_status_and_a_close(server, request_bytes, status):
    raw = await exchange(server, request_bytes)
    assert status_lines(raw) == [b"HTTP/1.1 " + status]
    await still_serves(server)


def headers_of(raw: bytes) -> dict[str, str]:
    lines = raw.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}


async def test_405_names_the_methods_that_are_allowed(server):
    raw = await exchange(server, b"PUT / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert headers_of(raw)["allow"] == "GET, HEAD"


async def test_slowloris_gets_408_once_the_head_is_too_slow(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
    answer = asyncio.create_task(reader.read())  # all the server says, up to its close
    async with asyncio.timeout(10):
        while not answer.done():  # one header line every 50 ms: never a whole head
            writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.05)
    writer.close()
    assert status_lines(answer.result()) == [b"HTTP/1.1 408 Request Timeout"]
    await still_serves(server)


async def test_a_silent_connection_is_closed_without_a_response(server):
    assert await exchange(server, b"") == b""


async def test_keep_alive_answers_pipelined_requests_in_order_then_closes_when_idle(server):
    raw = await exchange(
        server, GET + b"HEAD /second HTTP/1.1\r\nHost: admin\r\n\r\n" + GET.replace(b"/", b"/3", 1)
    )
    ok = b"HTTP/1.1 200 OK"
    assert responses(raw, heads=frozenset({1})) == [(ok, b"GET /\n"), (ok, b""), (ok, b"GET /3\n")]
    head_response = raw.split(b"GET /\n", 1)[1].split(b"\r\n\r\n", 1)[0]
    assert b"\r\nContent-Length: 13\r\n" in head_response  # the GET's length, no body


async def test_http_1_0_is_answered_and_closed(server):
    raw = await exchange(server, b"GET /old HTTP/1.0\r\n\r\n")
    assert status_lines(raw) == [b"HTTP/1.1 200 OK"]
    assert raw.endswith(b"GET /old\n")


async def test_every_response_carries_the_security_headers(server):
    for request in (GET, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n", b"BREW / HTTP/1.1\r\n\r\n"):
        headers = headers_of(await exchange(server, request, half_close=True))
        csp = headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'self';")
        assert headers["x-content-type-options"] == "nosniff"
        assert (headers["x-frame-options"], headers["cache-control"]) == ("DENY", "no-store")


async def test_connections_past_the_limit_are_closed_at_once():
    port = free_port()
    listening = await listen("127.0.0.1", port, answer, Limits(max_connections=2))
    held = []
    try:
        for _ in range(2):  # answered, so accepted; kept alive, so still counted
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(GET)
            assert (await reader.readuntil(b"GET /\n")).startswith(b"HTTP/1.1 200 OK")
            held.append(writer)
        assert await exchange(port, GET) == b""
        held.pop().close()
        async with asyncio.timeout(10):  # the server sees the close, then has room again
            while status_lines(await exchange(port, GET, half_close=True)) != [b"HTTP/1.1 200 OK"]:
                await asyncio.sleep(0.05)
    finally:
        for writer in held:
            writer.close()
        listening.close()


async def test_a_client_that_half_closes_still_gets_its_answer(server):
    raw = await exchange(server, GET, half_close=True)
    assert status_lines(raw) == [b"HTTP/1.1 200 OK"]
