"""The delivery history: one row per recipient attempt outcome, for the status page.

It lives in `history.db` beside the queue (state_db.py), never in the queue itself, so
that nothing here can slow or fail a commit of mail. The scheduler hands each outcome to
`record`, which only appends to a bounded buffer: no I/O on the delivery path, and no
exception leaves it. A background task writes the buffer in one transaction a second and
prunes rows older than RETENTION (or past MAX_ROWS), so the file does not grow with time.
What a full disk costs is history, never mail.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..delivery.results import Attempt, AttemptResult, RecipientResult, Status
from ..errors import AddressError, RelaymailError
from ..message import domain_of
from ..state_db import StateDb
from ..tls.context import TlsFacts
from ..tls.policy import Event

log = logging.getLogger("relaymail.admin")

FILENAME = "history.db"
RETENTION = 48 * 3600.0  # the page shows 24 hours; a day more for a look back
MAX_ROWS = 500_000  # whatever the rate, the file stays within a few hundred MB
FLUSH_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0
MAX_BUFFERED = 20_000  # rows waiting for a write; beyond, the oldest are dropped (and counted)


class SessionTls(enum.StrEnum):
    """How the session that carried an attempt was protected."""

    VERIFIED = "verified"  # TLS, certificate verified (or matched to DANE records)
    ENCRYPTED = "tls"  # TLS, certificate not verified
    CLEAR = "clear"
    NO_SESSION = "none"  # no session got as far as TLS (connection refused, host refused)


class ClearReason(enum.StrEnum):
    """Why a session went in clear: the STARTTLS step's event, in a word."""

    NOT_OFFERED = "STARTTLS not offered"
    TEMPFAIL = "4xx to STARTTLS"
    PERMFAIL = "5xx to STARTTLS"
    HANDSHAKE_FAILED = "TLS handshake failed"
    INJECTION = "bytes injected after 220"
    NOT_ASKED = "policy none"


_CLEAR_REASONS = {
    Event.NOT_OFFERED: ClearReason.NOT_OFFERED,
    Event.TEMPFAIL: ClearReason.TEMPFAIL,
    Event.PERMFAIL: ClearReason.PERMFAIL,
    Event.HANDSHAKE_FAILED: ClearReason.HANDSHAKE_FAILED,
    Event.INJECTION: ClearReason.INJECTION,
    None: ClearReason.NOT_ASKED,
}


def session_tls(tls: TlsFacts) -> tuple[SessionTls, ClearReason | None, str | None]:
    """The session's protection, why it was clear, and the policy that decided ("may (...)")."""
    judgement = tls.judgement
    policy = f"{judgement.level.value} ({judgement.source})" if judgement else None
    if tls.used:
        return (SessionTls.VERIFIED if tls.verified else SessionTls.ENCRYPTED), None, policy
    if judgement is None:
        return SessionTls.NO_SESSION, None, None
    # Events that leave TLS up, or no reply (the host fails), never carry a clear session.
    return SessionTls.CLEAR, _CLEAR_REASONS.get(judgement.event), policy


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recipient's attempt outcome, as recorded."""

    at: float
    queue_id: str
    recipient: str
    domain: str
    status: Status
    relay: str | None
    reply: str | None
    reason: str
    tls: SessionTls
    clear_reason: ClearReason | None
    policy: str | None
    trace: tuple[Attempt, ...]


@dataclass(frozen=True, slots=True)
class HourCount:
    hour: int  # hours since the epoch
    status: Status
    count: int


@dataclass(frozen=True, slots=True)
class SessionCount:
    domain: str
    tls: SessionTls
    clear_reason: ClearReason | None
    policy: str  # "" when none was recorded
    count: int


def history_entry(
    queue_id: str, result: RecipientResult, status: Status, reason: str, at: float
) -> HistoryEntry:
    tls, clear_reason, policy = session_tls(result.tls)
    try:
        domain = domain_of(result.recipient)
    except AddressError:
        domain = result.recipient.rpartition("@")[2].lower()
    return HistoryEntry(
        at, queue_id, result.recipient, domain, status, result.host, result.reply, reason,
        tls, clear_reason, policy, result.attempts,
    )  # fmt: skip


