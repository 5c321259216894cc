"""Per-client limits against real connections from several loopback addresses.

127.0.0.0/8 is loopback as a whole: binding the client socket to 127.0.0.2 makes a
second client. The listener trusts no network here (relay_networks = ()), since
relay_networks clients are exempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from typing import Any

import pytest

from relaymail.inbound.client_limits import AuthPenalty
from relaymail.listener_settings import LimitSettings, ListenerMode
from tests.integration.inbound_harness import LOOPBACK, USER, Client, Listen

ONE = ipaddress.ip_address("127.0.0.1")


async def idle(clients: Any, port: int, count: int, source: str) -> list[Client]:
    opened = []
    for _ in range(count):
        client, greeting = await clients(port, source=source)
        assert greeting.code == 220
        opened.append(client)
    return opened


async def test_idle_connections_from_one_address_do_not_lock_out_another(
    listen: Listen, clients: Any
) -> None:
    limits = LimitSettings(max_connections=5)
    handle, _ = await listen(relay_networks=(), max_connections=8, client_limits=limits)
    await idle(clients, handle.port, 5, "127.0.0.1")
    _, refused = await clients(handle.port, source="127.0.0.1")
    assert (refused.code, refused.text) == (421, "4.7.0 Too many connections from your address")
    other, greeting = await clients(handle.port, source="127.0.0.2")
    assert greeting.code == 220
    assert (await other.command("EHLO other.example")).code == 250
    assert handle.active_sessions == 6


async def test_a_closed_connection_gives_its_slot_back(listen: Listen, clients: Any) -> None:
    handle, _ = await listen(relay_networks=(), client_limits=LimitSettings(max_connections=1))
    [first] = await idle(clients, handle.port, 1, "127.0.0.1")
    assert (await first.command("QUIT")).code == 221
    assert await first.closed_by_server()
    while handle.active_sessions:
        await asyncio.sleep(0.01)
    _, greeting = await clients(handle.port, source="127.0.0.1")
    assert greeting.code == 220


async def test_connections_past_the_rate_get_421(listen: Listen, clients: Any) -> None:
    handle, _ = await listen(relay_networks=(), client_limits=LimitSettings(connection_rate=3))
    for client in await idle(clients, handle.port, 3, "127.0.0.1"):
        await client.command("QUIT")
    _, refused = await clients(handle.port, source="127.0.0.1")
    assert (refused.code, refused.text) == (
        421, "4.7.0 Too many connections from your address per minute"
    )  # fmt: skip
    _, greeting = await clients(handle.port, source="127.0.0.2")
    assert greeting.code == 220


async def test_messages_past_the_rate_get_450_at_mail(listen: Listen, clients: Any) -> None:
    handle, _ = await listen(relay_networks=(), client_limits=LimitSettings(message_rate=2))
    client, _ = await clients(handle.port, source="127.0.0.1")
    await client.command("EHLO client.example")
    codes = []
    for _ in range(3):
        codes.append((await client.command("MAIL FROM:<a@client.example>")).code)
        await client.command("RSET")
    assert codes == [250, 250, 450]


async def test_relay_networks_clients_are_exempt(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    limits = LimitSettings(max_connections=1, connection_rate=1, auth_failures=1)
    handle, _ = await listen(
        mode=ListenerMode.SUBMISSION, relay_networks=LOOPBACK, client_limits=limits
    )
    await idle(clients, handle.port, 2, "127.0.0.1")
    client = await submission_login(clients, handle.port, client_tls, "127.0.0.1")
    assert (await client.login(password="guess")).code == 535
    assert (await client.login()).code == 235
    assert handle.client_limits.penalty(ONE) is None
    assert handle.active_sessions == 3


async def submission_login(
    clients: Any, port: int, client_tls: ssl.SSLContext, source: str
) -> Client:
    client, greeting = await clients(port, source=source)
    assert greeting.code == 220
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    await client.command("EHLO client.example")
    return client


async def test_failed_auths_grow_the_delay_then_block_the_address_with_421(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    limits = LimitSettings(auth_failures=4, auth_delay=0.01)
    handle, _ = await listen(
        mode=ListenerMode.SUBMISSION, relay_networks=(), client_limits=limits,
        max_auth_failures=10,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="relaymail.server")
    client = await submission_login(clients, handle.port, client_tls, "127.0.0.1")
    penalties: list[AuthPenalty | None] = []
    for attempt in range(3):
        assert (await client.login(password=f"guess{attempt}")).code == 535
        penalties.append(handle.client_limits.penalty(ONE))
    assert penalties == [
        AuthPenalty(1, 0.01, blocked=False),
        AuthPenalty(2, 0.02, blocked=False),
        AuthPenalty(3, 0.04, blocked=False),
    ]
    blocked = await client.login(password="guess3")
    assert (blocked.code, blocked.text) == (
        421, "4.7.0 Too many failed authentication attempts from your address"
    )  # fmt: skip
    assert handle.client_limits.penalty(ONE) == AuthPenalty(4, 0.0, blocked=True)
    assert await client.closed_by_server()
    # The block holds for new connections from the address, not for others.
    _, greeting = await clients(handle.port, source="127.0.0.1")
    assert greeting.code == 421
    other = await submission_login(clients, handle.port, client_tls, "127.0.0.2")
    assert (await other.login()).code == 235
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auth failed")]
    assert failures[0] == f"auth failed client=[127.0.0.1] user={USER} reason=bad-password"
    assert len(failures) == 4


async def test_a_blocked_address_gets_421_to_auth_on_a_connection_opened_before(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relaymail.server")
    limits = LimitSettings(auth_failures=2, auth_delay=0.01)
    handle, _ = await listen(mode=ListenerMode.SUBMISSION, relay_networks=(), client_limits=limits)
    early = await submission_login(clients, handle.port, client_tls, "127.0.0.1")
    late = await submission_login(clients, handle.port, client_tls, "127.0.0.1")
    assert (await late.login(password="guess")).code == 535
    assert (await late.login(password="guess")).code == 421
    # The right password from the same address is not even checked while blocked.
    assert (await early.login()).code == 421
    reasons = [r.getMessage().rpartition("reason=")[2] for r in caplog.records
               if r.getMessage().startswith("auth failed")]  # fmt: skip
    assert reasons == ["bad-password", "bad-password", "blocked"]


async def test_ipv6_clients_are_counted_per_64_over_real_sockets(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(
        host="::1", relay_networks=(), client_limits=LimitSettings(max_connections=1)
    )
    first, greeting = await clients(handle.port, host="::1")
    assert greeting.code == 220
    _, refused = await clients(handle.port, host="::1")
    assert (refused.code, refused.text) == (421, "4.7.0 Too many connections from your address")
    await first.command("QUIT")
