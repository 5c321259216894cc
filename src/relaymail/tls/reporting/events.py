"""What a delivery session contributes to TLS reporting (RFC 8460 4.3, 4.4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from ...message import domain_of
from ..context import TlsFacts
from ..policy import Event
from ..results import PolicyType, ResultType


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
