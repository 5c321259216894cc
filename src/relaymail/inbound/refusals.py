"""Why a refusal happened, as a bounded reason: for the log line and the rejection metric.

Where relaymail refuses, the code that decides names the reason
(`CommandLoop.explain_refusal`). aiosmtpd's own replies (a 535 to AUTH, a
503 for a command out of order) and the ones whose code says it all are
classified by their RFC 3463 enhanced status, which every refusal carries by
the time it is sent (checks.with_enhanced_code).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ..observe import RejectReason

# By enhanced status (RFC 3463), then the reply code where one status serves several.
_BY_STATUS: Final[Mapping[str, RejectReason]] = MappingProxyType({
    "4.3.0": RejectReason.INTERNAL_ERROR,
    "4.3.1": RejectReason.QUEUE_UNAVAILABLE,
    "4.3.2": RejectReason.SHUTTING_DOWN,
    "4.5.3": RejectReason.TOO_MANY_RECIPIENTS,
    "5.3.4": RejectReason.MESSAGE_TOO_BIG,
    "5.4.6": RejectReason.MAIL_LOOP,
    "5.5.2": RejectReason.SYNTAX,
    "5.5.4": RejectReason.SYNTAX,
    "5.5.6": RejectReason.LINE_TOO_LONG,
    "5.6.7": RejectReason.BAD_ADDRESS,
    "5.7.1": RejectReason.RELAY_DENIED,
    "5.7.8": RejectReason.AUTH_FAILED,
    "5.7.11": RejectReason.TLS_REQUIRED,
})  # fmt: skip
_BY_CODE_AND_STATUS: Final[Mapping[tuple[int, str], RejectReason]] = MappingProxyType({
    (503, "5.5.1"): RejectReason.BAD_SEQUENCE,
    (500, "5.5.1"): RejectReason.UNKNOWN_COMMAND,
    (502, "5.5.1"): RejectReason.UNKNOWN_COMMAND,
    (530, "5.7.0"): RejectReason.AUTH_REQUIRED,
})  # fmt: skip
_REPLY = re.compile(r"([245]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3})\b)?")


@dataclass(frozen=True, slots=True)
class Refusal:
    code: int  # 0 when what was refused got no reply (a failed TLS handshake)
    reason: RejectReason


def classify(reply: str, explained: RejectReason | None) -> Refusal:
    """The code of `reply` and its reason: the one the refusing code gave, else the table's."""
    match = _REPLY.match(reply)
    if match is None:
        return Refusal(0, explained or RejectReason.OTHER)
    code, status = int(match[1]), match[2] or ""
    if explained is not None:
        return Refusal(code, explained)
    if status.startswith("5.1."):  # addressing status (RFC 3463 3.2)
        return Refusal(code, RejectReason.BAD_ADDRESS)
    reason = _BY_CODE_AND_STATUS.get((code, status)) or _BY_STATUS.get(status)
    return Refusal(code, reason or RejectReason.OTHER)
