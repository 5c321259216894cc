"""The receiving side: SMTP servers on loopback that accept everything and count arrivals.

Two kinds, one interface (`SinkSet`):
- Postfix's `smtp-sink` (C, event driven) for clear-text runs: one process per
  port, its `-c` counter ("sess=N quit=N mesg=N" and a carriage return after
  every "." it receives) read from a pipe and stamped on arrival here.
- The Python sink below, run as its own process, for STARTTLS runs (smtp-sink
  speaks no TLS). It listens on any number of ports, advertises STARTTLS with a
  certificate from the bench CA, and prints "count tls_count monotonic_time"
  lines; CLOCK_MONOTONIC is the same clock in every process, so its arrival
  times compare directly with the submission client's.

Either way an arrival is the sink's reading of the final "." of a transaction
(one recipient per message in every workload here), before its 250 reply.

Run as a script, this file is the Python sink:
    python bench/sink.py --port 40001 --port 40002 --cert c.pem --key k.pem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

_SMTP_SINK = "/usr/sbin/smtp-sink"


# --------------------------------------------------------------------------- the Python sink


class _SinkSession(asyncio.Protocol):
    """One SMTP session: replies to everything with success, counts each message."""

    def __init__(self, sink: _PythonSink, port: int) -> None:
        self.sink = sink
        self.port = port
        self.buffer = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.tls = False
        self.switching = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        stream = typing.cast(asyncio.Transport, transport)
        self.transport = stream
        self.sink.sessions += 1
        stream.write(b"220 sink.bench.test ESMTP bench sink\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.sessions -= 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.switching:
            self._process()

    def _process(self) -> None:
        replies: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n", self.scan_from)
                if end < 0:
                    # Keep only what could be the start of a split terminator.
                    if len(self.buffer) > 4:
                        del self.buffer[:-4]
                    self.scan_from = 0
                    break
                del self.buffer[: end + 5]
                self.scan_from = 0
                self.in_data = False
                self.sink.arrived(self.port, self.tls)
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            newline = self.buffer.find(b"\n")
            if newline < 0:
                if len(self.buffer) > 4096:
                    replies.append(b"500 5.5.0 Line too long\r\n")
                    self.buffer.clear()
                break
            line = bytes(self.buffer[: newline + 1])
            del self.buffer[: newline + 1]
            verb = line[:4].upper()
            if verb == b"EHLO":
                caps = [b"250-sink.bench.test", b"250-PIPELINING", b"250-SIZE 209715200"]
                if self.sink.tls_context is not None and not self.tls:
                    caps.append(b"250-STARTTLS")
                caps.append(b"250-8BITMIME")
                caps.append(b"250 ENHANCEDSTATUSCODES")
                replies.append(b"\r\n".join(caps) + b"\r\n")
            elif verb == b"HELO":
                replies.append(b"250 sink.bench.test\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                replies.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"DATA":
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data = True
                # The terminator is CRLF "." CRLF; the CRLF before DATA's content
                # counts, so an empty message (just ".") is found too.
                self.buffer[:0] = b"\r\n"
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                self._write(replies)
                assert self.transport is not None
                self.transport.close()
                return
            elif line[:8].upper() == b"STARTTLS" and self.sink.tls_context and not self.tls:
                if self.buffer:
                    # Commands pipelined behind STARTTLS would be injection (CVE-2011-0411).
                    replies.append(b"501 5.5.4 Pipelined STARTTLS\r\n")
                    self.buffer.clear()
                    continue
                replies.append(b"220 2.0.0 Ready to start TLS\r\n")
                self._write(replies)
                self.switching = True
                # The ClientHello must reach the TLS layer, not this buffer.
                assert self.transport is not None
                self.transport.pause_reading()
                asyncio.get_running_loop().create_task(self._start_tls())
                return
            else:
                replies.append(b"502 5.5.2 Command not recognized\r\n")
        self._write(replies)

    def _write(self, replies: list[bytes]) -> None:
        if replies and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(replies))

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None and self.sink.tls_context is not None
        try:
            transport = await loop.start_tls(
                self.transport, self, self.sink.tls_context, server_side=True
            )
        except (OSError, ssl.SSLError, ConnectionError):
            self.transport.close()
            return
        self.transport = transport
        self.tls = True
        self.switching = False
        self.sink.tls_sessions += 1
        # The buffer was empty at STARTTLS (see above), so what it holds now came over
        # TLS during the handshake's last steps (asyncio delivers it before start_tls
        # returns; uvloop rarely does): the client's EHLO, which must be answered.
        if self.buffer:
            self._process()


@dataclass
class _PythonSink:
    tls_context: ssl.SSLContext | None
    count: int = 0
    tls_count: int = 0
    sessions: int = 0
    tls_sessions: int = 0
    last_arrival: float = 0.0
    per_port: dict[int, int] = field(default_factory=dict)
    dirty: bool = False

    def arrived(self, port: int, tls: bool) -> None:
        self.count += 1
        if tls:
            self.tls_count += 1
        self.per_port[port] = self.per_port.get(port, 0) + 1
        self.last_arrival = time.monotonic()
        self.dirty = True

    def report(self) -> None:
        if self.dirty:
            self.dirty = False
            sys.stdout.write(f"{self.count} {self.tls_count} {self.last_arrival:.6f}\n")
            sys.stdout.flush()


async def _serve(ports: list[int], tls_context: ssl.SSLContext | None, limit: float) -> None:
    loop = asyncio.get_running_loop()
    sink = _PythonSink(tls_context)
    servers = [
        await loop.create_server(
            lambda port=port: _SinkSession(sink, port),  # type: ignore[misc]
            "127.0.0.1",
            port,
            backlog=1024,
            reuse_address=True,
        )
        for port in ports
    ]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    deadline = loop.time() + limit
    while not stop.is_set() and loop.time() < deadline:
        sink.report()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.01)
    sink.report()
    for server in servers:
        server.close()
    summary = {
        "count": sink.count,
        "tls_count": sink.tls_count,
        "tls_sessions": sink.tls_sessions,
        "per_port": {str(k): v for k, v in sorted(sink.per_port.items())},
    }
    sys.stdout.write("summary " + json.dumps(summary) + "\n")
    sys.stdout.flush()


def _main() -> None:
    parser = argparse.ArgumentParser(description="counting SMTP sink for the benchmark")
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--cert", type=Path, help="PEM certificate chain: offer STARTTLS")
    parser.add_argument("--key", type=Path)
    parser.add_argument("--limit", type=float, default=1800.0, help="exit after this many s")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    try:
        import uvloop

        uvloop.run(_serve(args.port, context, args.limit))
    except ImportError:
        asyncio.run(_serve(args.port, context, args.limit))


# ------------------------------------------------------------------------ the runner's side


@dataclass
class _Counter:
    process: asyncio.subprocess.Process
    count: int = 0
    tls_count: int = 0
    summary: dict[str, object] | None = None


class SinkSet:
    """The sinks of one run: `ports` to listen on, `tls` to offer STARTTLS."""

    def __init__(
        self,
        ports: list[int],
        tls_files: tuple[Path, Path] | None = None,
        data_delay: float | None = None,
        max_connections: int = 256,
    ) -> None:
        self.ports = ports
        self.tls_files = tls_files
        self.data_delay = data_delay
        self.max_connections = max_connections
        self.kind = "python-sink" if tls_files else "smtp-sink"
        self.counters: list[_Counter] = []
        self.last_arrival = 0.0
        self.first_arrival = 0.0
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    @property
    def count(self) -> int:
        return sum(c.count for c in self.counters)

    @property
    def tls_count(self) -> int:
        return sum(c.tls_count for c in self.counters)

    async def start(self) -> None:
        if self.tls_files is not None:
            if self.data_delay:
                raise ValueError("the Python sink has no DATA delay; use smtp-sink")
            cert, key = self.tls_files
            argv = [sys.executable, str(Path(__file__).resolve())]
            for port in self.ports:
                argv += ["--port", str(port)]
            argv += ["--cert", str(cert), "--key", str(key)]
            await self._spawn(argv, self._read_python_sink, ready_line=True)
        else:
            for port in self.ports:
                argv = [_SMTP_SINK, "-u", "nobody", "-c", "-m", str(self.max_connections)]
                if self.data_delay:
                    argv += ["-w", str(self.data_delay)]
                argv += [f"127.0.0.1:{port}", "1024"]
                await self._spawn(argv, self._read_smtp_sink, ready_line=False)
            await _wait_listening(self.ports, timeout=10.0)

    async def _spawn(self, argv: list[str], reader, ready_line: bool) -> None:  # type: ignore[no-untyped-def]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        counter = _Counter(process)
        self.counters.append(counter)
        if ready_line:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 20.0)
            if line.strip() != b"ready":
                raise RuntimeError(f"python sink did not start: {line!r}")
        self._readers.append(asyncio.get_running_loop().create_task(reader(counter)))

    def _arrived(self, stamp: float) -> None:
        if not self.first_arrival:
            self.first_arrival = stamp
        self.last_arrival = stamp
        self._changed.set()

    async def _read_smtp_sink(self, counter: _Counter) -> None:
        stream = counter.process.stdout
        assert stream is not None
        pending = b""
        while chunk := await stream.read(65536):
            stamp = time.monotonic()
            records = (pending + chunk).split(b"\r")
            pending = records.pop()
            for record in reversed(records):
                _, _, value = record.rpartition(b"mesg=")
                if value.isdigit():
                    if int(value) > counter.count:
                        counter.count = int(value)
                        self._arrived(stamp)
                    break

    async def _read_python_sink(self, counter: _Counter) -> None:
        stream = counter.process.stdout
        assert stream is not None
        while line := await stream.readline():
            if line.startswith(b"summary "):
                counter.summary = json.loads(line[8:])
                continue
            count, tls_count, stamp = line.split()
            counter.count, counter.tls_count = int(count), int(tls_count)
            self._arrived(float(stamp))

    async def wait_for(self, total: int, deadline: float, stall: float) -> bool:
        """True once `total` messages arrived; False at `deadline` (monotonic) or after
        `stall` seconds without a new arrival."""
        last_progress = time.monotonic()
        seen = self.count
        while self.count < total:
            now = time.monotonic()
            if now >= deadline or now - last_progress > stall:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(1.0, deadline - now))
            if self.count != seen:
                seen, last_progress = self.count, time.monotonic()
        return True

    async def stop(self) -> dict[str, object]:
        for counter in self.counters:
            if counter.process.returncode is None:
                counter.process.send_signal(signal.SIGTERM)
        for counter in self.counters:
            try:
                await asyncio.wait_for(counter.process.wait(), 10.0)
            except TimeoutError:
                counter.process.kill()
                await counter.process.wait()
        for task in self._readers:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 5.0)
        summary: dict[str, object] = {
            "kind": self.kind,
            "count": self.count,
            "tls_count": self.tls_count if self.tls_files else None,
        }
        for counter in self.counters:
            if counter.summary is not None:
                summary["per_port"] = counter.summary.get("per_port")
                summary["tls_sessions"] = counter.summary.get("tls_sessions")
        if self.kind == "smtp-sink":
            summary["per_port"] = {
                str(port): c.count for port, c in zip(self.ports, self.counters, strict=True)
            }
        return summary


async def _wait_listening(ports: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sink on port {port} did not start") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            break


def smtp_sink_available() -> str | None:
    """None when smtp-sink can run, else why not."""
    if not os.access(_SMTP_SINK, os.X_OK) and not shutil.which("smtp-sink"):
        return "smtp-sink not installed (run scripts/install-bench-peers)"
    return None


if __name__ == "__main__":
    _main()
