"""A real DNS resolver on loopback: unbound, answering from records a test declares.

Theory of operation. The declared records become one zone file for the root, which unbound
loads as an `auth-zone` for its own upstream use. So the resolver is an ordinary recursive
resolver whose "Internet" is that one zone: answers look like real resolver answers (RA set,
CNAME chains followed across names, NXDOMAIN and NODATA with the SOA), and nothing can ever
be resolved from outside, because every name not declared is NXDOMAIN in our root.

SERVFAIL is a lame delegation, as in the wild: the name is delegated to a server at
127.0.0.1, and `do-not-query-localhost: yes` forbids unbound to ask it, so it has no server
left and answers SERVFAIL at once (about 1 ms). The same setting is what guarantees that a
delegation can never send a query anywhere, not even to another process on this machine.

Start-up costs about 20 ms; each test gets its own server, so no answer is cached across
tests.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.query

from tests.peers.binaries import peer_binary
from tests.peers.processes import terminate, wait_accepting

DEFAULT_TTL = 300


@dataclass(frozen=True)
class MX:
    name: str
    preference: int
    exchange: str  # "." for the null MX of RFC 7505 (with preference 0)
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class A:
    name: str
    address: str
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class AAAA:
    name: str
    address: str
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class CNAME:
    name: str
    target: str
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class TXT:
    name: str
    text: str  # one logical string; split into 255-byte character-strings on the wire
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class TLSA:
    """A TLSA record (RFC 6698). Served without DNSSEC, so answers carry no AD bit yet."""

    name: str  # e.g. "_25._tcp.mx.example.test"
    usage: int
    selector: int
    matching_type: int
    data: bytes
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class NXDomain:
    """A name (and everything below it) that must not exist."""

    name: str


@dataclass(frozen=True)
class ServFail:
    """A name (and everything below it) whose resolution fails with SERVFAIL."""

    name: str


Record = MX | A | AAAA | CNAME | TXT | TLSA
DNSEntry = Record | NXDomain | ServFail


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name)


def _rdata(record: Record) -> str:
    match record:
        case MX(preference=preference, exchange=exchange):
            return f"MX {preference} {_absolute(exchange)}"
        case A(address=address):
            return f"A {address}"
        case AAAA(address=address):
            return f"AAAA {address}"
        case CNAME(target=target):
            return f"CNAME {_absolute(target)}"
        case TXT(text=text):
            encoded = text.encode()
            chunks = [encoded[i : i + 255] for i in range(0, len(encoded), 255)] or [b""]
            return "TXT " + " ".join(_quoted(chunk) for chunk in chunks)
        case TLSA(usage=usage, selector=selector, matching_type=matching, data=data):
            return f"TLSA {usage} {selector} {matching} {data.hex()}"


def _quoted(chunk: bytes) -> str:
    # Zone-file escapes (RFC 1035 5.1): \" and \\, \DDD for anything not printable ASCII.
    escaped = "".join(
        "\\" + chr(byte)
        if byte in b'"\\'
        else chr(byte)
        if 0x20 <= byte < 0x7F
        else f"\\{byte:03d}"
        for byte in chunk
    )
    return f'"{escaped}"'


def root_zone(entries: Iterable[DNSEntry]) -> str:
    """The zone file text for `entries`; ValueError for a set no real zone could hold."""
    entries = list(entries)
    records = [entry for entry in entries if not isinstance(entry, NXDomain | ServFail)]
    owners = {_absolute(record.name) for record in records}
    for entry in entries:
        if isinstance(entry, NXDomain | ServFail):
            clashes = [owner for owner in owners if owner.is_subdomain(_absolute(entry.name))]
            if clashes:
                raise ValueError(f"{entry} cannot hold records, but {clashes[0]} has some")
    for record in records:
        if isinstance(record, CNAME):
            name = _absolute(record.name)
            others = [r for r in records if _absolute(r.name) == name and r is not record]
            if others:
                raise ValueError(f"{record.name} has a CNAME and other data (RFC 1034 3.6.2)")
    lines = [
        "$TTL 300",
        ". IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300",
        ". IN NS ns.invalid.",
    ]
    lines += [f"{_absolute(r.name)} {r.ttl} IN {_rdata(r)}" for r in records]
    for entry in entries:
        if isinstance(entry, ServFail):
            name = _absolute(entry.name)
            server = dns.name.Name(("ns", *name.labels))
            lines += [f"{name} IN NS {server}", f"{server} IN A 127.0.0.1"]
    return "\n".join(lines) + "\n"


def _config(host: str, port: int, workdir: Path) -> str:
    return f"""\
