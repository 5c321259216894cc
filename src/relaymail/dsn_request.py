"""What a sender asks of delivery status notifications (RFC 3461), typed and kept as sent.

MAIL carries RET (the whole message or its headers in a failure report) and
ENVID (the sender's own name for the transaction); each RCPT carries NOTIFY
(when to report) and ORCPT (the address as the sender first wrote it). They
travel with the envelope, into the queue, and on to a next hop that offers
DSN.

xtext (ENVID and ORCPT's address) is kept octet for octet as received and
sent on as it came; it is decoded only for people (`display`), since a
decoded value can hold anything, line breaks included.

Pure, standard library only: message.py's Envelope holds a DsnRequest and
sendmail's start-up imports that.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

__all__ = [
    "NO_DSN",
    "NO_RECIPIENT_DSN",
    "DsnRequest",
    "Notify",
    "Orcpt",
    "RecipientDsn",
    "Ret",
    "is_xtext",
    "orcpt_for",
    "parse_envid",
    "parse_notify",
    "parse_orcpt",
    "parse_ret",
    "xtext_decode",
    "xtext_display",
    "xtext_encode",
]

# RFC 3461 4: xtext is printable ASCII but "+" and "=", which are "+" and two
# upper-case hex digits.
_XTEXT: Final = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")
# RFC 6533 3.3: for the "utf-8" address type, "\x{HEX}" instead of "+HH", and
# with SMTPUTF8 the characters themselves (utf-8-addr-unitext).
_UTF8_ADDR: Final = re.compile(r"(?:[!-*,-<>-\[\]-~]|\\x\{[0-9A-F]{1,6}\})+")
# The same class as _UTF8_ADDR and every scalar value above ASCII, written as what it
# leaves out: the ranges up to U+10FFFF take re 5 ms to compile at every start-up.
_UTF8_ADDR_UNITEXT: Final = re.compile(
    r"(?:[^\x00-\x20+=\\\x7f\ud800-\udfff]|\\x\{[0-9A-F]{1,6}\})+"
)
_ADDR_TYPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_HEX_PLUS: Final = re.compile(r"\+([0-9A-F]{2})")
_HEX_BRACE: Final = re.compile(r"\\x\{([0-9A-F]{1,6})\}")
MAX_ENVID: Final = 100  # RFC 3461 4.4
MAX_ORCPT: Final = 500  # RFC 3461 4.2: the whole parameter value


class Notify(enum.Flag):
    """NOTIFY= of one recipient: NEVER is the empty set; absent is None, not NEVER."""

    NEVER = 0
    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    DELAY = enum.auto()

    @property
    def wire(self) -> str:
        """The value as sent on: NEVER, or the keywords in RFC order."""
        words = [m.name or "" for m in (Notify.SUCCESS, Notify.FAILURE, Notify.DELAY) if m in self]
        return ",".join(words) or "NEVER"


class Ret(enum.StrEnum):
    """RET= of MAIL: what a failure report returns of the message."""

    FULL = "FULL"
    HDRS = "HDRS"


class Orcpt(NamedTuple):
    """ORCPT= of one recipient: the address type and the address in xtext, both as received."""

    addr_type: str
    xtext: str

    @property
    def wire(self) -> str:
        return f"{self.addr_type};{self.xtext}"

    @classmethod
    def from_wire(cls, text: str) -> Orcpt:
        """An ORCPT stored in its `wire` form (checked when it was received)."""
        addr_type, _, xtext = text.partition(";")
        return cls(addr_type, xtext)

    @property
    def is_utf8(self) -> bool:
        return self.addr_type.lower() == "utf-8"

    def in_ascii(self) -> Orcpt:
        """The same ORCPT for a transaction without SMTPUTF8: RFC 6533 3.3's escapes for
        the characters that an SMTPUTF8 client may send as they are."""
        if self.xtext.isascii():
            return self
        return Orcpt(self.addr_type, "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}"
                                             for c in self.xtext))  # fmt: skip

    @property
    def display(self) -> str:
        """`addr-type;address` decoded, for a report or a listing; the xtext itself when the
        decoded address holds a control character (it would break the line it is shown on)."""
        return f"{self.addr_type};{xtext_display(self.xtext, utf8_type=self.is_utf8)}"


class RecipientDsn(NamedTuple):
    """The RFC 3461 parameters of one RCPT; both None when it gave none."""

    notify: Notify | None = None
    orcpt: Orcpt | None = None

    @classmethod
    def from_stored(cls, notify: str | None, orcpt: str | None) -> RecipientDsn:
        """The parameters as a queue stores them: their `wire` forms, NULL when absent."""
        if notify is None and orcpt is None:
            return NO_RECIPIENT_DSN
        return cls(
            None if notify is None else parse_notify(notify),
            None if orcpt is None else Orcpt.from_wire(orcpt),
        )

    @property
    def wire(self) -> str:
        """The parameters as received, each with its leading space."""
        return self.on_wire(smtputf8=True)

    def on_wire(self, *, smtputf8: bool) -> str:
        """The parameters for a next hop's RCPT, in a transaction with or without SMTPUTF8."""
        text = f" NOTIFY={self.notify.wire}" if self.notify is not None else ""
        if self.orcpt is None:
            return text
        orcpt = self.orcpt if smtputf8 else self.orcpt.in_ascii()
        return f"{text} ORCPT={orcpt.wire}"

    def wants(self, event: Notify) -> bool:
        """Whether a DSN for `event` goes out; without NOTIFY, failures and delays do
        (RFC 3461 4.1 leaves the default to us: relaymail's warnings as before)."""
        if self.notify is None:
            return event is not Notify.SUCCESS
        return event in self.notify


