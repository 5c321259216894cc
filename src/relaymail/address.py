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
