"""Downgrade memory: a domain whose MX did TLS is promised TLS until it is forgotten or expires."""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaymail.tls.memory import FILENAME, TlsMemory

DAY = 86400.0
SEEN = float(calendar.timegm((2026, 3, 14, 15, 9, 26)))  # 2026-03-14 15:09:26 UTC
PROMISE = "its MX did TLS on 2026-03-14 15:09Z"


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[TlsMemory]:
    opened = TlsMemory(tmp_path, remember_for=30 * DAY)
    yield opened
    opened.close()


def test_a_domain_never_seen_with_tls_is_promised_nothing(memory: TlsMemory) -> None:
    assert memory.promised("example.com", now=SEEN) is None


def test_a_domain_seen_with_tls_is_promised_it_with_the_date(memory: TlsMemory) -> None:
    memory.saw_tls("example.com", now=SEEN)

    assert memory.promised("example.com", now=SEEN + DAY) == PROMISE
    assert memory.promised("example.net", now=SEEN + DAY) is None


def test_the_promise_ends_remember_for_after_tls_was_last_seen(memory: TlsMemory) -> None:
    memory.saw_tls("example.com", now=SEEN)

    assert memory.promised("example.com", now=SEEN + 30 * DAY) == PROMISE
    assert memory.promised("example.com", now=SEEN + 30 * DAY + 1) is None


def test_the_last_seen_time_is_refreshed_at_most_hourly(memory: TlsMemory) -> None:
    memory.saw_tls("example.com", now=SEEN)
    memory.saw_tls("example.com", now=SEEN + 3599)  # within the hour: not written
    assert memory.promised("example.com", now=SEEN + 30 * DAY + 100) is None

    memory.saw_tls("example.com", now=SEEN + 3600)
    assert memory.promised("example.com", now=SEEN + 30 * DAY + 100) == (
        "its MX did TLS on 2026-03-14 16:09Z"
    )


def test_forget_ends_the_promise_once(memory: TlsMemory) -> None:
    memory.saw_tls("example.com", now=SEEN)

    assert memory.forget("example.com")
    assert memory.promised("example.com", now=SEEN) is None
    assert not memory.forget("example.com")


def test_a_forgotten_domain_is_remembered_again_at_once(memory: TlsMemory) -> None:
    memory.saw_tls("example.com", now=SEEN)
    memory.forget("example.com")

    memory.saw_tls("example.com", now=SEEN + 60)  # no hourly wait after a forget
    assert memory.promised("example.com", now=SEEN + 60) == "its MX did TLS on 2026-03-14 15:10Z"


def test_the_memory_outlives_the_process(tmp_path: Path) -> None:
    first = TlsMemory(tmp_path / "queue", remember_for=30 * DAY)
    first.saw_tls("example.com", now=SEEN)
    first.close()

    assert (tmp_path / "queue" / FILENAME).is_file()
    again = TlsMemory(tmp_path / "queue", remember_for=30 * DAY)
    try:
        assert again.promised("example.com", now=SEEN + DAY) == PROMISE
    finally:
        again.close()
