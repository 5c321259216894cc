"""The inbound server's test harness: in-memory spools, listeners on 127.0.0.1, a raw client, swaks.

Fixtures (``listen``, ``clients``, the TLS contexts, ``users``) are made visible to every
integration test by tests/integration/conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from relaymail.accounts import UserAccount
from relaymail.address_set import AddressSet
from relaymail.errors import QueueFull
from relaymail.inbound import ListenerHandle, start_listener
from relaymail.inbound.recipient_verification import RecipientVerifier
from relaymail.listener_settings import ListenerSettings
from relaymail.message import Envelope, Origin
from relaymail.message_data import MessageData
from relaymail.passwords import PasswordHash, hash_password
from relaymail.queue import TraceHeader

HOSTNAME = "mx.test.example"
RELAY_DOMAIN = "inbound.example"
USER, PASSWORD = "alice@submit.example", "correct horse battery staple"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
ELSEWHERE = (ipaddress.ip_network("192.0.2.0/24"),)

# --------------------------------------------------------------------------- spools


@dataclass
class MemorySpool:
    messages: list[tuple[Envelope, bytes]] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)  # one per message, in order

    async def __call__(
        self, envelope: Envelope, data: MessageData, trace: TraceHeader, *,
        arrived: float = 0.0, origin: Origin,
    ) -> str:  # fmt: skip
        queue_id = f"Q{len(self.messages) + 1:04d}"
        self.messages.append((envelope, trace(queue_id) + data.read()))
        self.origins.append(origin)
        return queue_id


class FullSpool:
    async def __call__(
        self, envelope: Envelope, data: MessageData, trace: TraceHeader, *,
        arrived: float = 0.0, origin: Origin,
    ) -> str:  # fmt: skip
        raise QueueFull("disk full")


class BrokenSpool:
    async def __call__(
        self, envelope: Envelope, data: MessageData, trace: TraceHeader, *,
        arrived: float = 0.0, origin: Origin,
    ) -> str:  # fmt: skip
        raise RuntimeError("secret internal detail /var/spool/relaymail")


class SlowSpool(MemorySpool):
    """Holds each message until released, to observe the order of reply and storage."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(
        self, envelope: Envelope, data: MessageData, trace: TraceHeader, *,
        arrived: float = 0.0, origin: Origin,
    ) -> str:  # fmt: skip
        self.started.set()
        await self.release.wait()
        return await super().__call__(envelope, data, trace, origin=origin)


# --------------------------------------------------------------------------- TLS and users


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="session")
def users() -> dict[str, UserAccount]:
    # The cheapest cost the parser accepts, to keep the suite fast. The user may send
    # as itself and as the From: of MESSAGE.
    password = PasswordHash.parse(hash_password(PASSWORD, log2_n=10))
    return {USER: UserAccount(password, AddressSet.of((USER, "@client.example")))}


# --------------------------------------------------------------------------- listeners

Listen = Callable[..., Awaitable[tuple[ListenerHandle, Any]]]


@pytest.fixture
async def listen(
    server_tls: ssl.SSLContext, users: dict[str, UserAccount]
) -> AsyncIterator[Listen]:
    handles: list[ListenerHandle] = []

    async def start(
        spool: Any = None,
        *,
        tls: bool = True,
        with_users: bool = True,
        accounts: Mapping[str, UserAccount] | None = None,
        verifier: RecipientVerifier | None = None,
        host: str = "127.0.0.1",
        **overrides: Any,
    ) -> tuple[ListenerHandle, Any]:
        overrides.setdefault("relay_networks", LOOPBACK)
        overrides.setdefault("relay_domains", (RELAY_DOMAIN,))
        settings = ListenerSettings(host=host, port=0, hostname=HOSTNAME, **overrides)
        spool = MemorySpool() if spool is None else spool
        known = (users if accounts is None else accounts) if with_users else {}
        handle = await start_listener(
            settings, spool, known, server_tls if tls else None, verifier=verifier
        )
        handles.append(handle)
        return handle, spool

    yield start
    for handle in handles:
        await handle.close(grace=1)


