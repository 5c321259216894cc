"""The TLS reporting counters and report bookkeeping: `tlsrpt.db`, or with `[queue] backend
= "postgresql"` tables every node shares (state_db.py), so the cluster sends one report
per domain per day, counting every node's sessions, through whichever node claims it."""

from __future__ import annotations

import asyncio
import enum
import json
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...state_db import StateSchema, open_state
from ..results import PolicyType, ResultType
from .events import TlsEvent, utc_day
from .report import DomainSummary, FailureDetail, PolicySummary, new_report_id, report_json

if TYPE_CHECKING:
    from ...config_queue import QueueSettings

DB_FILENAME = "tlsrpt.db"
SCHEMA_VERSION = 1
# How long a node's claim on sending one report holds if the node dies while it sends.
CLAIM_LEASE = 3600.0
# A reason is someone else's text; it is a counter key, so keep it short.
MAX_REASON = 200


# ---------------------------------------------------------------------------
# Aggregation


@dataclass(frozen=True, slots=True)
class _PolicyKey:
    day: date
    domain: str
    policy_type: PolicyType
    policy_strings: tuple[str, ...]
    mx_host_patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _FailureKey:
    result_type: ResultType
    sending_mta_ip: str
    receiving_mx_hostname: str
    receiving_mx_helo: str
    receiving_ip: str
    reason: str


@dataclass(slots=True)
class _Tally:
    successes: int = 0
    failures: Counter[_FailureKey] = field(default_factory=Counter)

    def merge(self, other: _Tally) -> None:
        self.successes += other.successes
        self.failures.update(other.failures)


def _aggregate(events: Iterable[TlsEvent]) -> dict[_PolicyKey, _Tally]:
    tallies: dict[_PolicyKey, _Tally] = {}
    for event in events:
        key = _PolicyKey(
            utc_day(event.at), event.policy_domain, event.policy_type,
            event.policy_strings, event.mx_host_patterns,
        )  # fmt: skip
        tally = tallies.setdefault(key, _Tally())
        if event.success:
            tally.successes += 1
            continue
        assert event.result_type is not None
        tally.failures[
            _FailureKey(
                event.result_type,
                event.sending_mta_ip or "",
                event.receiving_mx_hostname or "",
                event.receiving_mx_helo or "",
                event.receiving_ip or "",
                _clean_reason(event.failure_reason_code or ""),
            )
        ] += 1
    return tallies


def _order(key: _PolicyKey) -> tuple[str, ...]:
    return (key.day.isoformat(), key.domain, key.policy_type.value,
            *key.policy_strings, "", *key.mx_host_patterns)  # fmt: skip


def _failure_order(item: tuple[_FailureKey, int]) -> tuple[str, ...]:
    f = item[0]
    return (f.result_type.value, f.sending_mta_ip, f.receiving_mx_hostname,
            f.receiving_mx_helo, f.receiving_ip, f.reason)  # fmt: skip


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean_reason(text: str) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class ReportState(enum.StrEnum):
    OPEN = "open"  # a report id is assigned; some destination still waits for it
    SENT = "sent"  # every rua destination took it
    NO_RECORD = "no-record"  # the domain publishes no usable TLSRPT record: nothing to send


@dataclass(frozen=True, slots=True)
class ReportProgress:
    """How far sending one domain's report for one day has come."""

    token: str  # letters and digits: the unique-id of the file name (RFC 8460 5.1)
    report_id: str
    state: ReportState
    delivered: frozenset[str]


# ---------------------------------------------------------------------------
# The store

