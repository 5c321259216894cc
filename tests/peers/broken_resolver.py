"""Name servers on loopback that fail on purpose: one drops every query, one refuses them.

A real resolver cannot be made to do either on demand (unbound answers or SERVFAILs), and
these are the two failures an operator meets most: a resolver that is down or firewalled
(silence: UDP has no connection to refuse) and one whose ACL leaves us out (REFUSED).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self, cast

import dns.message
import dns.rcode


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        if not self.refuse or self.transport is None:
            return
        response = dns.message.make_response(dns.message.from_wire(data))
        response.set_rcode(dns.rcode.REFUSED)
        self.transport.sendto(response.to_wire(), addr)


class BrokenResolver:
    """`async with BrokenResolver(refuse=True) as server:` then ask `server.host`:`port`."""

    def __init__(self, *, refuse: bool, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._refuse = refuse
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None

    @property
    def queries(self) -> int:
        return self._protocol.queries if self._protocol else 0

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        refuse = self._refuse
        self._transport, self._protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(refuse), local_addr=(self.host, 0)
        )
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._transport is not None:
            self._transport.close()
