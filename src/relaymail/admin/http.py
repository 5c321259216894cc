"""HTTP/1.1 for the admin listener: h11 (sans-IO) over asyncio streams, bounded everywhere.

h11 parses; this module owns the I/O and the limits a hostile client meets:
- the request head is at most `max_head` octets (h11 answers 431 past it) and
  `max_headers` fields (431);
- the whole head must arrive within `head_timeout` of its first wait (a slowloris client
  that trickles bytes gets 408 and a close); an idle kept-alive connection is closed
  after `idle_timeout` without a word;
- no request body is taken (413), only GET and HEAD (405), at most `max_requests` per
  connection and `max_connections` at once (more are closed at accept);
- a response the client does not read is abandoned after `write_timeout`.
Garbage gets h11's verdict (400) and a close. No client can raise out of here or hold the
daemon's loop: every wait has a deadline and every parser error is answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import h11

log = logging.getLogger("relaymail.admin")

READ_SIZE = 16 * 1024
LINGER_TIMEOUT = 2.0  # seconds to wait for the client's close after ours
LINGER_READS = 8  # reads of READ_SIZE discarded meanwhile


@dataclass(frozen=True, slots=True)
class Limits:
    max_head: int = 16 * 1024  # octets of request line and header fields
    max_headers: int = 64
    head_timeout: float = 10.0  # seconds for a whole request head
    idle_timeout: float = 15.0  # seconds a kept-alive connection may wait for its next request
    write_timeout: float = 30.0
    max_requests: int = 100  # per connection
    max_connections: int = 32


# Every response: nothing external, nothing inline but what is listed, never framed or
# sniffed, never cached (the page shows addresses), and no referrer leaves the page.
SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none';"
     " form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # GET or HEAD: nothing else reaches a handler
    path: str  # the target before any '?', as sent (percent-escapes left as they are)
    authorization: str | None  # the Authorization header's value


@dataclass(frozen=True, slots=True)
class _Refused:
    """A request answered while it was read: 405, 413, 431."""

    response: Response
    head: bool  # it was a HEAD: the answer carries no body


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


Handler = Callable[[Request], Awaitable[Response]]


def text_response(status: int, words: str, *headers: tuple[str, str]) -> Response:
    return Response(status, (words + "\n").encode(), headers=headers)


class _Abandon(Exception):
    """The connection ends here without another response (timeout, reset, close)."""


class HttpServer:
    """The request loop of every admin connection; `handler` answers each request."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self._handler = handler
        self._limits = limits
        self._connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self._limits.max_connections:
            writer.transport.abort()
            return
        self._connections += 1
        try:
            await self._serve(reader, writer)
            await _linger(reader, writer)
        except (_Abandon, OSError):
            pass
        except asyncio.CancelledError:
            # The daemon is stopping. Ending cancelled would make Python 3.11's start_server
            # callback call task.exception(), which raises and logs a traceback: end quietly.
            pass
        except Exception as exc:  # a defect here must not reach the loop's exception handler
            log.error("admin connection failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._connections -= 1
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self._limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        for served in range(limits.max_requests):
            try:
                request = await _read_request(conn, reader, limits, idle=served > 0)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                refusal = text_response(status, _REFUSALS.get(status, "bad request"))
                await _send(conn, writer, refusal, limits)
                return
            except TimeoutError:
                if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                    return  # nothing sent since the last response: just close
                await _send(conn, writer, text_response(408, "request head too slow"), limits)
                return
            if request is None:
                return
            if isinstance(request, _Refused):
                await _send(conn, writer, request.response, limits, with_body=not request.head)
                return
            response = await self._answer(request)
            await _send(conn, writer, response, limits, with_body=request.method != "HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # h11 says this connection cannot carry another request
            conn.start_next_cycle()

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception as exc:
            log.error("admin %s %s failed: %s: %s", request.method, request.path,
                      type(exc).__name__, exc)  # fmt: skip
            return text_response(500, "internal error")


_REFUSALS = {400: "bad request", 408: "request head too slow", 431: "request head too large"}


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, limits: Limits, *, idle: bool
) -> Request | _Refused | None:
    """The next request (or the refusal it earned); None when the client closed first."""
    async with asyncio.timeout(limits.idle_timeout if idle else limits.head_timeout) as deadline:
        head = await _next_event(conn, reader, head_limit=limits.max_head)
        if idle:  # the next request has begun: from now on it has head_timeout
            deadline.reschedule(asyncio.get_running_loop().time() + limits.head_timeout)
        if isinstance(head, h11.ConnectionClosed):
            return None
        if not isinstance(head, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        if refusal := _refusal(head, limits):
            return _Refused(refusal, head.method == b"HEAD")  # its body is never read
        event: h11.Event = head
        while not isinstance(event, h11.EndOfMessage):
            event = await _next_event(conn, reader)
            if isinstance(event, h11.Data) and event.data:
                # No handler takes a body; the rest of it is not read.
                refused = text_response(413, "no request body is accepted")
                return _Refused(refused, head.method == b"HEAD")
            if isinstance(event, h11.ConnectionClosed):
                return None
    authorization = next(
        (value.decode("latin-1") for name, value in head.headers if name == b"authorization"),
        None,
    )
    path = head.target.split(b"?", 1)[0].decode("ascii", "replace")
    return Request(head.method.decode("ascii"), path, authorization)


def _refusal(request: h11.Request, limits: Limits) -> Response | None:
    if len(request.headers) > limits.max_headers:
        return text_response(431, "too many header fields")
    if request.method not in (b"GET", b"HEAD"):
        return text_response(405, "read-only: GET and HEAD only", ("Allow", "GET, HEAD"))
    return None


async def _next_event(
    conn: h11.Connection, reader: asyncio.StreamReader, *, head_limit: int | None = None
) -> h11.Event:
    """h11's next event, reading as it needs; past `head_limit` octets without one, 431.

    h11's own limit (max_incomplete_event_size) looks only at what it could not parse yet:
    a large head that arrives whole in one read would pass it.
    """
    fed = len(conn.trailing_data[0])
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Event):
            if head_limit is not None and isinstance(event, h11.Request) and fed > head_limit:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            return event
        if event is h11.PAUSED:  # h11 waits for our response first: never while reading
            raise _Abandon
        if head_limit is not None and fed > head_limit:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        try:
            data = await reader.read(READ_SIZE)
        except OSError:
            raise _Abandon from None
        fed += len(data)
        conn.receive_data(data)


async def _send(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    response: Response,
    limits: Limits,
    *,
    with_body: bool = True,
) -> None:
    """Write `response` (headers only when `with_body` is false: HEAD); write_timeout at most."""
    if conn.our_state is not h11.SEND_RESPONSE and conn.our_state is not h11.IDLE:
        return
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *SECURITY_HEADERS,
        *response.headers,
    ]
    if response.status >= 400 and response.status != 401 and response.status != 404:
        headers.append(("Connection", "close"))  # a refused client gets no second request
    try:
        phrase = HTTPStatus(response.status).phrase.encode()
        head = h11.Response(status_code=response.status, headers=headers, reason=phrase)
        chunks = [conn.send(head)]
        if _our_state(conn) is h11.SEND_BODY:
            if response.body and with_body:
                chunks.append(conn.send(h11.Data(data=response.body)))
            chunks.append(conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:
        raise _Abandon from None  # the request never got far enough for a response
    writer.write(b"".join(c for c in chunks if c))
    try:
        async with asyncio.timeout(limits.write_timeout):
            await writer.drain()
    except (TimeoutError, OSError):
        raise _Abandon from None


def _our_state(conn: h11.Connection) -> object:
    """Read afresh: mypy would keep the state narrowed from before a send()."""
    return conn.our_state


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close so that the last response arrives: a close with unread input would send a reset
    that can overtake it. Half-close, drain what the client still sends (bounded), close."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_TIMEOUT):
            for _ in range(LINGER_READS):
                if not await reader.read(READ_SIZE):
                    break
    except (TimeoutError, OSError):
        pass


async def listen(
    host: str, port: int, handler: Handler, limits: Limits | None = None
) -> asyncio.Server:
    """A listening server on host:port answering with `handler` (OSError if it cannot bind)."""
    server = HttpServer(handler, limits or Limits())
    return await asyncio.start_server(server.serve, host, port, limit=READ_SIZE)
