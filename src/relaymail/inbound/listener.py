"""A listener's life: the socket, the sessions it counts, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..listener_settings import ListenerMode, ListenerSettings
from .client_limits import ClientLimits
from .connection import InboundSMTP
from .handler import InboundHandler, Spool, Users
from .recipient_verification import RecipientVerifier
from .steering import steer_by_client

if TYPE_CHECKING:
    from ..local import AliasTable

__all__ = ["ListenerHandle", "server_tls_context", "start_listener"]

log = logging.getLogger("relaymail.server")


def server_tls_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    """The server-side context for a listener's certificate, or None if it has none."""
    if settings.tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


@dataclass(eq=False)
class ListenerState:
    """What the sessions of one listener share."""

    settings: ListenerSettings
    limits: ClientLimits
    spool_directory: Path | None = None
    """Where a message too large for memory waits while it arrives (MessageData)."""
    # The newest good certificate: each handshake switches to it (pick_certificate),
    # so a reload reaches new handshakes, also on sockets an smtps server made earlier.
    tls_context: ssl.SSLContext | None = None
    sessions: set[InboundSMTP] = field(default_factory=set)
    spooling: set[asyncio.Task[str]] = field(default_factory=set)
    closing: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def use_certificate(self, context: ssl.SSLContext) -> None:
        # The SNI callback runs at every ClientHello, with or without a server name.
        context.sni_callback = self.pick_certificate
        self.tls_context = context

    def pick_certificate(self, tls: ssl.SSLObject, _name: str | None, _old: ssl.SSLContext) -> None:
        if self.tls_context is not None:
            tls.context = self.tls_context

    def session_ended(self, session: InboundSMTP) -> None:
        self.sessions.discard(session)
        if self.closing and not self.sessions:
            self.drained.set()


# --------------------------------------------------------------------------- start / stop


class ListenerHandle:
    """A running listener: its bound addresses and a way to stop it."""

    def __init__(self, server: asyncio.Server, listener: ListenerState, processes: int = 1) -> None:
        self._server = server
        self._processes = processes  # workers listening on the same address (steering.py)
        self._listener = listener

    @property
    def settings(self) -> ListenerSettings:
        return self._listener.settings

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The (host, port) pairs actually bound (port 0 in the settings picks one)."""
        return tuple(
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for sock in self._server.sockets
        )

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def client_limits(self) -> ClientLimits:
        """The per-client standing (connections, rates, AUTH failures) of this listener."""
        return self._listener.limits

    @property
    def active_sessions(self) -> int:
        return len(self._listener.sessions)

    def reload_certificate(self) -> bool:
        """Re-read the certificate and key for new handshakes; sessions keep the one they have.

        A file that cannot be used leaves the one in use, with one log line: a
        half-written renewal must not leave a listener that fails every handshake.
        """
        settings = self.settings
        if settings.tls_cert_file is None:
            return False
        try:
            context = server_tls_context(settings)
        except (OSError, ssl.SSLError) as exc:
            log.error("listener %s: cannot use %s (%s); keeping the certificate in use",
                      _where(self), settings.tls_cert_file, exc)  # fmt: skip
            return False
        assert context is not None
        self._listener.use_certificate(context)
        log.info("listener %s: certificate %s loaded", _where(self), settings.tls_cert_file)
        return True

    async def start_serving(self) -> None:
        """Accept connections on a listener started with ``start_serving=False``."""
        await self._server.start_serving()
        self.steer()

    def steer(self) -> None:
        """With several workers, each client to one of them, relay_networks to any.
        Only once listening: a program attached before listen() leaves the socket
        out of the workers' group."""
        if self._processes == 1:
            return
        for sock in self._server.sockets:
            try:
                steer_by_client(sock, self._processes, self.settings.relay_networks)
            except OSError as exc:  # then the kernel's hash spreads one client's connections
                log.warning("listener %s: cannot keep each client on one worker: %s",
                            self.addresses, exc)  # fmt: skip

    async def close(self, grace: float = 30.0) -> None:
        """Stop accepting; let transactions in progress finish for up to ``grace`` seconds.

        Sessions waiting for a command outside a transaction get "421 4.3.2"
        at once; the others get it after their current message (or when they
        start a new one). Whatever is left after ``grace`` is cut off; that
        loses no mail, because nothing was acknowledged before it was spooled.
        Returns once messages being spooled are in the queue.
        """
        listener = self._listener
        listener.closing = True
        self._server.close()
        for session in list(listener.sessions):
            session.shut_down_if_idle()
        if listener.sessions:
            try:
                await asyncio.wait_for(listener.drained.wait(), grace)
            except TimeoutError:
                for session in list(listener.sessions):
                    session.say_goodbye("421 4.3.2 Service shutting down")
                await asyncio.sleep(0.1)
                for session in list(listener.sessions):
                    session.abort()
        await self._server.wait_closed()
        if listener.spooling:
            await asyncio.wait(set(listener.spooling))


def _where(handle: ListenerHandle) -> str:
    host, port = handle.settings.host, handle.settings.port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_listener(
    settings: ListenerSettings,
    spool: Spool,
    users: Users,
    tls_context: ssl.SSLContext | None,
    local: AliasTable | None = None,
    *,
    verifier: RecipientVerifier | None = None,
    start_serving: bool = True,
    spool_directory: Path | None = None,
    processes: int = 1,
) -> ListenerHandle:
    """Listen on ``settings.host``/``settings.port`` on the running event loop.

    With ``local``, RCPT takes bare names and its aliases as ours (qualified,
    the mail queued for what they stand for); without, only full addresses.
    With ``verifier``, RCPT for a relay domain from a client that is neither
    authenticated nor in relay_networks is answered by its verdict (550/450).
    With ``start_serving=False`` the socket is bound and listening (clients
    wait in the kernel's backlog) but nothing is accepted until
    ListenerHandle.start_serving: the daemon binds as root, drops privileges
    and opens the queue in between. ``spool_directory`` (the queue's) holds
    the temporary files of messages too large for memory while they arrive;
    None is the system's temporary directory. ``processes`` above 1: that many
    worker processes bind the same address (SO_REUSEPORT) and each client's
    connections go to one of them, those of relay_networks to any (steering.py).
    """
    if settings.mode is not ListenerMode.RELAY and tls_context is None:
        raise ConfigError("tls_cert_file", f"a {settings.mode} listener needs a certificate")
    if settings.auth_required and not users:
        raise ConfigError("users", "authentication is required but no users are configured")
    loop = asyncio.get_running_loop()
    listener = ListenerState(
        settings, ClientLimits(settings.client_limits), spool_directory=spool_directory
    )
    if tls_context is not None:
        listener.use_certificate(tls_context)
    handler = InboundHandler(listener, spool, users, local, verifier)

    def new_session() -> InboundSMTP:
        return InboundSMTP(handler, listener, listener.tls_context, loop=loop)

    server = await loop.create_server(
        new_session,
        host=settings.host,
        port=settings.port,
        ssl=tls_context if settings.mode is ListenerMode.SMTPS else None,
        reuse_address=True,
        reuse_port=processes > 1 or None,
        start_serving=start_serving,
    )
    handle = ListenerHandle(server, listener, processes)
    if start_serving:
        handle.steer()
    bound = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in handle.addresses)
    log.info("listening on %s (%s)", bound, settings.mode)
    if settings.postmaster is None:
        log.warning(
            "no [local] postmaster configured: mail to <postmaster> is queued for %s",
            settings.postmaster_address,
        )
    return handle
