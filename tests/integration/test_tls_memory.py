"""Downgrade memory by level: the highest TLS level seen per domain, since when, last seen;
on SQLite and on PostgreSQL, where two nodes share it."""

from __future__ import annotations

import calendar
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaymail.config_queue import QueueSettings
from relaymail.tls.downgrade import Remembered, TlsLevel
from relaymail.tls.memory import FILENAME, TlsMemory

DAY = 86400.0
SEEN = float(calendar.timegm((2026, 3, 14, 15, 9, 26)))  # 2026-03-14 15:09:26 UTC


@pytest.fixture
def memory(state_queue: QueueSettings) -> Iterator[TlsMemory]:
    opened = TlsMemory(state_queue, remember_for=30 * DAY)
    yield opened
    opened.close()


def test_a_domain_never_seen_with_tls_is_remembered_at_no_level(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.CLEAR, now=SEEN)
    assert memory.recall("example.com", now=SEEN) is None


def test_the_level_seen_is_remembered_with_since_and_last_seen(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.TLS, now=SEEN)

    assert memory.recall("example.com", now=SEEN + DAY) == Remembered(
        "example.com", TlsLevel.TLS, SEEN, SEEN
    )
    assert memory.recall("example.net", now=SEEN + DAY) is None


def test_a_level_that_goes_up_is_recorded_at_once_and_never_goes_down(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.TLS, now=SEEN)
    memory.saw("example.com", TlsLevel.VERIFIED, now=SEEN + 60)  # within the hour, but higher
    memory.saw("example.com", TlsLevel.TLS, now=SEEN + 7200)

    assert memory.recall("example.com", now=SEEN + 7200) == Remembered(
        "example.com", TlsLevel.VERIFIED, SEEN + 60, SEEN + 60
    )


def test_the_memory_ends_remember_for_after_the_level_was_last_seen(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.VERIFIED, now=SEEN)

    assert memory.recall("example.com", now=SEEN + 30 * DAY) is not None
    assert memory.recall("example.com", now=SEEN + 30 * DAY + 1) is None


def test_an_expired_memory_starts_afresh_at_the_level_seen_now(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.VERIFIED, now=SEEN)
    later = SEEN + 31 * DAY
    memory.saw("example.com", TlsLevel.TLS, now=later)

    assert memory.recall("example.com", now=later) == Remembered(
        "example.com", TlsLevel.TLS, later, later
    )


def test_the_last_seen_time_is_refreshed_at_most_hourly(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.TLS, now=SEEN)
    memory.saw("example.com", TlsLevel.TLS, now=SEEN + 3599)  # within the hour: not written
    assert memory.recall("example.com", now=SEEN + 30 * DAY + 100) is None

    memory.saw("example.com", TlsLevel.TLS, now=SEEN + 3600)
    found = memory.recall("example.com", now=SEEN + 30 * DAY + 100)
    assert found is not None and (found.since, found.last_seen) == (SEEN, SEEN + 3600)


def test_forget_ends_the_memory_once(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.VERIFIED, now=SEEN)

    assert memory.forget("example.com")
    assert memory.recall("example.com", now=SEEN) is None
    assert not memory.forget("example.com")


def test_a_forgotten_domain_is_remembered_again_at_once(memory: TlsMemory) -> None:
    memory.saw("example.com", TlsLevel.TLS, now=SEEN)
    memory.forget("example.com")

    memory.saw("example.com", TlsLevel.TLS, now=SEEN + 60)  # no hourly wait after a forget
    found = memory.recall("example.com", now=SEEN + 60)
    assert found is not None and found.since == SEEN + 60


def test_what_one_node_learns_the_other_recalls(state_queue: QueueSettings, tmp_path: Path) -> None:
    """Two memories on one database: two nodes of a cluster, or two processes of one node."""
    a = TlsMemory(state_queue, remember_for=30 * DAY)
    b = TlsMemory(dataclasses.replace(state_queue, node="b"), remember_for=30 * DAY)
    try:
        a.saw("example.com", TlsLevel.VERIFIED, now=SEEN)
        assert b.recall("example.com", now=SEEN + 1) == Remembered(
            "example.com", TlsLevel.VERIFIED, SEEN, SEEN
        )
        assert b.forget("example.com")
        assert a.recall("example.com", now=SEEN + 2) is None
    finally:
        a.close()
        b.close()


def test_the_memory_outlives_the_process(state_queue: QueueSettings) -> None:
    first = TlsMemory(state_queue, remember_for=30 * DAY)
    first.saw("example.com", TlsLevel.TLS, now=SEEN)
    first.close()

    again = TlsMemory(state_queue, remember_for=30 * DAY)
    try:
        found = again.recall("example.com", now=SEEN + DAY)
        assert found is not None and found.level is TlsLevel.TLS
    finally:
        again.close()


@pytest.mark.parametrize("user_version", [0, 1], ids=["before-versions", "version-1"])
def test_a_did_tls_file_becomes_level_tls_since_its_last_tls(
    tmp_path: Path, user_version: int
) -> None:
    raw = sqlite3.connect(tmp_path / FILENAME)
    raw.execute("CREATE TABLE tls_seen (domain TEXT PRIMARY KEY, last_tls REAL NOT NULL)")
    raw.execute("INSERT INTO tls_seen VALUES ('example.com', ?)", (SEEN,))
    raw.execute(f"PRAGMA user_version = {user_version}")
    raw.commit()
    raw.close()

    memory = TlsMemory(tmp_path, remember_for=30 * DAY)
    try:
        assert memory.recall("example.com", now=SEEN + DAY) == Remembered(
            "example.com", TlsLevel.TLS, SEEN, SEEN
        )
    finally:
        memory.close()
    raw = sqlite3.connect(tmp_path / FILENAME)
    tables = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert (tables, raw.execute("PRAGMA user_version").fetchone()) == ([("tls_level",)], (2,))
    raw.close()
