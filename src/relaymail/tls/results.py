"""The vocabulary of SMTP TLS Reporting (RFC 8460) that every TLS module speaks.

Certificate checks, DANE and MTA-STS lookups name their failures with these
types, and the report counts them; nothing else lives here, so a lookup module
need not import the reporting machinery for an enum.
"""

from __future__ import annotations

import enum


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
