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
from dataclasses import dataclass
from typing import Final

__all__ = [
    "POSTMASTER",
    "SmtpPath",
    "parse_esmtp_params",
    "parse_path",
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
# <root>: a local part alone, which only a recipient with local names may be.
_LOCAL_NAME: Final = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*|{_QUOTED})>{_PARAMS}", re.DOTALL)

POSTMASTER: Final = "postmaster"
"""The address of ``RCPT TO:<Postmaster>`` (RFC 5321 4.5.1), which has no domain."""


@dataclass(frozen=True, slots=True)
class SmtpPath:
    """A parsed reverse- or forward-path: "" for the null path, POSTMASTER for <postmaster>,
    a bare name (no "@") for <name>."""

    address: str
    parameters: str = ""


def parse_path(text: str) -> SmtpPath | None:
    """``text`` after "FROM:" or "TO:"; None if it is not a path.

    A source route (``<@a.example:user@b.example>``) is dropped, as RFC 5321
    Appendix C asks; a path without brackets is taken, as Postfix does.
    """
    for pattern in (_BRACKETED, _POSTMASTER, _LOCAL_NAME, _BARE):
        match = pattern.fullmatch(text)
        if match is not None:
            address = match[1] or ""
            if pattern is _POSTMASTER:
                address = POSTMASTER
            return SmtpPath(address, match[2] or "")
    return None


_ESMTP_PARAM: Final = re.compile(rf"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([!-<>-~{_U8}]+))?")


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
