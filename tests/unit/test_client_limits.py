"""The per-client limits as a pure state machine on a virtual clock."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from relaymail.errors import ConfigError
from relaymail.inbound.client_limits import (
    MAX_AUTH_DELAY,
    Admission,
    AuthPenalty,
    ClientLimits,
    client_key,
)
from relaymail.listener_settings import LimitSettings

ip = ipaddress.ip_address


def test_ipv6_clients_are_counted_per_64_and_ipv4_mapped_as_ipv4() -> None:
    assert client_key(ip("2001:db8:1:2::5")) == client_key(ip("2001:db8:1:2:ffff::1"))
    assert client_key(ip("2001:db8:1:2::5")) != client_key(ip("2001:db8:1:3::5"))
    assert client_key(ip("::ffff:192.0.2.7")) == ip("192.0.2.7")
    limits = ClientLimits(LimitSettings(max_connections=2))
    results = [limits.connect(ip(f"2001:db8::{n:x}"), 0.0) for n in range(1, 4)]
    assert results == [Admission.ADMITTED, Admission.ADMITTED, Admission.TOO_MANY_CONNECTIONS]


def test_the_connection_rate_refills_evenly_over_the_minute() -> None:
    limits = ClientLimits(LimitSettings(connection_rate=6, max_connections=100))
    client = ip("192.0.2.1")
    assert [limits.connect(client, 0.0) for _ in range(7)][-2:] == [
        Admission.ADMITTED, Admission.CONNECTION_RATE,
    ]  # fmt: skip
    assert limits.connect(client, 5.0) is Admission.CONNECTION_RATE  # half a token back
    assert limits.connect(client, 10.0) is Admission.ADMITTED


def test_auth_delays_double_up_to_the_cap_and_the_block_expires() -> None:
    settings = LimitSettings(auth_failures=10, auth_delay=1.0, auth_block_time=600.0)
    limits = ClientLimits(settings)
    client = ip("192.0.2.1")
    delays = [limits.auth_failed(client, float(n)).delay for n in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_AUTH_DELAY, 30.0, 30.0, 30.0]
    assert limits.auth_failed(client, 9.0) == AuthPenalty(10, 0.0, blocked=True)
    assert limits.connect(client, 10.0) is Admission.AUTH_BLOCKED
    assert limits.auth_blocked(client, 608.0)
    assert limits.connect(client, 610.0) is Admission.ADMITTED
    # Failures older than the block time are forgotten: counting starts again.
    assert limits.auth_failed(client, 2000.0) == AuthPenalty(1, 1.0, blocked=False)


def test_memory_stays_bounded_under_an_address_walking_flood() -> None:
    limits = ClientLimits(LimitSettings(), max_clients=50)
    for n in range(5000):
        client = ip(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        limits.auth_failed(client, float(n))
        assert len(limits) <= 50
    # Clients with open connections are never the ones dropped.
    held = ip("192.0.2.1")
    assert limits.connect(held, 6000.0) is Admission.ADMITTED
    for n in range(200):
        limits.connect(ip(f"10.9.0.{n}"), 6000.0 + n)
        limits.disconnect(ip(f"10.9.0.{n}"), 6000.0 + n)
    assert limits.connect(held, 7000.0) is Admission.ADMITTED
    limits_of_held = [limits.connect(held, 7000.0) for _ in range(20)]
    assert limits_of_held[-1] is Admission.TOO_MANY_CONNECTIONS


def test_idle_clients_with_nothing_to_remember_are_forgotten() -> None:
    limits = ClientLimits(LimitSettings(connection_rate=60))
    limits.connect(ip("192.0.2.1"), 0.0)
    limits.disconnect(ip("192.0.2.1"), 0.0)
    assert len(limits) == 1  # its rate bucket is not full again yet
    limits.connect(ip("192.0.2.2"), 120.0)
    assert len(limits) == 1


@pytest.mark.parametrize(
    "bad",
    [{"max_connections": 0}, {"auth_failures": -1}, {"auth_delay": float("nan")},
     {"auth_block_time": 0.0}],
)  # fmt: skip
def test_limit_settings_refuse_values_that_would_disable_or_break_them(bad: Any) -> None:
    with pytest.raises(ConfigError):
        LimitSettings(**bad)
