"""SMTP TLS Reporting (RFC 8460): count TLS outcomes per day, send one report per domain.

Theory of operation
-------------------
Delivery turns each new SMTP session's STARTTLS step into a `TlsEvent`
(`session_event()` does the mapping from relaymail's own policy events) and
hands batches of them to `TlsReportStore.record()`. The store keeps no event
rows: it adds them up at once into counters keyed like the report itself
(UTC day, policy domain, policy type, policy strings, MX patterns; and for
failures result type, sending IP, MX name, EHLO name, IP and reason), so the
database grows with the number of distinct outcomes, not with the mail volume.
Concurrent record() calls share one transaction (a small group commit on a
worker thread), so calling it after every delivery costs the event loop
almost nothing.

Once a day is over, `send_daily_reports()` looks up `_smtp._tls.<domain>`
(RFC 8460 section 3) for each domain with data, and sends that domain's report
(section 4.4 JSON, gzipped, section 5.2) to every rua URI: `mailto:` as a
multipart/report message (section 5.3) handed to relaymail's own queue,
`https:` as a POST (section 5.4) to the address our own resolver gives for the
URI's host, TLS verified against the host name. Which destinations took the
report is stored, under a report id fixed at the first attempt: calling again
(after a restart, or to retry a failed POST) sends only what is still owed,
and a retried POST carries the same report id so the receiver can drop
duplicates.

Counting is what the report needs and nothing more: reasons are capped in
length, because a reason that embeds a server's changing text would otherwise
make a new failure row per session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import gzip
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from ..errors import AddressError, RelaymailError
from ..message import Envelope, check_address, domain_of
from ..resolver import describe_dns_error, is_ip
from .context import TlsFacts
from .policy import Event
from .results import PolicyType, ResultType

if TYPE_CHECKING:
    import httpx  # imported where used: `deliver` and the daemon start without it

__all__ = [
    "DB_FILENAME",
    "MEDIA_TYPE",
    "DestinationResult",
    "DomainSummary",
    "Enqueue",
    "FailureDetail",
    "PolicySummary",
    "ReportMail",
    "ReportOutcome",
    "ReportState",
    "TlsEvent",
    "TlsReport",
    "TlsReportStore",
    "TlsRptLookupError",
    "TlsRptRecord",
    "build_report_mail",
    "lookup_tlsrpt",
    "parse_tlsrpt_record",
    "post_report",
    "preview_reports",
    "report_filename",
    "report_json",
    "select_tlsrpt_record",
    "send_daily_reports",
    "session_event",
    "utc_day",
]

log = logging.getLogger("relaymail.tlsrpt")

DB_FILENAME = "tlsrpt.db"
SCHEMA_VERSION = 1
MEDIA_TYPE = "application/tlsrpt+gzip"  # RFC 8460 5.2 / 6.4
# A reason is someone else's text; it is a counter key, so keep it short.
MAX_REASON = 200
# Reports are sent to this many domains at once.
SEND_CONCURRENCY = 10
_BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class TlsEvent:
    """The TLS outcome of one delivery session (or a policy failure before any session)."""

    policy_domain: str  # lower case, IDNA A-labels
    success: bool
    at: float  # when it happened (seconds since the epoch); picks the UTC day
    policy_type: PolicyType = PolicyType.NO_POLICY_FOUND
    policy_strings: tuple[str, ...] = ()  # the TLSA records / STS policy lines
    mx_host_patterns: tuple[str, ...] = ()  # the STS `mx` patterns (or MX names for TLSA)
    result_type: ResultType | None = None  # set exactly when success is False
    receiving_mx_hostname: str | None = None
    receiving_ip: str | None = None
    sending_mta_ip: str | None = None
    receiving_mx_helo: str | None = None
    failure_reason_code: str | None = None

    def __post_init__(self) -> None:
        if self.success and self.result_type is not None:
            raise ValueError("a successful session has no result type")
        if not self.success and self.result_type is None:
            raise ValueError("a failed session needs a result type (RFC 8460 4.3)")


def utc_day(timestamp: float) -> date:
    return datetime.fromtimestamp(timestamp, UTC).date()


# ---------------------------------------------------------------------------
# From relaymail's view of a session to an event

# Events of the STARTTLS step that mean the server did not give us TLS at all.
_NO_STARTTLS = {Event.NOT_OFFERED, Event.TEMPFAIL, Event.PERMFAIL}


def session_event(
    policy_domain: str,
    *,
    event: Event,
    tls: TlsFacts,
    mx_hostname: str,
    receiving_ip: str,
    at: float,
    verification_required: bool,
    detail: str = "",
    policy_type: PolicyType = PolicyType.NO_POLICY_FOUND,
    policy_strings: Sequence[str] = (),
    mx_host_patterns: Sequence[str] = (),
    sending_mta_ip: str | None = None,
    receiving_mx_helo: str | None = None,
) -> TlsEvent:
    """The event for one new session, from what `DeliveryEngine._negotiate` returned.

    `verification_required`: whether the policy applied needs a verified
    certificate (level `verify`, an MTA-STS `enforce` policy, DANE). Without
    one, TLS with any certificate is what opportunistic TLS promises, so it
    counts as a success. `detail` is the text that came with the event.
    """
    result: ResultType | None = None
    reason = detail
    if event is Event.VERIFIED:
        pass
    elif event is Event.UNVERIFIED:
        if verification_required:
            checked = tls.verification
            if checked is not None and checked.result_type is not None:
                result, reason = checked.result_type, checked.reason
            else:
                result = ResultType.VALIDATION_FAILURE
    elif event in _NO_STARTTLS:
        result = ResultType.STARTTLS_NOT_SUPPORTED
        reason = f"{event.value}: {detail}" if detail else event.value
    else:  # no reply to STARTTLS, a failed handshake, injected bytes
        result = ResultType.VALIDATION_FAILURE
        reason = f"{event.value}: {detail}" if detail else event.value
    return TlsEvent(
        policy_domain=domain_of(f"postmaster@{policy_domain}"),
        success=result is None,
        at=at,
        policy_type=policy_type,
        policy_strings=tuple(policy_strings),
        mx_host_patterns=tuple(mx_host_patterns),
        result_type=result,
        receiving_mx_hostname=mx_hostname.rstrip(".").lower(),
        receiving_ip=receiving_ip,
        sending_mta_ip=sending_mta_ip,
        receiving_mx_helo=receiving_mx_helo,
        failure_reason_code=(reason or None) if result is not None else None,
    )


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean_reason(text: str) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


# ---------------------------------------------------------------------------
# What the store gives back


@dataclass(frozen=True, slots=True)
class FailureDetail:
    result_type: ResultType
    sessions: int
    receiving_mx_hostname: str | None = None
    receiving_ip: str | None = None
    sending_mta_ip: str | None = None
    receiving_mx_helo: str | None = None
    failure_reason_code: str | None = None


@dataclass(frozen=True, slots=True)
class PolicySummary:
    policy_type: PolicyType
    policy_strings: tuple[str, ...]
    mx_host_patterns: tuple[str, ...]
    successful_sessions: int
    failed_sessions: int
    failures: tuple[FailureDetail, ...]


@dataclass(frozen=True, slots=True)
class DomainSummary:
    """Everything counted for one policy domain on one UTC day."""

    day: date
    domain: str
    policies: tuple[PolicySummary, ...]

    @property
    def sessions(self) -> int:
        return sum(p.successful_sessions + p.failed_sessions for p in self.policies)


class ReportState(enum.StrEnum):
    OPEN = "open"  # a report id is assigned; some destination still waits for it
    SENT = "sent"  # every rua destination took it
    NO_RECORD = "no-record"  # the domain publishes no usable TLSRPT record: nothing to send


@dataclass(frozen=True, slots=True)
class _ReportRow:
    token: str  # letters and digits: the unique-id of the file name (RFC 8460 5.1)
    report_id: str
    state: ReportState
    delivered: frozenset[str]


# ---------------------------------------------------------------------------
# The store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_day (
    id             INTEGER PRIMARY KEY,
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
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report (
    day        TEXT NOT NULL,
    domain     TEXT NOT NULL,
    token      TEXT NOT NULL,
    report_id  TEXT NOT NULL,  -- fixed at the first attempt, so retries repeat it
    state      TEXT NOT NULL,
    detail     TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (day, domain)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report_destination (
    day         TEXT NOT NULL,
    domain      TEXT NOT NULL,
    destination TEXT NOT NULL,
    sent_at     REAL NOT NULL,
    PRIMARY KEY (day, domain, destination)
) WITHOUT ROWID;
"""


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
    """Daily TLS counters and report bookkeeping in `<directory>/tlsrpt.db`.

    One connection, used by one thread at a time under a lock; WAL so that
    another process (the CLI) can read while the daemon writes. Losing the
    last commit in a power cut costs a few counts, so commits do not fsync
    the WAL (synchronous=NORMAL).
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILENAME
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=32
        )
        self._lock = threading.Lock()
        self._write_lock = asyncio.Lock()
        self._sending = asyncio.Lock()  # one send_daily_reports() at a time
        self._open: _Batch = _Batch()
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RelaymailError(
                    f"{self.path}: schema version {version} is newer than this relaymail"
                )
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

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
            await asyncio.to_thread(self._write, batch.tallies)

    def record_blocking(self, events: Iterable[TlsEvent]) -> None:
        """record() for code without an event loop (tools, tests of the CLI)."""
        self._write(_aggregate(events))

    def _write(self, tallies: dict[_PolicyKey, _Tally]) -> None:
        with self._transaction() as conn:
            for key, tally in tallies.items():
                (policy_id,) = conn.execute(
                    """
                    INSERT INTO policy_day
                        (day, domain, policy_type, policy_strings, mx_patterns, successes, failures)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (day, domain, policy_type, policy_strings, mx_patterns)
                    DO UPDATE SET successes = successes + excluded.successes,
                                  failures = failures + excluded.failures
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
                    ON CONFLICT DO UPDATE SET sessions = sessions + excluded.sessions
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
                        for f, count in tally.failures.items()
                    ],
                )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- reading -------------------------------------------------------------------

    def domains(self, day: date) -> list[str]:
        """The policy domains with sessions counted on `day`, sorted."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT domain FROM policy_day WHERE day = ? ORDER BY domain",
                (day.isoformat(),),
            ).fetchall()
        return [domain for (domain,) in rows]

    def days(self) -> list[date]:
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT day FROM policy_day ORDER BY day").fetchall()
        return [date.fromisoformat(day) for (day,) in rows]

    def summary(self, day: date, domain: str) -> DomainSummary:
        with self._lock:
            policies = self._conn.execute(
                """
                SELECT id, policy_type, policy_strings, mx_patterns, successes, failures
                FROM policy_day WHERE day = ? AND domain = ? ORDER BY id
                """,
                (day.isoformat(), domain),
            ).fetchall()
            failures = self._conn.execute(
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
        with self._transaction() as conn:
            # Without relying on the foreign key's cascade: another process may
            # have opened the file with foreign_keys off.
            conn.execute(
                "DELETE FROM failure WHERE policy_id IN (SELECT id FROM policy_day WHERE day < ?)",
                (cutoff,),
            )
            gone = conn.execute("DELETE FROM policy_day WHERE day < ?", (cutoff,)).rowcount
            conn.execute("DELETE FROM report WHERE day < ?", (cutoff,))
            conn.execute("DELETE FROM report_destination WHERE day < ?", (cutoff,))
        return gone

    # -- report bookkeeping (send_daily_reports) ---------------------------------

    def _report(self, day: date, domain: str) -> _ReportRow | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT token, report_id, state FROM report WHERE day = ? AND domain = ?",
                (day.isoformat(), domain),
            ).fetchone()
            if row is None:
                return None
            delivered = self._conn.execute(
                "SELECT destination FROM report_destination WHERE day = ? AND domain = ?",
                (day.isoformat(), domain),
            ).fetchall()
        token, report_id, state = row
        return _ReportRow(token, report_id, ReportState(state), frozenset(d for (d,) in delivered))

    def _open_report(self, day: date, domain: str, submitter: str, now: float) -> _ReportRow:
        """The report's row, made with a fresh id if there is none yet."""
        token = secrets.token_hex(8)
        with self._transaction() as conn:
            conn.execute(
                """
                INSERT INTO report (day, domain, token, report_id, state, updated_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT DO NOTHING
                """,
                (
                    day.isoformat(), domain, token, _report_id(day, token, submitter),
                    ReportState.OPEN.value, now,
                ),
            )  # fmt: skip
        row = self._report(day, domain)
        assert row is not None
        return row

    def _mark_delivered(self, day: date, domain: str, destination: str, now: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO report_destination VALUES (?, ?, ?, ?)",
                (day.isoformat(), domain, destination, now),
            )

    def _close_report(
        self, day: date, domain: str, state: ReportState, detail: str, now: float
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                """
                INSERT INTO report (day, domain, token, report_id, state, detail, updated_at)
                VALUES (?, ?, '', '', ?, ?, ?)
                ON CONFLICT DO UPDATE SET state = excluded.state, detail = excluded.detail,
                                          updated_at = excluded.updated_at
                """,
                (day.isoformat(), domain, state.value, detail, now),
            )