# --------------------------------------------------------------------------- a raw client


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        """The last line without the code, e.g. "5.7.1 Relay access denied"."""
        return self.lines[-1][4:]

    def __str__(self) -> str:
        return "\n".join(self.lines)


class Client:
    """Speaks SMTP byte for byte, so tests can send what a real client would not."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(
        cls,
        port: int,
        tls: ssl.SSLContext | None = None,
        *,
        host: str = "127.0.0.1",
        source: str | None = None,
    ) -> tuple[Client, Reply]:
        """A connection to `host`, from the loopback address `source` (127.0.0.0/8 holds many)."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname="localhost" if tls else None,
            local_addr=(source, 0) if source else None,
        )  # fmt: skip
        client = cls(reader, writer)
        return client, await client.reply()

    async def reply(self) -> Reply:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), 10)
            if not raw:
                raise ConnectionError(f"closed by server after {lines}")
            assert raw.endswith(b"\r\n"), raw
            line = raw[:-2].decode("utf-8")
            lines.append(line)
            if line[3:4] != "-":
                return Reply(int(line[:3]), lines)

    def send(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def command(self, line: str) -> Reply:
        self.send(line.encode("utf-8") + b"\r\n")
        return await self.reply()

    async def starttls(self, tls: ssl.SSLContext) -> None:
        assert (await self.command("STARTTLS")).code == 220
        await self.writer.start_tls(tls, server_hostname="localhost")

    async def hello_over_tls(self, tls: ssl.SSLContext) -> Reply:
        """EHLO, STARTTLS, EHLO again: the reply to the one inside TLS."""
        await self.command("EHLO client.example")
        await self.starttls(tls)
        return await self.command("EHLO client.example")

    async def login(self, user: str = USER, password: str = PASSWORD) -> Reply:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return await self.command(f"AUTH PLAIN {token}")

    async def send_message(
        self, sender: str, recipients: list[str], data: bytes
    ) -> tuple[list[Reply], Reply]:
        """MAIL, RCPTs, DATA and the content; (envelope replies, final reply)."""
        replies = [await self.command(f"MAIL FROM:<{sender}>")]
        replies += [await self.command(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
        data_reply = await self.command("DATA")
        replies.append(data_reply)
        if data_reply.code != 354:
            return replies, data_reply
        self.send(data + b".\r\n")
        return replies, await self.reply()

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[tuple[Client, Reply]]]]:
    opened: list[Client] = []

    async def connect(
        port: int, tls: ssl.SSLContext | None = None, **where: str
    ) -> tuple[Client, Reply]:
        client, greeting = await Client.connect(port, tls, **where)
        opened.append(client)
        return client, greeting

    yield connect
    for client in opened:
        await client.close()


MESSAGE = b"From: a@client.example\r\nTo: b@inbound.example\r\nSubject: hi\r\n\r\nHello.\r\n"


# --------------------------------------------------------------------------- swaks


@dataclass
class SwaksRun:
    returncode: int
    output: str

    @property
    def replies(self) -> list[str]:
        """Server replies as swaks prints them: "<-" in clear, "<~" over TLS, "<**" and
        "<~*" for error replies."""
        return [m[1] for m in re.finditer(r"^<(?:-|~|\*\*|~\*) +(.*)$", self.output, re.MULTILINE)]

    def saw(self, reply: str) -> bool:
        return any(line.startswith(reply) for line in self.replies)


async def swaks(port: int, *args: str) -> SwaksRun:
    process = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        "127.0.0.1",
        "--port",
        str(port),
        "--helo",
        "client.example",
        "--timeout",
        "10",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return SwaksRun(process.returncode, output.decode("utf-8", "replace"))