NO_RECIPIENT_DSN: Final = RecipientDsn()
_NO_RECIPIENTS: Final[Mapping[str, RecipientDsn]] = MappingProxyType({})


class DsnRequest(NamedTuple):
    """A message's RFC 3461 parameters: RET and ENVID of MAIL, and each recipient's.

    `recipients` holds only the recipients that gave a parameter, by address as queued.
    """

    ret: Ret | None = None
    envid: str | None = None
    recipients: Mapping[str, RecipientDsn] = _NO_RECIPIENTS

    def of(self, recipient: str) -> RecipientDsn:
        return self.recipients.get(recipient, NO_RECIPIENT_DSN)

    @property
    def mail_wire(self) -> str:
        """The parameters for a next hop's MAIL, each with its leading space."""
        text = f" RET={self.ret.value}" if self.ret is not None else ""
        return text + (f" ENVID={self.envid}" if self.envid is not None else "")

    @property
    def is_empty(self) -> bool:
        return self.ret is None and self.envid is None and not self.recipients

    def expanded(self, expansions: Iterable[tuple[str, tuple[str, ...]]]) -> DsnRequest:
        """The request after aliases replaced recipients: (original, what it became) each.

        A replaced recipient's NOTIFY goes to every address it became, with its ORCPT
        or, when it had none, one naming it (RFC 3461 4.2 allows a relay to add it): a
        report about the new address then says which one the sender wrote.
        """
        pairs: dict[str, RecipientDsn] = {}
        for original, recipients in expansions:
            given = self.of(original)
            if recipients != (original,) and given.orcpt is None:
                given = given._replace(orcpt=orcpt_for(original))
            for address in recipients:
                pairs.setdefault(address, given)
        return self.with_recipients(pairs.items())

    def with_recipients(self, pairs: Iterable[tuple[str, RecipientDsn]]) -> DsnRequest:
        """The same request for another set of recipients (the ones without parameters left out)."""
        kept = {address: dsn for address, dsn in pairs if dsn != NO_RECIPIENT_DSN}
        return self._replace(recipients=MappingProxyType(kept) if kept else _NO_RECIPIENTS)


NO_DSN: Final = DsnRequest()


def is_xtext(text: str) -> bool:
    return _XTEXT.fullmatch(text) is not None


def parse_notify(value: str | None) -> Notify:
    """NOTIFY's value, any case; ValueError unless NEVER alone or SUCCESS/FAILURE/DELAY."""
    words = (value or "").upper().split(",")
    if words == ["NEVER"]:
        return Notify.NEVER
    notify = Notify.NEVER
    for word in words:
        if word not in ("SUCCESS", "FAILURE", "DELAY"):
            raise ValueError(f"{word!r} is not a NOTIFY keyword")
        notify |= Notify[word]
    return notify


def parse_ret(value: str | None) -> Ret:
    try:
        return Ret((value or "").upper())
    except ValueError:
        raise ValueError("RET must be FULL or HDRS") from None


def parse_envid(value: str | None) -> str:
    """ENVID's value, unchanged; ValueError unless xtext of at most 100 characters."""
    if value is None or len(value) > MAX_ENVID or not _XTEXT.fullmatch(value):
        raise ValueError("ENVID must be xtext of at most 100 characters")
    return value


def parse_orcpt(value: str | None, *, smtputf8: bool) -> Orcpt:
    """ORCPT's value as addr-type and xtext, unchanged; ValueError when malformed.

    The "utf-8" type takes RFC 6533's escapes, and its characters themselves in an
    SMTPUTF8 transaction; every other type takes xtext.
    """
    if value is None or len(value) > MAX_ORCPT:
        raise ValueError("ORCPT must be addr-type;address of at most 500 characters")
    addr_type, semicolon, address = value.partition(";")
    if not semicolon or not _ADDR_TYPE.fullmatch(addr_type):
        raise ValueError("ORCPT must be addr-type;address")
    if addr_type.lower() == "utf-8":
        grammar = _UTF8_ADDR_UNITEXT if smtputf8 else _UTF8_ADDR
    else:
        grammar = _XTEXT
    if not grammar.fullmatch(address):
        raise ValueError("ORCPT's address must be xtext")
    return Orcpt(addr_type, address)


def xtext_decode(text: str, *, utf8_type: bool = False) -> str:
    """The characters `text` (xtext, or RFC 6533's utf-8-addr form) stands for."""
    if utf8_type:
        return _HEX_BRACE.sub(lambda m: _char(int(m[1], 16)), text)
    return _HEX_PLUS.sub(lambda m: chr(int(m[1], 16)), text)


def xtext_display(text: str, *, utf8_type: bool = False) -> str:
    """`text` decoded for a person; as it is when the decoded form holds a control character
    or a space (it would break, or change the meaning of, the line it is shown on), or,
    outside the "utf-8" type, anything but ASCII (xtext escapes octets, not characters)."""
    decoded = xtext_decode(text, utf8_type=utf8_type)
    readable = decoded.isprintable() and " " not in decoded
    return decoded if readable and (utf8_type or decoded.isascii()) else text


def orcpt_for(address: str) -> Orcpt:
    """The ORCPT naming `address`: "rfc822" in xtext, or RFC 6533's "utf-8" with \\x{HEX}."""
    if address.isascii():
        return Orcpt("rfc822", xtext_encode(address))
    return Orcpt(
        "utf-8",
        "".join(
            c if c.isascii() and "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}"
            for c in address
        ),
    )


def xtext_encode(text: str) -> str:
    """`text` (ASCII) as xtext: "+", "=" and every octet outside "!".."~" hex-escaped."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else f"+{b:02X}" for c in text for b in c.encode()
    )


def _char(code: int) -> str:
    return chr(code) if code <= 0x10FFFF else "\ufffd"
