"""The reuseport program (inbound/steering.py) on real listening sockets on loopback."""

from __future__ import annotations

import collections
import ipaddress
import select
import socket
from collections.abc import Callable, Iterator

import pytest

from relaymail.inbound.steering import steer_by_client
from relaymail.listener_settings import IPNetwork

# A reuseport group of listening sockets: family, host, size, the networks spread.
Group = Callable[[int, str, int, tuple[IPNetwork, ...]], list[socket.socket]]


@pytest.fixture
def group() -> Iterator[Group]:
    opened: list[socket.socket] = []

    def make(
        family: int, host: str, size: int, spread: tuple[IPNetwork, ...]
    ) -> list[socket.socket]:
        port = 0
        members = []
        for _ in range(size):
            sock = socket.socket(family)
            opened.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(64)
            members.append(sock)
        steer_by_client(members[0], size, spread)
        return members

    yield make
    for sock in opened:
        sock.close()


def _taker(members: list[socket.socket], source: str) -> int:
    """Which socket of the group the kernel gave a connection from `source`."""
    family = members[0].family
    with socket.socket(family) as client:
        client.bind((source, 0))
        client.connect(members[0].getsockname()[:2])
        ready, _, _ = select.select(members, [], [], 5)
        assert len(ready) == 1
        accepted, _ = ready[0].accept()
        accepted.close()
        return members.index(ready[0])


def _spread(members: list[socket.socket], source: str, tries: int = 40) -> collections.Counter[int]:
    return collections.Counter(_taker(members, source) for _ in range(tries))


def test_an_outside_client_always_meets_the_worker_of_its_address(group: Group) -> None:
    members = group(socket.AF_INET, "127.0.0.1", 2, (ipaddress.ip_network("127.0.0.1/32"),))
    for last in (2, 3, 4, 5):
        assert _spread(members, f"127.0.0.{last}", 10) == {last % 2: 10}


def test_a_trusted_client_is_spread_over_every_worker(group: Group) -> None:
    # 40 connections all to one of 2 workers by chance: 2 in 2**40.
    members = group(socket.AF_INET, "127.0.0.1", 2, (ipaddress.ip_network("127.0.0.1/32"),))
    assert set(_spread(members, "127.0.0.1")) == {0, 1}


def test_a_trusted_prefix_is_matched_on_its_bits_only(group: Group) -> None:
    # 127.0.0.0/30 holds .1 to .3; .4 and .6 are outside, kept by address (4 mod 3, 6 mod 3).
    networks = (ipaddress.ip_network("::1/128"), ipaddress.ip_network("127.0.0.0/30"))
    members = group(socket.AF_INET, "127.0.0.1", 3, networks)
    assert set(_spread(members, "127.0.0.2", 60)) == {0, 1, 2}
    assert _spread(members, "127.0.0.4", 10) == {(0x7F000004) % 3: 10}
    assert _spread(members, "127.0.0.6", 10) == {(0x7F000006) % 3: 10}


def test_ipv6_clients_are_kept_by_their_64_unless_trusted(group: Group) -> None:
    kept = group(socket.AF_INET6, "::1", 2, ())
    assert len(_spread(kept, "::1", 20)) == 1
    trusted = group(socket.AF_INET6, "::1", 2, (ipaddress.ip_network("::1/128"),))
    assert set(_spread(trusted, "::1")) == {0, 1}


def test_many_trusted_networks_fit_the_program(group: Group) -> None:
    # 200 IPv4 networks before the IPv6 part: farther than a conditional jump reaches.
    many = tuple(ipaddress.ip_network(f"10.{n}.0.0/16") for n in range(200))
    networks = (*many, ipaddress.ip_network("::1/128"))
    trusted = group(socket.AF_INET6, "::1", 2, networks)
    assert set(_spread(trusted, "::1")) == {0, 1}
    kept = group(socket.AF_INET, "127.0.0.1", 2, networks)
    assert _spread(kept, "127.0.0.3", 10) == {1: 10}