server:
  interface: {host}@{port}
  port: {port}
  do-ip4: yes
  do-ip6: {"yes" if ":" in host else "no"}
  # Two servers must never share a port silently (unbound's default is SO_REUSEPORT).
  so-reuseport: no
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  msg-cache-size: 1m
  rrset-cache-size: 1m
  access-control: 127.0.0.0/8 allow
  access-control: ::1/128 allow
  # No DNSSEC validation: the zone is unsigned and there is no trust anchor to fetch.
  module-config: "iterator"
  # The SERVFAIL mechanism. Our root delegates to nothing else, so no query leaves unbound.
  do-not-query-localhost: yes
  # RFC 6761 names are answered locally by default; the tests declare names under them.
  local-zone: "test." nodefault
  local-zone: "invalid." nodefault
auth-zone:
  name: "."
  zonefile: "{workdir / "root.zone"}"
  for-downstream: no
  for-upstream: yes
  fallback-enabled: no
remote-control:
  control-enable: no
"""


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> None:
    # Runs in the child before exec: if pytest dies without teardown (a hard timeout, a
    # SIGKILL), unbound must not outlive it. The signal comes when the thread that started
    # unbound ends, so start servers from the thread that runs the test.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP right now (unbound binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


class DNSServer:
    """unbound on loopback answering `entries`; use `with` or start()/stop()."""

    def __init__(
        self,
        entries: Iterable[DNSEntry],
        *,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
        port: int = 0,
    ) -> None:
        """`port` 0: a free one; 53 in a network namespace of its own (tests.peers.opendkim)."""
        if host not in ("127.0.0.1", "::1"):
            raise ValueError(f"test peers listen on loopback only, not {host!r}")
        self.entries = tuple(entries)
        self.host = host
        self.port = 0
        self._fixed_port = port
        self._zone = root_zone(self.entries)
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start unbound and return once it answers a query."""
        unbound = peer_binary("unbound")
        if self._workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="relaymail-unbound-")
            self._workdir = Path(self._tempdir.name)
        self._workdir.mkdir(parents=True, exist_ok=True)
        (self._workdir / "root.zone").write_text(self._zone)
        deadline = time.monotonic() + timeout
        # Another process may take the port between our probe and unbound's bind: retry.
        while True:
            self.port = self._fixed_port or _free_port(self.host)
            config = self._workdir / "unbound.conf"
            config.write_text(_config(self.host, self.port, self._workdir))
            log = self._workdir / "unbound.log"
            with log.open("wb") as output:
                self._process = subprocess.Popen(
                    [unbound, "-d", "-p", "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            if self._wait_ready(deadline):
                return
            self._process.wait()
            if time.monotonic() > deadline or self._fixed_port or "bind" not in log.read_text():
                raise RuntimeError(f"unbound did not start:\n{log.read_text()}")

    def _wait_ready(self, deadline: float) -> bool:
        """True once unbound answers; False if it exited first."""
        assert self._process is not None
        # A TCP connect is refused at once until unbound has bound (UDP and TCP together),
        # where a UDP probe sent too early would only time out.
        while True:
            if not wait_accepting(
                self._process, self.host, self.port, deadline, stop=self.stop, name="unbound"
            ):
                return False
            try:
                probe = dns.message.make_query(".", "SOA")
                dns.query.udp(probe, self.host, port=self.port, timeout=1)
            except dns.exception.Timeout:
                continue
            return True

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process)
        self._process = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def resolver(self, lifetime: float = 2.0) -> dns.asyncresolver.Resolver:
        """An async dnspython resolver that asks this server only."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(self.host, self.port)]
        resolver.lifetime = lifetime
        return resolver

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class DNSServerFactory(Protocol):
    """The `dns_server` fixture: start unbound for `entries`; stopped when the test ends."""

    def __call__(self, entries: Iterable[DNSEntry], *, host: str = ...) -> DNSServer: ...
