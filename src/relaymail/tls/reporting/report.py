"""The report itself: RFC 8460 4.4 JSON, its file name (5.1) and gzip form (5.2)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..results import PolicyType, ResultType

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


def new_report_id(day: date, token: str, submitter: str) -> str:
    # Also used as Message-ID and inside <> in the Subject: an addr-spec-like form.
    return f"{day:%Y%m%d}.{token}@{submitter}"
