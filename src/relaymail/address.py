"""Envelope addresses as `sendmail` and the daemon check them: qualified, and safe in a path.

Split from message.py (which re-exports both) so that `sendmail` checks its
addresses without loading the envelope type's imports: it runs once per cron
job and per PHP mail(), and start-up is most of its cost (config_file.py).
"""

from __future__ import annotations

from .errors import AddressError
from .headers import has_control_characters


def qualify(name: str, domain: str) -> str:
    """`name@domain` for a bare name (Postfix's myorigin); anything else, "" too, as it is."""
    return f"{name}@{domain}" if name and "@" not in name else name


def check_address(address: str) -> None:
    """Reject what cannot go into MAIL FROM / RCPT TO without quoting trouble."""
    if "@" not in address:
        raise AddressError(f"{address!r}: no domain (expected local@domain)")
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise AddressError(f"{address!r}: empty local part or domain")
    # Besides what ends or splits a path, every control: an address also goes into
    # header fields (From:, To: of a DSN), where they are line breaks to some readers.
    if "<" in address or ">" in address or " " in address or has_control_characters(address):
        raise AddressError(f"{address!r}: contains characters not allowed in a path")
    if len(address.encode()) > 254:
        raise AddressError(f"{address!r}: longer than 254 octets (RFC 5321 4.5.3.1.3)")


def check_envelope(sender: str, recipients: tuple[str, ...]) -> None:
    """Reject an envelope without recipients or with an address check_address refuses."""
    if sender:
        check_address(sender)
    if not recipients:
        raise AddressError("an envelope needs at least one recipient")
    for rcpt in recipients:
        check_address(rcpt)


def domain_of(address: str) -> str:
    """The recipient domain in its lookup form: lower-case, IDNA A-labels."""
    domain = address.rpartition("@")[2].rstrip(".").lower()
    if domain.startswith("[") and domain.endswith("]"):
        return domain
    if domain.isascii():
        return domain
    import idna  # only international domains pay for its tables (sendmail starts fast)

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"{address!r}: invalid international domain ({exc})") from exc


def domain_key(address: str) -> str:
    """domain_of, or the domain as written when that refuses it: a key for the scheduler's
    bookkeeping (slots, destinations), which must hold whatever is queued; delivery
    bounces such an address itself (DeliveryEngine.deliver)."""
    try:
        return domain_of(address)
    except AddressError:
        return address.rpartition("@")[2].lower()


# RFC 5321 4.1.2 as inbound/grammar.py has it, without re (the module doc says why);
# test_regex_free_checks.py holds the two to agreeing.
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_ATEXT = frozenset(_ALNUM + "!#$%&'*+/=?^_`{|}~-")
_LABEL = frozenset(_ALNUM + "_-")


def _wide(char: str) -> bool:
    """UTF8-non-ascii (RFC 6531 3.3): a real character above ASCII, no lone surrogate."""
    return char >= "\x80" and not "\ud800" <= char <= "\udfff"


def _dot_atom(text: str, chars: frozenset[str]) -> bool:
    words = text.split(".")
    if not all(words):
        return False
    if text.isascii():  # most addresses: one set operation in C
        return chars.issuperset(text.replace(".", ""))
    return all(c in chars or _wide(c) for w in words for c in w)


def _quoted(local: str) -> bool:
    if len(local) < 2 or local[0] != '"' or local[-1] != '"':
        return False
    inside, escaped = local[1:-1], False
    for char in inside:
        if escaped:
            if not " " <= char <= "~":
                return False
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"' or not (" " <= char <= "~" or _wide(char)):
            return False
    return not escaped


def _literal(domain: str) -> bool:
    inside = domain[1:-1]
    return (
        len(domain) > 2 and domain[0] == "[" and domain[-1] == "]"
        and all("!" <= c <= "Z" or "^" <= c <= "~" for c in inside)
    )  # fmt: skip


def check_mailbox(address: str) -> None:
    """check_address, and what SMTP's RCPT TO would refuse besides (inbound/grammar.py,
    inbound/checks.address_problem): a local part that is neither dot-atom nor quoted
    string ("a@b@c", "x..y@c"), a domain that is no name or address literal ("c..d",
    "a,b@c"), an international domain IDNA refuses. For the ways in that have no SMTP
    grammar in front (sendmail, the pickup): what they queue, a next hop can take."""
    check_address(address)
    local, _, domain = address.rpartition("@")
    if not (_dot_atom(local, _ATEXT) or _quoted(local)):
        raise AddressError(f"{address!r}: the local part is neither a dot-atom nor quoted")
    name = domain[:-1] if domain.endswith(".") else domain
    if _literal(domain):
        if not _ip_literal(domain[1:-1]):
            raise AddressError(f"{address!r}: {domain!r} holds no IPv4 or IPv6 address")
    elif not _dot_atom(name, _LABEL):
        raise AddressError(f"{address!r}: {domain!r} is not a domain name or address literal")
    elif not name.isascii() and not _u_labels(name.lower()):
        # UTS46 would map it (a zero-width space dropped, fullwidth letters narrowed, "。"
        # a dot): checked as the mapped name, it would leave as typed, another name.
        raise AddressError(f"{address!r}: {domain!r} is not a domain name as IDNA2008 writes one")
    domain_of(address)


def _u_labels(name: str) -> bool:
    """Whether `name` is IDNA2008 U-labels as they are (RFC 5891), nothing to map."""
    import idna  # only international domains pay for its tables (sendmail starts fast)

    if any(dot in name for dot in "\u3002\uff0e\uff61"):  # dots only UTS46 takes for "."
        return False
    try:
        idna.encode(name, uts46=False)
    except idna.IDNAError:
        return False
    return True


def _ip_literal(inside: str) -> bool:
    """An IPv4 address, or "IPv6:" and an IPv6 address (RFC 5321 4.1.3; no other tag is
    registered, and Postfix takes no other either)."""
    import ipaddress  # only an address literal pays for it (sendmail starts fast)

    tag, colon, rest = inside.partition(":")
    try:
        if colon:
            # No zone ("%eth0"): ipaddress takes one, RFC 5321's IPv6-addr has none.
            return tag.lower() == "ipv6" and "%" not in rest and bool(ipaddress.IPv6Address(rest))
        return ipaddress.IPv4Address(inside) is not None
    except ValueError:
        return False


def check_submission(sender: str, recipients: tuple[str, ...]) -> None:
    """check_envelope with check_mailbox for every address: an envelope from a way in
    without SMTP's grammar in front (sendmail, the maildrop's pickup)."""
    check_envelope(sender, recipients)
    for address in (sender, *recipients) if sender else recipients:
        check_mailbox(address)
