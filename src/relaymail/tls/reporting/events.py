"""What a delivery session contributes to TLS reporting (RFC 8460 4.3, 4.4)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from ...message import domain_of
from ..context import TlsFacts
from ..policy import Event


class ResultType(enum.StrEnum):
    """RFC 8460 4.3: why a session failed."""

    # 4.3.1 negotiation failures
    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    # 4.3.2.1 DANE
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    # 4.3.2.2 MTA-STS
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


class PolicyType(enum.StrEnum):
    """RFC 8460 4.4 policy-type: which policy the session was checked against."""

    STS = "sts"
    TLSA = "tlsa"
    NO_POLICY_FOUND = "no-policy-found"


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
            result, reason = _certificate_failure(tls.verify_error or detail)
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


def _certificate_failure(verify_error: str) -> tuple[ResultType, str]:
    """The result type for tls/context.py check_peer's "class: words" reason."""
    name, _, words = verify_error.partition(":")
    try:
        result = ResultType(name.strip())
    except ValueError:
        return ResultType.VALIDATION_FAILURE, verify_error
    if result is ResultType.VALIDATION_FAILURE and "trusted CA" in words:
        # check_peer files an unknown issuer under validation-failure; 4.3.1 has a name for it.
        result = ResultType.CERTIFICATE_NOT_TRUSTED
    return result, words.strip() or verify_error
