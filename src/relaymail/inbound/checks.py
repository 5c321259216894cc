"""What the inbound side decides without I/O: relay, trusted clients, parameters, reply codes."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Final

from ..dsn_request import is_xtext, parse_envid, parse_notify, parse_orcpt, parse_ret
from ..errors import AddressError
from ..listener_settings import ListenerSettings
from ..message import check_mailbox

__all__ = [
    "IPAddress",
    "address_problem",
    "mail_param_problem",
    "may_relay",
    "rcpt_param_problem",
    "with_enhanced_code",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 3461's MAIL parameters: each one's parser says what is wrong with a value.
_MAIL_DSN: Final[Mapping[str, Callable[[str | None], object]]] = {
    "RET": parse_ret,
    "ENVID": parse_envid,
}

# RFC 1870: size-value = 1*20DIGIT, ASCII digits only (str.isdigit takes "²").
_SIZE: Final = re.compile(r"[0-9]{1,20}")


def may_relay(
    settings: ListenerSettings,
    domain: str,
    client_ip: IPAddress | None,
    authenticated: bool,
) -> bool:
    """Whether mail for ``domain`` (lookup form, see message.domain_of) may be taken."""
    if authenticated or is_trusted(settings, client_ip):
        return True
    return any(
        domain.endswith(entry) if entry.startswith(".") else domain == entry
        for entry in settings.relay_domains
    )


def is_trusted(settings: ListenerSettings, client_ip: IPAddress | None) -> bool:
    if client_ip is None:
        return False
    if isinstance(client_ip, ipaddress.IPv6Address) and client_ip.ipv4_mapped is not None:
        client_ip = client_ip.ipv4_mapped
    return any(client_ip in network for network in settings.relay_networks)


def mail_param_problem(
    params: Mapping[str, str | None], size_limit: int, *, tls: bool
) -> str | None:
    """The reply refusing MAIL parameters, or None if they are acceptable.

    `tls`: whether the session is encrypted (STARTTLS done, or an implicit-TLS port).
    """
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
        elif keyword in _MAIL_DSN:
            try:
                _MAIL_DSN[keyword](value)
            except ValueError as exc:
                return f"501 5.5.4 {exc}"
        elif keyword == "REQUIRETLS":
            if value is not None:
                return "501 5.5.4 REQUIRETLS takes no value"
            if not tls:
                # RFC 8689 4.1: only over TLS, where it is offered (EHLO after TLS);
                # 5.7.10 is RFC 5248's "Encryption needed".
                return "530 5.7.10 REQUIRETLS needs a TLS session (RFC 8689)"
        elif keyword == "AUTH":
            # RFC 4954 5: the submitter's identity as xtext, "<>" if unknown.
            if value is None or not (value == "<>" or is_xtext(value)):
                return "501 5.5.4 AUTH= must be xtext or <>"
        else:
            return f"555 5.5.4 MAIL FROM parameter {keyword} not recognized"
    return None


def rcpt_param_problem(params: Mapping[str, str | None], *, smtputf8: bool) -> str | None:
    """The reply refusing RCPT parameters, or None if they are acceptable.

    `smtputf8`: MAIL FROM said SMTPUTF8, so ORCPT's "utf-8" type may hold UTF-8 itself.
    """
    for keyword, value in params.items():
        if keyword == "NOTIFY":
            try:
                parse_notify(value)
            except ValueError:
                return "501 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"
        elif keyword == "ORCPT":
            try:
                parse_orcpt(value, smtputf8=smtputf8)
            except ValueError as exc:
                return f"501 5.5.4 {exc}"
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
        check_mailbox(address)  # what sendmail and the pickup check too
    except AddressError:
        return f"553 {detail} Bad {role} address syntax"
    return None


# RFC 2034: once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply
# except the greeting and the HELO/EHLO reply carries an RFC 3463 code. Our own
# replies always do; aiosmtpd's mostly don't ("250 OK", "503 Error: need MAIL
# command", "530 Must issue a STARTTLS command first"), so they get the code
# their reply code stands for in this table.
_DEFAULT_ENHANCED: Final[Mapping[str, str]] = {
    "211": "2.0.0",
    "214": "2.0.0",
    "220": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")


def with_enhanced_code(reply: str) -> str:
    """``reply`` with the default RFC 3463 code for its reply code, unless it has one."""
    code, separator, text = reply[:3], reply[3:4], reply[4:]
    default = _DEFAULT_ENHANCED.get(code)
    if default is None or separator not in (" ", "-") or _HAS_ENHANCED.match(text):
        return reply
    return f"{code}{separator}{default} {text}".rstrip()
