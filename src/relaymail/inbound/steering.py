"""One client, one worker: a classic BPF program that picks the SO_REUSEPORT socket by address.

With `[server] processes` above 1 every worker listens on the same address and
the kernel picks one socket per new connection, by default from a hash of the
whole 4-tuple, so one client's connections land on every worker and no worker
sees all of them: per-client limits (connections, rates, AUTH failures) could
not be kept. This program makes the choice the client's address modulo N (an
IPv4 address; an IPv6 /64, the unit client_limits.py counts), so each worker
sees every connection of its clients and keeps their limits whole. While a
worker is being restarted the group has fewer sockets than N, an index past its
end makes the kernel fall back to its hash, and a client may meet two workers.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from asyncio.trsock import TransportSocket

__all__ = ["steer_by_client"]

SO_ATTACH_REUSEPORT_CBPF = 51  # include/uapi/asm-generic/socket.h
_SKF_NET_OFF = -0x100000  # loads relative to the network (IP) header
# Classic BPF opcodes (include/uapi/linux/filter.h).
_LD_W_ABS = 0x20
_TAX = 0x07
_XOR_X = 0xAC
_MOD_K = 0x94
_RET_A = 0x16


def _program(family: int, processes: int) -> list[tuple[int, int]]:
    if family == socket.AF_INET:
        return [(_LD_W_ABS, _SKF_NET_OFF + 12), (_MOD_K, processes), (_RET_A, 0)]  # source
    # IPv6: the /64 of the source (header octets 8..15), its two halves folded.
    return [
        (_LD_W_ABS, _SKF_NET_OFF + 8), (_TAX, 0), (_LD_W_ABS, _SKF_NET_OFF + 12),
        (_XOR_X, 0), (_MOD_K, processes), (_RET_A, 0),
    ]  # fmt: skip


def steer_by_client(sock: socket.socket | TransportSocket, processes: int) -> None:
    """Attach the program to `sock`'s reuseport group; OSError where the kernel refuses it."""
    program = _program(sock.family, processes)
    filters = b"".join(struct.pack("=HBBi", code, 0, 0, k) for code, k in program)
    buffer = ctypes.create_string_buffer(filters)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