# ---------------------------------------------------------------------------
# The report (RFC 8460 4.4, 5.1, 5.2)


def _day_range(day: date) -> tuple[datetime, datetime]:
    """RFC 8460 4.1: a report covers one full UTC day."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1) - timedelta(seconds=1)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def report_json(
    summary: DomainSummary, *, organization_name: str, contact_info: str, report_id: str
) -> dict[str, Any]:
    """The RFC 8460 4.4 report; fields with no value (unknown IP, no policy string) are left out."""
    start, end = _day_range(summary.day)
    policies = []
    for policy in summary.policies:
        applied: dict[str, Any] = {
            "policy-type": policy.policy_type.value,
            "policy-domain": summary.domain,
        }
        if policy.policy_strings:
            applied["policy-string"] = list(policy.policy_strings)
        if policy.mx_host_patterns:
            applied["mx-host"] = list(policy.mx_host_patterns)
        policies.append(
            {
                "policy": applied,
                "summary": {
                    "total-successful-session-count": policy.successful_sessions,
                    "total-failure-session-count": policy.failed_sessions,
                },
                "failure-details": [_failure_json(f) for f in policy.failures],
            }
        )
    return {
        "organization-name": organization_name,
        "date-range": {"start-datetime": _rfc3339(start), "end-datetime": _rfc3339(end)},
        "contact-info": contact_info,
        "report-id": report_id,
        "policies": policies,
    }


def _failure_json(failure: FailureDetail) -> dict[str, Any]:
    detail: dict[str, Any] = {"result-type": failure.result_type.value}
    optional = {
        "sending-mta-ip": failure.sending_mta_ip,
        "receiving-mx-hostname": failure.receiving_mx_hostname,
        "receiving-mx-helo": failure.receiving_mx_helo,
        "receiving-ip": failure.receiving_ip,
    }
    detail.update({k: v for k, v in optional.items() if v})
    detail["failed-session-count"] = failure.sessions
    if failure.failure_reason_code:
        detail["failure-reason-code"] = failure.failure_reason_code
    return detail


def report_filename(submitter: str, domain: str, day: date, unique_id: str) -> str:
    """RFC 8460 5.1: submitter!policy-domain!begin-timestamp!end-timestamp!unique-id.json.gz"""
    if not unique_id.isalnum() or not unique_id.isascii():
        raise ValueError(f"unique-id {unique_id!r} must be letters and digits (RFC 8460 5.1)")
    start, end = (int(moment.timestamp()) for moment in _day_range(day))
    return f"{submitter}!{domain}!{start}!{end}!{unique_id}.json.gz"


@dataclass(frozen=True, slots=True)
class TlsReport:
    """One domain's report for one day, ready to send."""

    day: date
    domain: str
    submitter: str
    unique_id: str  # letters and digits; part of the report id and of the file name
    json: dict[str, Any]

    @property
    def report_id(self) -> str:
        report_id: str = self.json["report-id"]
        return report_id

    @property
    def filename(self) -> str:
        return report_filename(self.submitter, self.domain, self.day, self.unique_id)

    def gzipped(self) -> bytes:
        """The JSON, gzipped (RFC 8460 5.2); mtime 0 so a retry sends identical bytes."""
        return gzip.compress(json.dumps(self.json).encode(), mtime=0)