_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempt (
    id           INTEGER PRIMARY KEY,
    at           REAL NOT NULL,
    queue_id     TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    domain       TEXT NOT NULL,
    status       TEXT NOT NULL,
    relay        TEXT,
    reply        TEXT,
    reason       TEXT NOT NULL,
    tls          TEXT NOT NULL,
    clear_reason TEXT,
    policy       TEXT,
    trace        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempt_by_time ON attempt (at);
CREATE INDEX IF NOT EXISTS attempt_by_message ON attempt (queue_id);
"""

_COLUMNS = (
    "at, queue_id, recipient, domain, status, relay, reply, reason, tls, clear_reason,"
    " policy, trace"
)


def _trace_json(trace: tuple[Attempt, ...]) -> str:
    return json.dumps(
        [[a.host, a.ip, a.result.value, a.tls, a.detail] for a in trace], ensure_ascii=False
    )


def _row(entry: HistoryEntry) -> tuple[Any, ...]:
    return (
        entry.at, entry.queue_id, entry.recipient, entry.domain, entry.status.value,
        entry.relay, entry.reply, entry.reason, entry.tls.value,
        entry.clear_reason.name if entry.clear_reason else None, entry.policy,
        _trace_json(entry.trace),
    )  # fmt: skip


def _entry(row: Sequence[Any]) -> HistoryEntry:
    """A row back as the entry it was written from (the trace as typed attempts)."""
    trace = tuple(
        Attempt(host, ip, AttemptResult(result), tls, detail)
        for host, ip, result, tls, detail in json.loads(row[11])
    )
    return HistoryEntry(
        row[0], row[1], row[2], row[3], Status(row[4]), row[5], row[6], row[7],
        SessionTls(row[8]), None if row[9] is None else ClearReason[row[9]], row[10], trace,
    )  # fmt: skip


def _open(directory: Path) -> StateDb:
    """history.db; one that cannot be used (corrupt, newer) is set aside: it is only history."""
    try:
        return StateDb(directory, FILENAME, _SCHEMA)
    except (sqlite3.Error, RelaymailError) as exc:
        aside = directory / f"{FILENAME}.unusable-{int(time.time())}"
        log.error("delivery history %s unusable (%s); moved to %s, starting afresh",
                  directory / FILENAME, exc, aside.name)  # fmt: skip
        (directory / FILENAME).rename(aside)
        return StateDb(directory, FILENAME, _SCHEMA)


class DeliveryHistory:
    """history.db: written in batches by `run`, read by the status page."""

    def __init__(
        self,
        directory: Path,
        *,
        retention: float = RETENTION,
        max_rows: int = MAX_ROWS,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self._db = _open(directory)
        self._retention = retention
        self._max_rows = max_rows
        self._max_buffered = max_buffered
        self._buffer: list[HistoryEntry] = []
        self._dropped = 0
        self._last_prune = 0.0

    def record(
        self, queue_id: str, result: RecipientResult, status: Status, reason: str, at: float
    ) -> None:
        """Note one outcome; never raises and never waits (the delivery path calls it)."""
        try:
            self._buffer.append(history_entry(queue_id, result, status, reason, at))
            if len(self._buffer) > self._max_buffered:
                del self._buffer[0]
                self._dropped += 1
        except Exception as exc:  # a history row is never worth a delivery
            log.warning("id=%s: delivery history not recorded: %s", queue_id, exc)

    async def run(self) -> None:
        """Write what was recorded, once a second, until cancelled; then write the rest."""
        try:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        rows, self._buffer = self._buffer, []
        now = time.time()
        prune = now - self._last_prune >= PRUNE_INTERVAL
        if not rows and not prune:
            return
        if self._dropped:
            log.warning("delivery history: %d row(s) dropped, writes fell behind", self._dropped)
            self._dropped = 0
        try:
            await self._db.run(self._write, rows, now - self._retention if prune else None)
        except Exception as exc:
            log.warning("delivery history: %d row(s) not written: %s", len(rows), exc)
            return
        if prune:
            self._last_prune = now

    def _write(self, entries: list[HistoryEntry], prune_before: float | None) -> None:
        with self._db.transaction() as conn:
            conn.executemany(
                f"INSERT INTO attempt ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(e) for e in entries],
            )
            if prune_before is not None:
                conn.execute("DELETE FROM attempt WHERE at < ?", (prune_before,))
                conn.execute(
                    "DELETE FROM attempt WHERE id <= (SELECT max(id) FROM attempt) - ?",
                    (self._max_rows,),
                )

    # -- reads for the status page (on a worker thread) ------------------------------

    def recent(self, limit: int) -> list[HistoryEntry]:
        with self._db.connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM attempt ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_entry(row) for row in rows]

    def of_message(self, queue_id: str, limit: int = 500) -> list[HistoryEntry]:
        with self._db.connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM attempt WHERE queue_id = ? ORDER BY id LIMIT ?",
                (queue_id, limit),
            ).fetchall()
        return [_entry(row) for row in rows]

    def hourly(self, since: float) -> list[HourCount]:
        """Attempt outcomes at or after `since`, counted per hour and status."""
        with self._db.connection() as conn:
            rows = conn.execute(
                "SELECT CAST(at / 3600 AS INTEGER) AS hour, status, count(*) FROM attempt"
                " WHERE at >= ? GROUP BY hour, status",
                (since,),
            ).fetchall()
        return [HourCount(hour, Status(status), n) for hour, status, n in rows]

    def sessions(self, since: float) -> list[SessionCount]:
        """Deliveries since `since` that had a session, counted by domain and TLS outcome.

        A delivery is one message to one domain at one moment, however many recipients it
        carried: that is what a session is, near enough, without per-session bookkeeping.
        """
        with self._db.connection() as conn:
            rows = conn.execute(
                "SELECT domain, tls, clear_reason, coalesce(policy, ''), count(*) FROM"
                " (SELECT DISTINCT domain, queue_id, at, tls, clear_reason, policy FROM attempt"
                "  WHERE at >= ? AND tls != ?)"
                " GROUP BY domain, tls, clear_reason, policy",
                (since, SessionTls.NO_SESSION.value),
            ).fetchall()
        return [
            SessionCount(d, SessionTls(t), None if c is None else ClearReason[c], p, n)
            for d, t, c, p, n in rows
        ]

    def close(self) -> None:
        self._db.close()
