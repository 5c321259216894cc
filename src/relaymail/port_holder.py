"""Who holds a TCP port: the answer to "address already in use", from /proc.

Linux lists every TCP socket in /proc/net/tcp{,6} with its inode, and each
process's descriptors link to `socket:[inode]`. Reading them costs a few
milliseconds once, at a failed start; elsewhere (no /proc, no permission to
look into another user's process) the answer is simply unknown.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ListenFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# include/net/tcp_states.h: TCP_LISTEN, and TCP_CLOSE for a socket bound but not
# listening. With SO_REUSEADDR (asyncio's default for servers) connections on the
# port do not stop a bind; these two do.
_HOLDING_STATES = frozenset({0x0A, 0x07})


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """One line of /proc/net/tcp or tcp6."""

    address: IPAddress
    port: int
    state: int
    inode: int


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def parse_proc_net_tcp(table: str) -> list[TcpSocket]:
    """The sockets of /proc/net/tcp or tcp6 (the same format, wider addresses)."""
    sockets = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        hex_address, _, hex_port = fields[1].partition(":")
        # The kernel prints each 32-bit word of the address in host (little-endian) order.
        raw = bytes.fromhex(hex_address)
        packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        sockets.append(
            TcpSocket(
                ipaddress.ip_address(packed), int(hex_port, 16), int(fields[3], 16), int(fields[9])
            )
        )
    return sockets


def conflicts(sock: TcpSocket, host: str, port: int) -> bool:
    """Whether `sock` keeps a bind to host:port from succeeding: same port, and the
    same address or a wildcard on either side (a host name matches any address)."""
    if sock.port != port or sock.state not in _HOLDING_STATES or sock.inode == 0:
        return False
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        return True
    return sock.address.is_unspecified or wanted.is_unspecified or sock.address == wanted


def find_holder(host: str, port: int, proc: Path = Path("/proc")) -> Holder | None:
    """The process holding a socket that conflicts with host:port, if it can be seen."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            text = (proc / "net" / table).read_text()
        except OSError:
            continue
        inodes |= {s.inode for s in parse_proc_net_tcp(text) if conflicts(s, host, port)}
    if not inodes:
        return None
    links = {f"socket:[{inode}]" for inode in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(entry / "fd"):
                if os.readlink(fd.path) in links:
                    command = (entry / "comm").read_text().strip()
                    return Holder(int(entry.name), command)
        except OSError:  # gone meanwhile, or another user's process
            continue
    return None


def listen_failed(host: str, port: int, exc: OSError) -> ListenFailed:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    holder = find_holder(host, port) if exc.errno == errno.EADDRINUSE else None
    # asyncio wraps the errno's text in a sentence of its own; the errno says it all.
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ListenFailed(address, reason, str(holder) if holder else None)