_TABLES = """
CREATE TABLE IF NOT EXISTS policy_day (
    id             {SERIAL_KEY},
    day            TEXT NOT NULL,     -- YYYY-MM-DD, UTC
    domain         TEXT NOT NULL,
    policy_type    TEXT NOT NULL,
    policy_strings TEXT NOT NULL,     -- JSON array
    mx_patterns    TEXT NOT NULL,     -- JSON array
    successes      INTEGER NOT NULL DEFAULT 0,
    failures       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (day, domain, policy_type, policy_strings, mx_patterns)
);
-- '' stands for "not known" in key columns: NULLs are never equal, so they would
-- defeat the primary key and make a new row per session.
CREATE TABLE IF NOT EXISTS failure (
    policy_id    INTEGER NOT NULL REFERENCES policy_day (id) ON DELETE CASCADE,
    result_type  TEXT NOT NULL,
    sending_ip   TEXT NOT NULL,
    mx_hostname  TEXT NOT NULL,
    mx_helo      TEXT NOT NULL,
    receiving_ip TEXT NOT NULL,
    reason       TEXT NOT NULL,
    sessions     INTEGER NOT NULL,
    PRIMARY KEY (policy_id, result_type, sending_ip, mx_hostname, mx_helo, receiving_ip, reason)
) {WITHOUT_ROWID};
CREATE TABLE IF NOT EXISTS report (
    day        TEXT NOT NULL,
    domain     TEXT NOT NULL,
    token      TEXT NOT NULL,
    report_id  TEXT NOT NULL,  -- fixed at the first attempt, so retries repeat it
    state      TEXT NOT NULL,
    detail     TEXT,
    updated_at {REAL} NOT NULL,
    PRIMARY KEY (day, domain)
) {WITHOUT_ROWID};
CREATE TABLE IF NOT EXISTS report_destination (
    day         TEXT NOT NULL,
    domain      TEXT NOT NULL,
    destination TEXT NOT NULL,
    sent_at     {REAL} NOT NULL,
    PRIMARY KEY (day, domain, destination)
) {WITHOUT_ROWID};
-- Which node is sending a report now: the one that holds the row, until `until`.
CREATE TABLE IF NOT EXISTS report_claim (
    day    TEXT NOT NULL,
    domain TEXT NOT NULL,
    node   TEXT NOT NULL,
    until  {REAL} NOT NULL,
    PRIMARY KEY (day, domain)
) {WITHOUT_ROWID};
"""
SCHEMA = StateSchema(DB_FILENAME, _TABLES, version=SCHEMA_VERSION)


@dataclass(slots=True)
class _Batch:
    """record() calls that will share one transaction."""

    tallies: dict[_PolicyKey, _Tally] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def add(self, tallies: dict[_PolicyKey, _Tally]) -> None:
        for key, tally in tallies.items():
            mine = self.tallies.get(key)
            if mine is None:
                self.tallies[key] = tally
            else:
                mine.merge(tally)


