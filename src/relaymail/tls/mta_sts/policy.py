"""MTA-STS policies and TXT records (RFC 8461 3.1, 3.2): the types and the parsers."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import idna

from ...errors import RelaymailError
from ...resolver import is_ip
from ..results import ResultType

MAX_MAX_AGE = 31_557_600  # RFC 8461 3.2: one year


class StsMode(enum.StrEnum):
    ENFORCE = "enforce"  # deliver only to matching MX hosts over verified TLS
    TESTING = "testing"  # deliver as usual; report what enforce would have refused
    NONE = "none"  # the domain has withdrawn its policy


class StsError(RelaymailError):
    """MTA-STS information could not be obtained; `reason` says why in a person's words."""

    result_type: ResultType | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StsRecordInvalid(StsError):
    """The `_mta-sts` TXT record is malformed or ambiguous: the domain has no policy now."""


class StsPolicyInvalid(StsError):
    """The policy text breaks RFC 8461 3.2."""

    result_type = ResultType.STS_POLICY_INVALID


class StsFetchError(StsError):
    """The policy could not be fetched; `result_type` tells a certificate problem apart."""

    def __init__(
        self, reason: str, result_type: ResultType = ResultType.STS_POLICY_FETCH_ERROR
    ) -> None:
        super().__init__(reason)
        self.result_type = result_type


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: StsMode
    mx: tuple[str, ...]  # patterns as published, lower case: "mx.example.com", "*.example.net"
    max_age: int  # seconds
    policy_id: str  # the TXT record's id when the policy was fetched
    fetched_at: float  # seconds since the epoch
    text: str  # the policy as served, for TLS-RPT `policy-string`

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def matches(self, mx_host: str) -> bool:
        """Whether `mx_host` is one of the policy's MX hosts (RFC 8461 4.1)."""
        host = mx_host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                # The wildcard stands for exactly one whole leftmost label.
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


@dataclass(frozen=True, slots=True)
class StsLookup:
    """What `StsResolver.lookup` found for one domain."""

    policy: StsPolicy | None  # None: deliver as if the domain had no MTA-STS
    from_cache: bool = False
    error: str | None = None  # what went wrong, even when a cached policy still applies
    result_type: ResultType | None = None  # the TLS-RPT result type for that failure

    @property
    def mode(self) -> StsMode:
        """The mode in force: NONE when there is no policy."""
        return self.policy.mode if self.policy is not None else StsMode.NONE


NO_POLICY = StsLookup(None)

# --- Parsing -------------------------------------------------------------------------

_WSP = " \t"
_MODES = frozenset(mode.value for mode in StsMode)
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
# RFC 5321 sub-domain in A-labels only: U-labels are not allowed in policies (3.2).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Extension values: printable ASCII or UTF-8, inner spaces only (sts-policy-ext-value).
_EXT_VALUE = re.compile(r"[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_FIELD = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,31})=(?P<value>[\x21-\x3a\x3c\x3e-\x7e]+)"
)
_TXT_VERSION = re.compile(r"v=STSv1(?:[ \t;]|$)")


