"""A small HTTPS server on loopback that serves what a test tells it to, for MTA-STS fetches.

Theory of operation. A test maps paths to `Response` values (status, media type, body, a
redirect, a delay before answering, a body with no Content-Length that only the end of the
connection delimits) and may swap them at any time with `serve()`. Any other path gets a
404. The server speaks just enough HTTP/1.1 for one request per connection and closes
after each answer, so every fetch is a new TLS handshake the server can observe.

TLS is real: the certificate comes from tests/peers/certs.py (`server_context(names)`), or
from any context the test passes, say one for the wrong name or from an unknown CA. The
server records every request (`requests`: method, path, Host header, SNI name, headers and
any body) and every
SNI name offered in a ClientHello (`sni_names`), including handshakes the client then
abandoned because it rejected the certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tests.peers.certs import DEFAULT_CERT_NAMES, server_context

_REASONS = {
    200: "OK", 301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect",
    308: "Permanent Redirect", 404: "Not Found", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes | str = b""
    content_type: str | None = "text/plain"  # None: no Content-Type header
    location: str | None = None  # a Location header, for redirects
    delay: float = 0.0  # seconds to wait before answering
    # False: no Content-Length; the body ends when the server closes the connection,
    # so only a client that counts bytes as they come can stop an oversized one.
    content_length: bool = True
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def policy(cls, text: str, **kwargs: object) -> Response:
        return cls(body=text, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def redirect(cls, location: str, status: int = 301) -> Response:
        return cls(status=status, location=location, content_type="text/html", body=b"moved")


NOT_FOUND = Response(404, b"not found", "text/plain")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    host: str | None  # the Host header
    sni: str | None  # the server name from the TLS ClientHello
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""  # as sent, for a request with Content-Length (a POST)


class HTTPSServer:
    """HTTPS on 127.0.0.1 (or ::1) on an ephemeral port; `async with` or start()/stop()."""

    def __init__(
        self,
        routes: Mapping[str, Response] | None = None,
        *,
        context: ssl.SSLContext | None = None,
        names: tuple[str, ...] = DEFAULT_CERT_NAMES,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if host not in ("127.0.0.1", "::1"):
            raise ValueError(f"test peers listen on loopback only, not {host!r}")
        self.routes: dict[str, Response] = dict(routes or {})
        self.host = host
        self.port = port
        self.requests: list[Request] = []
        self.sni_names: list[str | None] = []
        self._context = context or server_context(names)
        self._context.sni_callback = self._on_client_hello
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()

    def serve(self, path: str, response: Response) -> None:
        self.routes[path] = response

    @property
    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, ssl=self._context, ssl_handshake_timeout=5
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Handlers are ended, not cancelled: asyncio's stream callback reports a cancelled
        # handler task as an error. Closing the transport ends reads and writes; the event
        # ends delays.
        self._closing.set()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
    ) -> None:
        self.sni_names.append(name)
        ssl_object.relaymail_sni = name  # type: ignore[union-attr]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away, which is often the point of the test
        except ssl.SSLError:
            pass
        finally:
            writer.close()
            # A client that vanished mid-TLS never answers close_notify: do not wait for it.
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            self._handlers.discard(task)
            self._writers.discard(writer)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        length = headers.get("content-length", "0")
        body_in = await reader.readexactly(int(length)) if length.isdigit() else b""
        ssl_object = writer.get_extra_info("ssl_object")
        sni = getattr(ssl_object, "relaymail_sni", None)
        self.requests.append(Request(method, path, headers.get("host"), sni, headers, body_in))
        response = self.routes.get(path, NOT_FOUND)
        if response.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), response.delay)
            if self._closing.is_set():
                return
        body = response.body.encode() if isinstance(response.body, str) else response.body
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}"]
        if response.content_type is not None:
            lines.append(f"Content-Type: {response.content_type}")
        if response.location is not None:
            lines.append(f"Location: {response.location}")
        if response.content_length:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{name}: {value}" for name, value in response.headers]
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        for start in range(0, len(body), 16384):
            writer.write(body[start : start + 16384])
            await writer.drain()
        await writer.drain()
