"""Sessions kept between messages for the next one to the same host.

Sessions that end a transaction cleanly wait here for the next message to the
same host (Postfix's connection cache): with pipelining, that is what makes
delivery cheap. A session is kept per address, port, name and TLS level, so a
message never rides a session opened under a weaker policy, nor one that reached
less than its domain's downgrade memory holds now (the engine asks before each
reuse). A session that has carried its destination's
`max_messages_per_connection` is closed instead of kept (the engine decides).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

from ..routing import NextHop
from ..smtp.client import Capabilities
from ..smtp.session import SmtpSession
from ..tls.context import TlsFacts
from ..tls.policy import Level
from .results import TlsStep

# A REQUIRETLS session (verified, the keyword offered) is kept apart from the others.
_Key = tuple[str, int, str, Level, bool]


@dataclass(slots=True)
class IdleSession:
    session: SmtpSession
    caps: Capabilities
    tls: TlsFacts
    decision: TlsStep | None  # what the TLS policy decided when the session was opened
    messages: int = 0  # transactions done on it: shaping's max_messages_per_connection
    expires: asyncio.TimerHandle | None = None


class SessionPool:
    """Idle sessions by destination; each one QUIT after `idle_time` seconds unused."""

    def __init__(self, idle_time: float) -> None:
        self._idle_time = idle_time
        self._idle: dict[_Key, list[IdleSession]] = defaultdict(list)
        self._quitting: set[asyncio.Task[None]] = set()  # forgotten sessions saying QUIT

    def take(
        self, hop: NextHop, ip: str, level: Level, requiretls: bool = False
    ) -> IdleSession | None:
        """A kept session still usable, or None; unusable ones found on the way are closed."""
        key = (ip, hop.port, hop.name, level, requiretls)
        entries = self._idle.get(key)
        try:
            while entries:
                idle = entries.pop()
                if idle.expires is not None:
                    idle.expires.cancel()
                if idle.session.is_usable:
                    return idle
                idle.session.abort()
            return None
        finally:
            if not entries:
                self._idle.pop(key, None)  # the pool holds keys with sessions only

    def keep(
        self, hop: NextHop, ip: str, level: Level, idle: IdleSession, requiretls: bool = False
    ) -> None:
        key = (ip, hop.port, hop.name, level, requiretls)
        loop = asyncio.get_running_loop()
        idle.expires = loop.call_later(self._idle_time, self._expire, key, idle)
        self._idle[key].append(idle)

    def _expire(self, key: _Key, idle: IdleSession) -> None:
        entries = self._idle.get(key, [])
        if idle in entries:
            entries.remove(idle)
            if not entries:
                del self._idle[key]
            asyncio.get_running_loop().create_task(idle.session.quit())

    def _drop_idle(self) -> list[IdleSession]:
        """Take every idle session out of the pool (its timer cancelled) for the caller to QUIT."""
        idle = [entry for entries in self._idle.values() for entry in entries]
        self._idle.clear()
        for entry in idle:
            if entry.expires is not None:
                entry.expires.cancel()
        return idle

    def forget_idle(self) -> None:
        """QUIT every idle session in the background: the next delivery connects anew."""
        for entry in self._drop_idle():
            quitting = asyncio.get_running_loop().create_task(entry.session.quit())
            self._quitting.add(quitting)
            quitting.add_done_callback(self._quitting.discard)

    async def close(self) -> None:
        """QUIT every idle session, and wait for those forgotten before."""
        await asyncio.gather(*(entry.session.quit() for entry in self._drop_idle()))
        await asyncio.gather(*self._quitting)
