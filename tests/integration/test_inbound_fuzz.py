"""Random hostile sessions against a real listener: no traceback, no 451, no session left behind.

Bounded by RELAYMAIL_FUZZ_SESSIONS (default 20,000) and RELAYMAIL_FUZZ_SECONDS (default 60),
whichever comes first; RELAYMAIL_FUZZ_SEED picks another sequence of sessions. A finding
names the seed and the session index: `session(seed, index)` gives the same bytes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from relaymail.accounts import UserAccount
from relaymail.inbound import ListenerHandle, start_listener
from relaymail.listener_settings import ListenerMode, ListenerSettings
from tests.integration.inbound_harness import HOSTNAME, LOOPBACK, RELAY_DOMAIN, MemorySpool
from tests.integration.session_fuzzer import Ending, FuzzSession, session

SESSIONS = int(os.environ.get("RELAYMAIL_FUZZ_SESSIONS", "20000"))
SECONDS = float(os.environ.get("RELAYMAIL_FUZZ_SECONDS", "60"))
SEED = int(os.environ.get("RELAYMAIL_FUZZ_SEED", "8"))
CONCURRENCY = 24

_REPLY_LINE = re.compile(rb"[2-5][0-9]{2}[ -][^\r\n]*\r\n")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 120)]


@dataclass
class Findings:
    """What must never happen, as (session index or "-", what)."""

    items: list[tuple[int | str, str]] = field(default_factory=list)
    current: int | str = "-"

    def add(self, what: str, index: int | str | None = None) -> None:
        if len(self.items) < 50:
            self.items.append((self.current if index is None else index, what))


class _InternalErrors(logging.Handler):
    def __init__(self, findings: Findings) -> None:
        super().__init__(logging.DEBUG)
        self.findings = findings

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info or record.levelno >= logging.ERROR or "451 4.3.0" in message:
            self.findings.add(f"log: {record.levelname} {message[:300]}")


async def _read_all(reader: asyncio.StreamReader, findings: Findings, index: int) -> bytes:
    try:
        raw = await asyncio.wait_for(reader.read(), 15)
    except TimeoutError:
        findings.add("the server did not close after the client's EOF", index)
        return b""
    except (ConnectionError, ssl.SSLError):
        return b""
    return raw


def _check_replies(raw: bytes, findings: Findings, index: int) -> None:
    position = 0
    while position < len(raw):
        match = _REPLY_LINE.match(raw, position)
        if match is None:
            findings.add(f"malformed reply bytes {raw[position : position + 80]!r}", index)
            return
        if match[0].startswith(b"451"):
            findings.add(f"reply {match[0]!r}", index)
        position = match.end()


async def _run(fuzz: FuzzSession, port: int, tls: ssl.SSLContext, findings: Findings) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in fuzz.writes:
            writer.write(chunk)
            await writer.drain()
        if fuzz.ending is Ending.ABORT:
            return
        if fuzz.ending is Ending.TLS:
            await _tls_part(fuzz, reader, writer, tls, findings)
            return
        writer.write_eof()
        _check_replies(await _read_all(reader, findings, fuzz.index), findings, fuzz.index)
    except (ConnectionError, ssl.SSLError):
        pass  # the server may close first (421, too many errors); the log says whether it should
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def _tls_part(
    fuzz: FuzzSession,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tls: ssl.SSLContext,
    findings: Findings,
) -> None:
    while not (line := await asyncio.wait_for(reader.readline(), 15)).startswith(b"220 2.0.0"):
        if not line:
            findings.add("no 220 to STARTTLS", fuzz.index)
            return
    await writer.start_tls(tls, server_hostname="localhost")
    for chunk in fuzz.tls_writes:
        writer.write(chunk)
    await writer.drain()
    # TLS has no half-close in asyncio: the client just leaves, and the check that
    # no session is left behind at the end covers the server's side.


@pytest.fixture
async def fuzz_listeners(
    server_tls: ssl.SSLContext, users: dict[str, UserAccount]
) -> AsyncIterator[list[ListenerHandle]]:
    spool = MemorySpool()
    handles = []
    for mode in (ListenerMode.RELAY, ListenerMode.SUBMISSION):
        settings = ListenerSettings(
            host="127.0.0.1", port=0, hostname=HOSTNAME, mode=mode, relay_networks=LOOPBACK,
            relay_domains=(RELAY_DOMAIN,), idle_timeout=30, max_connections=CONCURRENCY * 4,
        )  # fmt: skip
        handles.append(await start_listener(settings, spool, users, server_tls))
    yield handles
    for handle in handles:
        await handle.close(grace=1)


async def test_random_sessions_get_no_traceback_no_451_and_leave_no_session(
    fuzz_listeners: list[ListenerHandle], client_tls: ssl.SSLContext
) -> None:
    findings = Findings()
    catcher = _InternalErrors(findings)
    root = logging.getLogger()
    root.addHandler(catcher)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: findings.add(f"loop: {context.get('message')}"))
    relaymail_level = logging.getLogger("relaymail").level
    logging.getLogger("relaymail").setLevel(logging.INFO)  # refusal lines run their code too
    ran = 0
    deadline = time.monotonic() + SECONDS
    try:
        slots = asyncio.Semaphore(CONCURRENCY)
        running: set[asyncio.Task[Any]] = set()
        for index in range(SESSIONS):
            if time.monotonic() > deadline:
                break
            await slots.acquire()
            port = fuzz_listeners[index % 7 == 0].port  # every 7th on the submission port
            task = asyncio.create_task(_run(session(SEED, index), port, client_tls, findings))
            running.add(task)
            task.add_done_callback(lambda t: (running.discard(t), slots.release()))
            ran += 1
        if running:
            await asyncio.wait(running)
        for task_error in (t for t in running if not t.cancelled() and t.exception()):
            findings.add(f"client error {task_error.exception()!r}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while any(h.active_sessions for h in fuzz_listeners):
                    await asyncio.sleep(0.05)
        if left := sum(h.active_sessions for h in fuzz_listeners):
            findings.add(f"{left} session(s) still open after every client left")
    finally:
        root.removeHandler(catcher)
        loop.set_exception_handler(None)
        logging.getLogger("relaymail").setLevel(relaymail_level)
    assert ran > 0
    assert findings.items == [], f"seed {SEED}, {ran} sessions"