def _report_id(day: date, token: str, submitter: str) -> str:
    # Also used as Message-ID and inside <> in the Subject: an addr-spec-like form.
    return f"{day:%Y%m%d}.{token}@{submitter}"


# ---------------------------------------------------------------------------
# Email transport (RFC 8460 5.3)


@dataclass(frozen=True, slots=True)
class ReportMail:
    envelope: Envelope
    data: bytes  # canonical: CRLF, not dot-stuffed


def build_report_mail(
    report: TlsReport, to: Sequence[str], *, from_address: str, now: datetime
) -> ReportMail:
    """The multipart/report message of RFC 8460 5.3 carrying `report`, for `to`."""
    if not to:
        raise ValueError("a report needs at least one recipient")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    attachment = base64.encodebytes(report.gzipped()).replace(b"\n", b"\r\n")
    text = (
        f"This is an aggregate TLS report (RFC 8460) from {report.submitter}\r\n"
        f"for {report.domain}, covering {report.day.isoformat()} (UTC).\r\n"
    ).encode()
    boundary = "tlsrpt=" + hashlib.sha256(attachment).hexdigest()[:24]
    head = [
        f"From: <{from_address}>",
        f"To: {', '.join(f'<{a}>' for a in to)}",
        f"Date: {format_datetime(now.astimezone(UTC))}",
        f"Message-ID: <{report.report_id}>",
        # Folded as in the RFC's example; unfolded it is the one-line form of 5.3.
        f"Subject: Report Domain: {report.domain}",
        f" Submitter: {report.submitter}",
        f" Report-ID: <{report.report_id}>",
        f"TLS-Report-Domain: {report.domain}",
        f"TLS-Report-Submitter: {report.submitter}",
        "Auto-Submitted: auto-generated",
        # RFC 8460 5.3: reports MUST be delivered despite TLS failures (the very
        # failures they report); RFC 8689 is how a message asks for that.
        "TLS-Required: No",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type="tlsrpt";',
        f'\tboundary="{boundary}"',
    ]
    parts: list[tuple[list[str], bytes]] = [
        (["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"], text),
        (
            [
                f"Content-Type: {MEDIA_TYPE}",
                "Content-Transfer-Encoding: base64",
                "Content-Disposition: attachment;",
                f'\tfilename="{report.filename}"',
            ],
            attachment,
        ),
    ]
    out = bytearray(_lines(head))
    out += b"\r\nThis is a multipart message in MIME format.\r\n"
    for part_head, body in parts:
        out += f"\r\n--{boundary}\r\n".encode() + _lines(part_head) + b"\r\n" + body
    out += f"\r\n--{boundary}--\r\n".encode()
    return ReportMail(Envelope(from_address, tuple(to)), bytes(out))


