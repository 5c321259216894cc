"""The arguments of MAIL and RCPT: paths (RFC 5321 4.1.2) and ESMTP parameters, pure.

One grammar for every listener, written out instead of borrowed: aiosmtpd
hands paths to the e-mail header parser of the standard library, which is
RFC 5322 (comments, folding) rather than RFC 5321, and which raises
IndexError on a truncated "<". Arguments arrive decoded as UTF-8 with
surrogateescape, so an undecodable octet is a lone surrogate here: the
patterns admit only real characters, and such input is a syntax error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .errors import AddressError
from .message import check_address, domain_of

__all__ = [
    "POSTMASTER",
    "SmtpPath",
    "address_problem",
    "mail_param_problem",
    "parse_esmtp_params",
    "parse_path",
    "rcpt_param_problem",
]

# RFC 6531 3.3: UTF8-non-ascii wherever atext, qtext or a label allows a
# character; [\ud800-\udfff] is what surrogateescape makes of invalid UTF-8.
_U8: Final = "\u0080-\ud7ff\ue000-\U0010ffff"
_ATOM: Final = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U8}]+"
_QUOTED: Final = rf'"(?:[ !#-\[\]-~{_U8}]|\\[ -~])*"'
# Labels as mail software meets them: underscores and leading hyphens exist
# in the wild and are the next hop's business, not a syntax error here.
_LABEL: Final = rf"[A-Za-z0-9_\-{_U8}]+"
_DOMAIN: Final = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL: Final = r"\[[!-Z^-~]+\]"
_MAILBOX: Final = rf"(?:{_ATOM}(?:\.{_ATOM})*|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
_ROUTE: Final = rf"@{_DOMAIN}(?:,[ \t]*@{_DOMAIN})*:"
_PARAMS: Final = r"(?:[ \t]+(.*))?"

_BRACKETED: Final = re.compile(rf"<(?:{_ROUTE})?({_MAILBOX})?>{_PARAMS}", re.DOTALL)
_BARE: Final = re.compile(rf"({_MAILBOX}){_PARAMS}", re.DOTALL)
_POSTMASTER: Final = re.compile(rf"<(postmaster)>{_PARAMS}", re.IGNORECASE | re.DOTALL)

POSTMASTER: Final = "postmaster"
"""The address of ``RCPT TO:<Postmaster>`` (RFC 5321 4.5.1), which has no domain."""


@dataclass(frozen=True, slots=True)
class SmtpPath:
    """A parsed reverse- or forward-path: "" for the null path, POSTMASTER for <postmaster>."""

    address: str
    parameters: str = ""


def parse_path(text: str) -> SmtpPath | None:
    """``text`` after "FROM:" or "TO:"; None if it is not a path.

    A source route (``<@a.example:user@b.example>``) is dropped, as RFC 5321
    Appendix C asks; a path without brackets is taken, as Postfix does.
    """
    for pattern in (_BRACKETED, _POSTMASTER, _BARE):
        match = pattern.fullmatch(text)
        if match is not None:
            address = match[1] or ""
            if pattern is _POSTMASTER:
                address = POSTMASTER
            return SmtpPath(address, match[2] or "")
    return None


_ESMTP_PARAM: Final = re.compile(rf"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([!-<>-~{_U8}]+))?")
# RFC 3461 4: xtext is printable ASCII except "+" and "=", which are hex-escaped.
_XTEXT: Final = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")
_ORCPT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;\S+")
_NOTIFY: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# RFC 1870: size-value = 1*20DIGIT, ASCII digits only (str.isdigit takes "²").
_SIZE: Final = re.compile(r"[0-9]{1,20}")


def parse_esmtp_params(text: str) -> dict[str, str | None] | None:
    """``KEYWORD[=value]`` words to {KEYWORD: value}; values keep their case. None if malformed."""
    params: dict[str, str | None] = {}
    for word in text.split():
        match = _ESMTP_PARAM.fullmatch(word)
        if match is None:
            return None
        keyword = match[1].upper()
        if keyword in params:
            return None
        params[keyword] = match[2]
    return params


def mail_param_problem(params: Mapping[str, str | None], size_limit: int) -> str | None:
    """The reply refusing MAIL parameters, or None if they are acceptable."""
    for keyword, value in params.items():
        if keyword == "SIZE":
            if value is None or not _SIZE.fullmatch(value):
                return "501 5.5.4 SIZE takes a number of octets"
            if int(value) > size_limit:
                return "552 5.3.4 Message size exceeds fixed maximum message size"
        elif keyword == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                return "501 5.5.4 BODY must be 7BIT or 8BITMIME"
        elif keyword == "SMTPUTF8":
            if value is not None:
                return "501 5.5.4 SMTPUTF8 takes no value"
        elif keyword == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                return "501 5.5.4 RET must be FULL or HDRS"
        elif keyword == "ENVID":
            if value is None or len(value) > 100 or not _XTEXT.fullmatch(value):
                return "501 5.5.4 ENVID must be xtext of at most 100 characters"
        elif keyword == "AUTH":
            # RFC 4954 5: the submitter's identity as xtext, "<>" if unknown.
            if value is None or not (value == "<>" or _XTEXT.fullmatch(value)):
                return "501 5.5.4 AUTH= must be xtext or <>"
        else:
            return f"555 5.5.4 MAIL FROM parameter {keyword} not recognized"
    return None


def rcpt_param_problem(params: Mapping[str, str | None]) -> str | None:
    """The reply refusing RCPT parameters, or None if they are acceptable."""
    for keyword, value in params.items():
        if keyword == "NOTIFY":
            words = set((value or "").upper().split(","))
            if not (words == {"NEVER"} or (words and words <= _NOTIFY)):
                return "501 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"
        elif keyword == "ORCPT":
            if value is None or len(value) > 500 or not _ORCPT.fullmatch(value):
                return "501 5.5.4 ORCPT must be addr-type;address"
        else:
            return f"555 5.5.4 RCPT TO parameter {keyword} not recognized"
    return None


def address_problem(address: str, *, smtputf8: bool, role: str) -> str | None:
    """Why ``address`` cannot go into our envelope, as a reply; None if it can."""
    detail = "5.1.7" if role == "sender" else "5.1.3"
    if not address.isascii() and not smtputf8:
        # RFC 6531 3.4: non-ASCII addresses only in an SMTPUTF8 transaction.
        return "553 5.6.7 Non-ASCII address needs MAIL FROM with SMTPUTF8"
    try:
        check_address(address)
        domain_of(address)
    except AddressError:
        return f"553 {detail} Bad {role} address syntax"
    return None