def parse_policy(text: str, *, policy_id: str = "", fetched_at: float = 0.0) -> StsPolicy:
    """The policy in `text` (RFC 8461 3.2); StsPolicyInvalid names the first problem.

    Field names and values are case-sensitive. Lines end in CRLF or LF. Unknown fields
    are ignored; a repeated field other than mx counts only the first time (3.2).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the optional final line terminator
    while lines and lines[-1] in ("", "\r"):
        lines.pop()  # trailing blank lines: editors add them, and they change nothing
    if not lines:
        raise StsPolicyInvalid("the policy is empty")
    fields: dict[str, str] = {}
    mx: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r")
        name, value = _policy_field(line, number)
        if number == 1 and name != "version":
            raise StsPolicyInvalid('line 1: the policy must start with "version: STSv1"')
        if name == "version" and value != "STSv1":
            raise StsPolicyInvalid(f'line {number}: version {value!r} is not "STSv1"')
        if name == "mode" and value not in _MODES:
            raise StsPolicyInvalid(f"line {number}: mode {value!r} is not enforce, testing or none")
        if name == "max_age":
            _check_max_age(value, number)
        if name == "mx":
            mx.append(_mx_pattern(value, number))
        else:
            fields.setdefault(name, value)
    for required in ("mode", "max_age"):
        if required not in fields:
            raise StsPolicyInvalid(f"the {required} field is missing")
    mode = StsMode(fields["mode"])
    if not mx and mode is not StsMode.NONE:
        raise StsPolicyInvalid(f"mode {mode.value} needs at least one mx field")
    return StsPolicy(
        mode=mode,
        mx=tuple(dict.fromkeys(mx)),
        max_age=int(fields["max_age"]),
        policy_id=policy_id,
        fetched_at=fetched_at,
        text=text,
    )


def _policy_field(line: str, number: int) -> tuple[str, str]:
    name, colon, rest = line.partition(":")
    if not colon:
        what = "empty" if not line.strip(_WSP) else f"{line[:40]!r} has no ':'"
        raise StsPolicyInvalid(f"line {number}: {what}; expected 'name: value'")
    if not _FIELD_NAME.fullmatch(name):
        raise StsPolicyInvalid(f"line {number}: {name[:40]!r} is not a valid field name")
    value = rest.strip(_WSP)
    if not _EXT_VALUE.fullmatch(value):
        raise StsPolicyInvalid(f"line {number}: the {name} field has an empty or invalid value")
    return name, value


def _check_max_age(value: str, number: int) -> None:
    if not _MAX_AGE.fullmatch(value):
        raise StsPolicyInvalid(f"line {number}: max_age {value!r} is not 1 to 10 digits")
    if int(value) > MAX_MAX_AGE:
        raise StsPolicyInvalid(
            f"line {number}: max_age {value} exceeds {MAX_MAX_AGE} seconds (one year)"
        )


def _mx_pattern(value: str, number: int) -> str:
    domain = value.removeprefix("*.")
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in domain.split(".")):
        raise StsPolicyInvalid(
            f"line {number}: mx {value!r} is not a host name or '*.' and a host name"
        )
    return value.lower()


def parse_txt_record(text: str) -> str:
    """The policy id from a `_mta-sts` TXT record "v=STSv1; id=...;" (RFC 8461 3.1)."""
    fields = re.split(r"[ \t]*;[ \t]*", text)
    if fields[0] != "v=STSv1":
        raise StsRecordInvalid(f'{text[:60]!r} does not start with "v=STSv1;"')
    if fields[-1] == "":
        fields.pop()  # the optional final delimiter
    policy_id: str | None = None
    for field in fields[1:]:
        match = _TXT_FIELD.fullmatch(field)
        if match is None:
            raise StsRecordInvalid(f"{field[:60]!r} is not a valid field in {text[:80]!r}")
        if match["name"] == "id" and policy_id is None:
            if not _TXT_ID.fullmatch(match["value"]):
                raise StsRecordInvalid(
                    f"id {match['value'][:40]!r} is not 1 to 32 letters and digits"
                )
            policy_id = match["value"]
    if policy_id is None:
        raise StsRecordInvalid(f"no id= field in {text[:80]!r}")
    return policy_id


def select_txt_record(texts: Sequence[str]) -> str | None:
    """The id from a `_mta-sts` RRset: None if no record is an STSv1 record.

    Records that do not start with v=STSv1 are discarded; more than one that does makes
    the domain's intent ambiguous, which the RFC treats as no policy (3.1).
    """
    candidates = [text for text in texts if _TXT_VERSION.match(text)]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise StsRecordInvalid(f"{len(candidates)} TXT records start with v=STSv1, not one")
    return parse_txt_record(candidates[0])


def normalize_domain(domain: str) -> str:
    """The lower-case A-label form of `domain`; "" for an address literal."""
    domain = domain.rstrip(".").lower()
    if domain.startswith("[") or is_ip(domain):
        return ""
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(f"not a valid IDNA name ({exc})") from None
    if not domain or not all(_LABEL.fullmatch(label) for label in domain.split(".")):
        raise ValueError("not a valid domain name")
    return domain