def _lines(lines: list[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("ascii")


# ---------------------------------------------------------------------------
# The TLSRPT record (RFC 8460 3)


class TlsRptLookupError(RelaymailError):
    """The TXT lookup failed for now (timeout, SERVFAIL): try again later."""


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    rua: tuple[str, ...]  # the URIs in the order given, schemes not yet checked


_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_URI_DELIM = re.compile(r"[ \t]*,[ \t]*")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
# RFC 3986 URI: a scheme, then only characters a URI may hold (no space, no `"<>\^{|}`).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_VERSION = "v=TLSRPTv1"


def parse_tlsrpt_record(text: str) -> TlsRptRecord:
    """Parse one record that begins with v=TLSRPTv1; ValueError if it breaks the grammar."""
    fields = _FIELD_DELIM.split(text)
    if fields[0] != _VERSION:
        raise ValueError(f"the record must begin with {_VERSION}")
    if fields[-1] == "" and len(fields) > 1:
        fields.pop()  # the optional final delimiter
    rua: tuple[str, ...] | None = None
    for item in fields[1:]:
        name, equals, value = item.partition("=")
        if name == "rua" and equals:
            if rua is not None:
                raise ValueError("more than one rua field")
            uris = tuple(_URI_DELIM.split(value))
            bad = [u for u in uris if not _URI.fullmatch(u)]
            if bad:
                raise ValueError(f"not a URI: {bad[0]!r}")
            rua = uris
        elif not (equals and _EXT_NAME.fullmatch(name) and _EXT_VALUE.fullmatch(value)):
            raise ValueError(f"malformed field {item!r}")
        # Other well-formed fields are extensions: ignored (RFC 8460 3).
    if rua is None:
        raise ValueError("no rua field")
    return TlsRptRecord(rua)


def select_tlsrpt_record(texts: Iterable[str]) -> TlsRptRecord | None:
    """RFC 8460 3: drop records not beginning with v=TLSRPTv1; exactly one valid one, or none."""
    candidates = [t for t in texts if t.startswith(_VERSION)]
    if len(candidates) != 1:
        return None
    try:
        return parse_tlsrpt_record(candidates[0])
    except ValueError:
        return None


async def lookup_tlsrpt(domain: str, resolver: dns.asyncresolver.Resolver) -> TlsRptRecord | None:
    """The TLSRPT record of `domain`, None if it has no (usable) one.

    Raises TlsRptLookupError when DNS fails in a way that may pass.
    """
    name = f"_smtp._tls.{domain}"
    try:
        answer = await resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        why = describe_dns_error(exc)
        raise TlsRptLookupError(f"TXT lookup for {name} failed: {why}") from exc
    # A record's character-strings are one string, concatenated without spaces.
    # Latin-1 cannot fail; non-ASCII then fails the grammar, as it should.
    return select_tlsrpt_record(b"".join(rdata.strings).decode("latin-1") for rdata in answer)


# ---------------------------------------------------------------------------
# Sending

Enqueue = Callable[[Envelope, bytes], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class DestinationResult:
    uri: str
    ok: bool
    detail: str
    permanent: bool = False  # a failure that trying again cannot fix (a bad URI)


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What send_daily_reports did for one domain."""

    domain: str
    day: date
    state: ReportState | None  # None: the TLSRPT lookup failed for now; tried again next time
    report_id: str | None = None
    destinations: tuple[DestinationResult, ...] = ()  # attempted this time
    detail: str = ""


def _mailto_addresses(uri: str) -> list[str]:
    """The addresses of a mailto: URI (RFC 6068); ValueError if there are none usable."""
    path = urllib.parse.urlsplit(uri).path
    addresses = [urllib.parse.unquote(a).strip() for a in path.split(",") if a.strip()]
    if not addresses:
        raise ValueError("no address")
    for address in addresses:
        check_address(address)
        if not address.isascii():  # the report mail is 7-bit; no SMTPUTF8 for it
            raise ValueError(f"{address!r}: not an ASCII address")
    return addresses


async def post_report(
    uri: str,
    body: bytes,
    resolver: dns.asyncresolver.Resolver,
    client: httpx.AsyncClient,
) -> DestinationResult:
    """POST a gzipped report to an https: rua (RFC 8460 5.4); any 2xx is success.

    The host is looked up with `resolver` (the MTA's own), the connection goes
    to the address, and the certificate is checked against the host name
    (SNI and Host carry the name). Addresses are tried in turn until one
    connects; once a request may have reached the server there is no second try.
    """
    import httpx

    url = httpx.URL(uri)
    if url.scheme != "https" or not url.raw_host:
        return DestinationResult(uri, False, "not an https URL with a host", permanent=True)
    host = url.raw_host.decode("ascii")
    literal = is_ip(host)
    try:
        addresses = [host] if literal else await _addresses(host, resolver)
    except dns.exception.DNSException as exc:
        why = describe_dns_error(exc)
        return DestinationResult(uri, False, f"address lookup for {host} failed: {why}")
    if not addresses:
        return DestinationResult(uri, False, f"{host} has no address records")
    authority = host if url.port is None else f"{host}:{url.port}"
    headers = {"Host": authority, "Content-Type": MEDIA_TYPE}
    failures = []
    for address in addresses:
        request = client.build_request(
            "POST",
            url.copy_with(host=address),
            headers=headers,
            content=body,
            extensions={} if literal else {"sni_hostname": host},
        )
        try:
            # Streamed and closed unread: the receiver's body is of no interest.
            response = await client.send(request, stream=True)
            await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failures.append(f"{address}: {str(exc) or type(exc).__name__}")
            continue
        except httpx.HTTPError as exc:
            return DestinationResult(uri, False, f"{address}: {str(exc) or type(exc).__name__}")
        if response.is_success:
            return DestinationResult(uri, True, f"{address}: HTTP {response.status_code}")
        return DestinationResult(
            uri, False, f"{address}: HTTP {response.status_code} {response.reason_phrase}"
        )
    return DestinationResult(uri, False, "; ".join(failures))


async def _addresses(host: str, resolver: dns.asyncresolver.Resolver) -> list[str]:
    async def query(rdtype: str) -> list[str]:
        try:
            answer = await resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [rdata.to_text() for rdata in answer]

    v6, v4 = await asyncio.gather(query("AAAA"), query("A"))
    return v6 + v4


async def send_daily_reports(
    store: TlsReportStore,
    day: date,
    resolver: dns.asyncresolver.Resolver,
    enqueue: Enqueue,
    *,
    organization_name: str,
    submitter: str,
    contact_info: str | None = None,
    from_address: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    http_timeout: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> list[ReportOutcome]:
    """Send the report of every domain with sessions on `day` to its rua URIs.

    Call it after `day` has ended (UTC); calling again sends only what is still
    owed (domains whose lookup failed, https destinations that refused), so a
    restart or a periodic retry never sends a report twice to a destination
    that took it. `enqueue` queues a message (Scheduler.enqueue); `ssl_context`
    verifies https receivers (default: the system's trust store).
    """
    import httpx

    if day >= utc_day(clock()):
        raise ValueError(f"{day} is not over yet (UTC); its report would be incomplete")
    contact = contact_info or f"postmaster@{submitter}"
    sender = from_address or f"noreply-smtp-tls-reporting@{submitter}"
    slots = asyncio.Semaphore(SEND_CONCURRENCY)
    async with (
        store._sending,
        httpx.AsyncClient(
            verify=ssl_context or ssl.create_default_context(),
            timeout=http_timeout,
            trust_env=False,  # we connect to the address we resolved, never via a proxy
            follow_redirects=False,
        ) as client,
    ):

        async def one(domain: str) -> ReportOutcome:
            async with slots:
                return await _send_domain(
                    store, day, domain, resolver, enqueue, client,
                    organization_name=organization_name, submitter=submitter,
                    contact_info=contact, from_address=sender, clock=clock,
                )  # fmt: skip

        domains = await asyncio.to_thread(store.domains, day)
        return list(await asyncio.gather(*(one(d) for d in domains)))


async def _send_domain(
    store: TlsReportStore,
    day: date,
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    enqueue: Enqueue,
    client: httpx.AsyncClient,
    *,
    organization_name: str,
    submitter: str,
    contact_info: str,
    from_address: str,
    clock: Callable[[], float],
) -> ReportOutcome:
    row = await asyncio.to_thread(store._report, day, domain)
    if row is not None and row.state is not ReportState.OPEN:
        return ReportOutcome(domain, day, row.state, detail="already done")
    try:
        record = await lookup_tlsrpt(domain, resolver)
    except TlsRptLookupError as exc:
        log.warning("tlsrpt domain=%s day=%s: %s; will try again", domain, day, exc)
        return ReportOutcome(domain, day, None, detail=str(exc))
    if record is None:
        detail = f"no usable TLSRPT record at _smtp._tls.{domain}"
        await asyncio.to_thread(
            store._close_report, day, domain, ReportState.NO_RECORD, detail, clock()
        )
        return ReportOutcome(domain, day, ReportState.NO_RECORD, detail=detail)
    supported = [u for u in dict.fromkeys(record.rua) if _scheme(u) in ("mailto", "https")]
    if not supported:
        detail = f"no mailto: or https: URI in the TLSRPT record of {domain}"
        await asyncio.to_thread(
            store._close_report, day, domain, ReportState.NO_RECORD, detail, clock()
        )
        return ReportOutcome(domain, day, ReportState.NO_RECORD, detail=detail)
    row = await asyncio.to_thread(store._open_report, day, domain, submitter, clock())
    report_id = row.report_id
    summary = await asyncio.to_thread(store.summary, day, domain)
    report = TlsReport(
        day, domain, submitter, row.token,
        report_json(summary, organization_name=organization_name, contact_info=contact_info,
                    report_id=report_id),
    )  # fmt: skip
    body = report.gzipped()
    results: list[DestinationResult] = []
    for uri in supported:  # a URI given twice gets one copy
        if uri in row.delivered:
            continue
        result = await _deliver_to(
            uri, report, body, resolver, enqueue, client, from_address, clock
        )
        log.info(
            "tlsrpt domain=%s day=%s report-id=%s to=%s %s: %s",
            domain, day, report_id, uri, "sent" if result.ok else "failed", result.detail,
        )  # fmt: skip
        if result.ok:
            await asyncio.to_thread(store._mark_delivered, day, domain, uri, clock())
        results.append(result)
    owed = [r for r in results if not r.ok and not r.permanent]
    if owed:
        return ReportOutcome(domain, day, ReportState.OPEN, report_id, tuple(results))
    delivered = len(row.delivered) + sum(r.ok for r in results)
    detail = f"sent to {delivered} of {len(record.rua)} rua URIs"
    await asyncio.to_thread(store._close_report, day, domain, ReportState.SENT, detail, clock())
    return ReportOutcome(domain, day, ReportState.SENT, report_id, tuple(results), detail)


def _scheme(uri: str) -> str:
    return uri.partition(":")[0].lower()


async def _deliver_to(
    uri: str,
    report: TlsReport,
    body: bytes,
    resolver: dns.asyncresolver.Resolver,
    enqueue: Enqueue,
    client: httpx.AsyncClient,
    from_address: str,
    clock: Callable[[], float],
) -> DestinationResult:
    if _scheme(uri) == "https":
        return await post_report(uri, body, resolver, client)
    try:
        addresses = _mailto_addresses(uri)
    except (ValueError, AddressError) as exc:
        return DestinationResult(uri, False, f"unusable mailto URI: {exc}", permanent=True)
    mail = build_report_mail(
        report, addresses, from_address=from_address, now=datetime.fromtimestamp(clock(), UTC)
    )
    try:
        queued = await enqueue(mail.envelope, mail.data)
    except RelaymailError as exc:  # QueueFull: the next call tries again
        return DestinationResult(uri, False, f"could not queue the report: {exc}")
    return DestinationResult(uri, True, f"queued as {queued}")


# ---------------------------------------------------------------------------
# For the CLI


def preview_reports(
    store: TlsReportStore,
    day: date | None = None,
    domain: str | None = None,
    *,
    organization_name: str,
    contact_info: str,
    clock: Callable[[], float] = time.time,
) -> list[dict[str, Any]]:
    """The reports `day` (default: today, UTC, so far) would produce, as JSON objects.

    Blocking (reads SQLite); for `relaymail tlsrpt show [DOMAIN]`. The report
    id is the one assigned when sending began, else "(not sent)".
    """
    day = day or utc_day(clock())
    domains = [domain] if domain is not None else store.domains(day)
    reports = []
    for name in domains:
        summary = store.summary(day, name)
        if not summary.policies:
            continue
        row = store._report(day, name)
        reports.append(
            report_json(
                summary,
                organization_name=organization_name,
                contact_info=contact_info,
                report_id=row.report_id if row is not None and row.report_id else "(not sent)",
            )
        )
    return reports
