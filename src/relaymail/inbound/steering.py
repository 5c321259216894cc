"""Which worker takes a connection: a classic BPF program on the SO_REUSEPORT group.

With `[server] processes` above 1 every worker listens on the same address and
the kernel picks one socket per new connection, by default from a hash of the
whole 4-tuple, so one client's connections land on every worker and no worker
sees all of them: per-client limits (connections, rates, AUTH failures) could
not be kept. This program makes the choice the client's address modulo N (an
IPv4 address; an IPv6 /64, the unit client_limits.py counts), so each worker
sees every connection of its clients and keeps their limits whole.

Clients in the listener's relay_networks are exempt from those limits (as
Postfix exempts $mynetworks from anvil's), and they are the ones that send the
most: the applications of this host submit everything from 127.0.0.1. Keeping
them on one worker would leave the others idle, so their connections go to a
worker at random instead.

The program reads the IP version from the packet, not the socket's family: a
dual-stack IPv6 socket receives IPv4 packets. While a worker is being restarted
the group has fewer sockets than N, an index past its end makes the kernel fall
back to its hash, and a client may meet two workers.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from asyncio.trsock import TransportSocket
from collections.abc import Iterable

from ..listener_settings import IPNetwork

__all__ = ["steer_by_client"]

SO_ATTACH_REUSEPORT_CBPF = 51  # include/uapi/asm-generic/socket.h
_NET = -0x100000  # SKF_NET_OFF: loads relative to the network (IP) header
_RANDOM = -0x1000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: a pseudo-random word
# Classic BPF opcodes (include/uapi/linux/filter.h).
_LD_W_ABS = 0x20
_LD_B_ABS = 0x30
_TAX = 0x07
_AND_K = 0x54
_XOR_X = 0xAC
_MOD_K = 0x94
_JA = 0x05
_JEQ_K = 0x15
_RET_A = 0x16

# One instruction: opcode, jump-if-true, jump-if-false, constant. A jump target
# may be a label's name, resolved by _assemble to a relative offset; a label is
# a bare name in the program, marking the instruction after it.
_Insn = tuple[int, int | str, int | str, int | str]
_Code = list[_Insn | str]

_V4_SOURCE = _NET + 12
_V6_SOURCE = _NET + 8


def _matches(network: IPNetwork, source: int, on_mismatch: str) -> _Code:
    """Instructions that fall through when the packet's source is in `network`."""
    words = network.network_address.packed
    insns: _Code = []
    for index in range(0, network.prefixlen, 32):
        bits = min(32, network.prefixlen - index)
        mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
        value = int.from_bytes(words[index // 8 : index // 8 + 4], "big") & mask
        insns.append((_LD_W_ABS, 0, 0, source + index // 8))
        if bits < 32:
            insns.append((_AND_K, 0, 0, mask))
        insns.append((_JEQ_K, 0, on_mismatch, value))
    return insns


def _spread_trusted(networks: Iterable[IPNetwork], source: int, tag: str) -> _Code:
    insns: _Code = []
    for n, network in enumerate(networks):
        insns += [*_matches(network, source, f"{tag}{n}"), (_JA, 0, 0, "spread"), f"{tag}{n}"]
    return insns


def _program(processes: int, trusted: tuple[IPNetwork, ...]) -> _Code:
    v4 = [n for n in trusted if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in trusted if isinstance(n, ipaddress.IPv6Network)]
    return [
        # An IPv6 packet jumps past the IPv4 tests: a JA, as a JEQ reaches 255 at most.
        (_LD_B_ABS, 0, 0, _NET), (_AND_K, 0, 0, 0xF0), (_JEQ_K, 0, 1, 0x60), (_JA, 0, 0, "v6"),
        *_spread_trusted(v4, _V4_SOURCE, "v4-"),
        (_LD_W_ABS, 0, 0, _V4_SOURCE), (_MOD_K, 0, 0, processes), (_RET_A, 0, 0, 0),
        "v6",
        *_spread_trusted(v6, _V6_SOURCE, "v6-"),
        # The /64 of the source (header octets 8..15), its two halves folded.
        (_LD_W_ABS, 0, 0, _V6_SOURCE), (_TAX, 0, 0, 0), (_LD_W_ABS, 0, 0, _V6_SOURCE + 4),
        (_XOR_X, 0, 0, 0), (_MOD_K, 0, 0, processes), (_RET_A, 0, 0, 0),
        "spread",
        (_LD_W_ABS, 0, 0, _RANDOM), (_MOD_K, 0, 0, processes), (_RET_A, 0, 0, 0),
    ]  # fmt: skip


def _assemble(program: _Code) -> bytes:
    """The kernel's sock_filter array: labels dropped, jumps made relative."""
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def offset(target: int | str, at: int) -> int:
        return target if isinstance(target, int) else labels[target] - at - 1

    out = []
    for at, (code, jt, jf, k) in enumerate(insns):
        if code == _JA:
            k = offset(k, at)
        assert isinstance(k, int)
        out.append(struct.pack("=HBBI", code, offset(jt, at), offset(jf, at), k & 0xFFFFFFFF))
    return b"".join(out)


def steer_by_client(
    sock: socket.socket | TransportSocket, processes: int, spread: tuple[IPNetwork, ...] = ()
) -> None:
    """Attach the program to `sock`'s reuseport group; OSError where the kernel refuses it.

    Connections from `spread` (the listener's relay_networks) go to any worker.
    """
    filters = _assemble(_program(processes, spread))
    buffer = ctypes.create_string_buffer(filters)
    fprog = struct.pack("@HP", len(filters) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