class TlsReportStore:
    """Daily TLS counters and report bookkeeping, in `<directory>/tlsrpt.db` or where the
    queue settings say.

    A state database (state_db.py): another process (the CLI, another node) can read
    while the daemon writes; losing the last commit in a power cut costs a few counts,
    so commits do not fsync the WAL.
    """

    def __init__(self, location: Path | QueueSettings) -> None:
        self.db = open_state(location, SCHEMA)
        self.where = self.db.where
        self._write_lock = asyncio.Lock()
        self.sending = asyncio.Lock()  # one send_daily_reports() at a time
        self._open: _Batch = _Batch()

    def close(self) -> None:
        self.db.close()

    # -- counting ----------------------------------------------------------------

    async def record(self, events: Iterable[TlsEvent]) -> None:
        """Count `events`; returns once they are committed.

        Calls that arrive while a commit runs join the next one: one
        transaction on a worker thread for all of them.
        """
        tallies = _aggregate(events)
        if not tallies:
            return
        batch = self._open
        batch.add(tallies)
        if batch.task is None:
            batch.task = asyncio.get_running_loop().create_task(self._commit(batch))
        # A cancelled caller must not cancel the others' commit.
        await asyncio.shield(batch.task)

    async def _commit(self, batch: _Batch) -> None:
        async with self._write_lock:
            if self._open is batch:
                self._open = _Batch()
            await self.db.run(self._write, batch.tallies)

    def record_blocking(self, events: Iterable[TlsEvent]) -> None:
        """record() for code without an event loop (tools, tests of the CLI)."""
        self._write(_aggregate(events))

    def _write(self, tallies: dict[_PolicyKey, _Tally]) -> None:
        # In one order on every node: two nodes' transactions that upsert the same rows
        # in different orders could deadlock on PostgreSQL.
        ordered = sorted(tallies.items(), key=lambda item: _order(item[0]))
        with self.db.transaction() as conn:
            for key, tally in ordered:
                (policy_id,) = conn.execute(
                    """
                    INSERT INTO policy_day
                        (day, domain, policy_type, policy_strings, mx_patterns, successes, failures)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (day, domain, policy_type, policy_strings, mx_patterns)
                    DO UPDATE SET successes = policy_day.successes + excluded.successes,
                                  failures = policy_day.failures + excluded.failures
                    RETURNING id
                    """,
                    (
                        key.day.isoformat(), key.domain, key.policy_type.value,
                        json.dumps(key.policy_strings), json.dumps(key.mx_host_patterns),
                        tally.successes, tally.failures.total(),
                    ),
                ).fetchone()  # fmt: skip
                conn.executemany(
                    """
                    INSERT INTO failure (policy_id, result_type, sending_ip, mx_hostname,
                                         mx_helo, receiving_ip, reason, sessions)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (policy_id, result_type, sending_ip, mx_hostname, mx_helo,
                                 receiving_ip, reason)
                    DO UPDATE SET sessions = failure.sessions + excluded.sessions
                    """,
                    [
                        (
                            policy_id,
                            f.result_type.value,
                            f.sending_mta_ip,
                            f.receiving_mx_hostname,
                            f.receiving_mx_helo,
                            f.receiving_ip,
                            f.reason,
                            count,
                        )
                        for f, count in sorted(tally.failures.items(), key=_failure_order)
                    ],
                )

    # -- reading -------------------------------------------------------------------

    def domains(self, day: date) -> list[str]:
        """The policy domains with sessions counted on `day`, sorted."""
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT domain FROM policy_day WHERE day = ? ORDER BY domain",
                (day.isoformat(),),
            ).fetchall()
        return [domain for (domain,) in rows]

    def days(self) -> list[date]:
        with self.db.connection() as conn:
            rows = conn.execute("SELECT DISTINCT day FROM policy_day ORDER BY day").fetchall()
        return [date.fromisoformat(day) for (day,) in rows]

    def summary(self, day: date, domain: str) -> DomainSummary:
        with self.db.connection() as conn:
            policies = conn.execute(
                """
                SELECT id, policy_type, policy_strings, mx_patterns, successes, failures
                FROM policy_day WHERE day = ? AND domain = ? ORDER BY id
                """,
                (day.isoformat(), domain),
            ).fetchall()
            failures = conn.execute(
                """
                SELECT f.policy_id, f.result_type, f.sending_ip, f.mx_hostname, f.mx_helo,
                       f.receiving_ip, f.reason, f.sessions
                FROM failure f JOIN policy_day p ON p.id = f.policy_id
                WHERE p.day = ? AND p.domain = ?
                ORDER BY f.sessions DESC, f.result_type, f.mx_hostname, f.receiving_ip, f.reason
                """,
                (day.isoformat(), domain),
            ).fetchall()
        details: dict[int, list[FailureDetail]] = {}
        for policy_id, result, sending_ip, mx, helo, ip, reason, sessions in failures:
            details.setdefault(policy_id, []).append(
                FailureDetail(
                    ResultType(result),
                    sessions,
                    receiving_mx_hostname=mx or None,
                    receiving_ip=ip or None,
                    sending_mta_ip=sending_ip or None,
                    receiving_mx_helo=helo or None,
                    failure_reason_code=reason or None,
                )
            )
        return DomainSummary(
            day,
            domain,
            tuple(
                PolicySummary(
                    PolicyType(policy_type),
                    tuple(json.loads(strings)),
                    tuple(json.loads(patterns)),
                    successes,
                    failed,
                    tuple(details.get(policy_id, ())),
                )
                for policy_id, policy_type, strings, patterns, successes, failed in policies
            ),
        )

    def build_report(
        self,
        day: date,
        domain: str,
        *,
        organization_name: str,
        contact_info: str,
        report_id: str,
    ) -> dict[str, Any]:
        """The RFC 8460 4.4 JSON report for `domain` on `day`."""
        return report_json(
            self.summary(day, domain),
            organization_name=organization_name,
            contact_info=contact_info,
            report_id=report_id,
        )

    def prune(self, before: date) -> int:
        """Forget counters and report bookkeeping of days before `before`; returns rows gone."""
        cutoff = before.isoformat()
        with self.db.transaction() as conn:
            # Without relying on the foreign key's cascade: another process may
            # have opened the file with foreign_keys off.
            conn.execute(
                "DELETE FROM failure WHERE policy_id IN (SELECT id FROM policy_day WHERE day < ?)",
                (cutoff,),
            )
            gone = conn.execute("DELETE FROM policy_day WHERE day < ?", (cutoff,)).rowcount
            conn.execute("DELETE FROM report WHERE day < ?", (cutoff,))
            conn.execute("DELETE FROM report_destination WHERE day < ?", (cutoff,))
            conn.execute("DELETE FROM report_claim WHERE day < ?", (cutoff,))
        return gone

    # -- report bookkeeping (send_daily_reports) ---------------------------------

    def progress(self, day: date, domain: str) -> ReportProgress | None:
        """Where sending the report of `domain` for `day` stands; None before the first try."""
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT token, report_id, state FROM report WHERE day = ? AND domain = ?",
                (day.isoformat(), domain),
            ).fetchone()
            if row is None:
                return None
            delivered = conn.execute(
                "SELECT destination FROM report_destination WHERE day = ? AND domain = ?",
                (day.isoformat(), domain),
            ).fetchall()
        token, report_id, state = row
        return ReportProgress(
            token, report_id, ReportState(state), frozenset(d for (d,) in delivered)
        )

    def open_report(self, day: date, domain: str, submitter: str, now: float) -> ReportProgress:
        """The report's row, made with a fresh id if there is none yet."""
        token = secrets.token_hex(8)
        with self.db.transaction() as conn:
            conn.execute(
                """
                INSERT INTO report (day, domain, token, report_id, state, updated_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT DO NOTHING
                """,
                (
                    day.isoformat(), domain, token, new_report_id(day, token, submitter),
                    ReportState.OPEN.value, now,
                ),
            )  # fmt: skip
        row = self.progress(day, domain)
        assert row is not None
        return row

    def mark_delivered(self, day: date, domain: str, destination: str, now: float) -> None:
        """Record that `destination` took the report: it is never sent there again."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO report_destination VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (day.isoformat(), domain, destination, now),
            )

    def close_report(
        self, day: date, domain: str, state: ReportState, detail: str, now: float
    ) -> None:
        """Settle the report in `state` (SENT, NO_RECORD): later sends skip it."""
        with self.db.transaction() as conn:
            conn.execute(
                """
                INSERT INTO report (day, domain, token, report_id, state, detail, updated_at)
                VALUES (?, ?, '', '', ?, ?, ?)
                ON CONFLICT (day, domain)
                DO UPDATE SET state = excluded.state, detail = excluded.detail,
                                          updated_at = excluded.updated_at
                """,
                (day.isoformat(), domain, state.value, detail, now),
            )

    def claim(self, day: date, domain: str, node: str, now: float) -> str:
        """Claim sending the report of `domain` for `day` for `node`; returns the holder.

        One statement, so of two nodes asking at once exactly one gets it: a claim is
        taken when there is none, when it is the asker's own, or when its holder let
        the lease pass (a node that died while sending).
        """
        with self.db.transaction() as conn:
            conn.execute(
                """
                INSERT INTO report_claim (day, domain, node, until) VALUES (?, ?, ?, ?)
                ON CONFLICT (day, domain) DO UPDATE SET node = excluded.node,
                                                        until = excluded.until
                WHERE report_claim.until < ? OR report_claim.node = excluded.node
                """,
                (day.isoformat(), domain, node, now + CLAIM_LEASE, now),
            )
            (holder,) = conn.execute(
                "SELECT node FROM report_claim WHERE day = ? AND domain = ?",
                (day.isoformat(), domain),
            ).fetchone()
        return str(holder)

    def release(self, day: date, domain: str, node: str) -> None:
        """End `node`'s claim: the next send, by any node, may take it."""
        with self.db.connection() as conn:
            conn.execute(
                "DELETE FROM report_claim WHERE day = ? AND domain = ? AND node = ?",
                (day.isoformat(), domain, node),
            )
