"""Signing a message as it enters the queue: whose mail, which domain, which keys.

The decision, in order:

1. Mail relayed from outside (Origin.OUTSIDE) is never signed: it is someone
   else's, and signing it would lend our domains to whoever wrote its From:.
2. The domain is the From: field's (RFC 6376 does not require it, DMARC's
   alignment does): exactly one From: field holding exactly one address.
   None, several fields or several addresses (RFC 5322 allows a list, with
   Sender:) are not signed.
3. That domain needs a [dkim] table whose `sign` list holds the origin.
4. Each of its keys adds one DKIM-Signature (an RSA and an Ed25519 one side by
   side, RFC 8463 6), over the headers of its list present in the message,
   the oversigned ones once more.

A signing failure (dkimpy refusing a header it cannot parse, say) never costs
the message: it is queued unsigned, as Exim does without dkim_strict, and
the outcome says why. The receiver then judges it as unsigned mail, which
is what it would be had the signer been down.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dkim  # type: ignore[import-untyped]

from ..errors import AddressError
from ..message import Origin, domain_of
from . import openssl_rsa
from .keys import SigningKey, load_domain_keys
from .settings import DkimDomain

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["SignOutcome", "Signer", "Signing", "author_domain", "load_signer"]

openssl_rsa.install()


class SignOutcome(enum.StrEnum):
    SIGNED = "signed"
    NOT_OURS = "not ours"  # an origin the domain's `sign` list leaves out, or OUTSIDE
    NO_KEY = "no key"  # the From: domain has no [dkim] table
    NO_AUTHOR = "no single author"  # not exactly one From: address
    FAILED = "failed"  # dkimpy refused; queued unsigned


@dataclass(frozen=True, slots=True)
class Signing:
    """What signing did to a message: `signatures` go in front of it (none if unsigned)."""

    outcome: SignOutcome
    signatures: bytes = b""
    domain: str | None = None
    selectors: tuple[str, ...] = ()
    detail: str = ""


class NoSingleAuthor(ValueError):
    """The header section does not name exactly one author address."""


def author_domain(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The domain of the one From: address, in lookup form; NoSingleAuthor otherwise.

    `headers` are (name, value) pairs as dkimpy parsed them, so that the field
    we judge is the field it signs.
    """
    from email.errors import ObsoleteHeaderDefect

    from ..address_field import UnreadableField, read_address_field

    values = [value for name, value in headers if name.lower() == b"from"]
    if len(values) != 1:
        raise NoSingleAuthor(f"{len(values)} From: fields")
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise NoSingleAuthor("From: is not UTF-8") from None
    unfolded = " ".join(text.split())
    # The email package's RFC 5322 parser, not getaddresses: that one splits
    # crafted lists its own way (CVE-2023-27043).
    try:
        parsed = read_address_field("From", unfolded)
    except UnreadableField as exc:  # too long, or one the parser raises on
        raise NoSingleAuthor(str(exc)) from None
    # "a@example.org <b@bank.example>" parses as one address with a defect, and a
    # mail reader may show the other one: what does not parse cleanly is not signed.
    # Obsolete syntax (RFC 5322 4: "John Q. Public <jqp@x>") is still sent and fine.
    if any(not isinstance(d, ObsoleteHeaderDefect) for d in parsed.defects):
        raise NoSingleAuthor("From: does not parse as RFC 5322 says")
    addresses = [a for a in parsed.addresses if a.addr_spec]
    if len(addresses) != 1:
        raise NoSingleAuthor(f"{len(addresses)} addresses in From:")
    address = addresses[0]
    if not address.domain or not address.username:
        raise NoSingleAuthor(f"From: address {address.addr_spec!r} has no domain")
    try:
        return domain_of(f"x@{address.domain}")
    except AddressError as exc:
        raise NoSingleAuthor(str(exc)) from None


@dataclass(frozen=True, slots=True)
class _Domain:
    settings: DkimDomain
    keys: tuple[SigningKey, ...]


class Signer:
    """The [dkim] domains with their keys read; `sign` is pure CPU, safe in a thread."""

    def __init__(
        self, domains: Mapping[str, DkimDomain], keys: Mapping[str, tuple[SigningKey, ...]]
    ) -> None:
        self._domains = {name: _Domain(domains[name], keys[name]) for name in domains}
        self._origins = frozenset(o for d in domains.values() for o in d.origins)

    def may_sign(self, origin: Origin) -> bool:
        """False when no domain signs mail of this origin: `sign` would change nothing."""
        return origin in self._origins

    def sign(self, data: bytes, origin: Origin) -> Signing:
        """A DKIM-Signature per key of the From: domain of `data` (canonical), or none."""
        if not self.may_sign(origin):
            return Signing(SignOutcome.NOT_OURS)
        try:
            message = dkim.DKIM(data)
        # Its parser raises its own error for a bad field, IndexError for a leading
        # continuation line: neither may cost the message (nor may anything else it raises).
        except Exception as exc:
            return Signing(SignOutcome.FAILED, detail=f"unparsable header section: {exc!r}")
        try:
            domain = author_domain(message.headers)
        except NoSingleAuthor as exc:
            return Signing(SignOutcome.NO_AUTHOR, detail=str(exc))
        entry = self._domains.get(domain)
        if entry is None:
            return Signing(SignOutcome.NO_KEY, domain=domain)
        if origin not in entry.settings.origins:
            return Signing(SignOutcome.NOT_OURS, domain=domain)
        settings = entry.settings
        include = _signed_fields(message.headers, settings.headers, settings.oversign)
        canonicalize = (
            settings.header_canonicalization.encode(),
            settings.body_canonicalization.encode(),
        )
        try:
            signatures = [
                message.sign(
                    key.selector.encode(),
                    domain.encode(),
                    key.private,
                    signature_algorithm=key.algorithm.signature_algorithm,
                    canonicalize=canonicalize,
                    include_headers=include,
                )
                for key in entry.keys
            ]
        except Exception as exc:  # as above: the message goes unsigned, never lost
            return Signing(SignOutcome.FAILED, domain=domain, detail=f"{type(exc).__name__}: {exc}")
        selectors = tuple(key.selector for key in entry.keys)
        return Signing(SignOutcome.SIGNED, b"".join(signatures), domain, selectors)


def _signed_fields(
    present: Sequence[tuple[bytes, bytes]], wanted: Sequence[str], oversign: Sequence[str]
) -> list[bytes]:
    """h= : each wanted field as often as it is present, oversigned ones once more.

    dkimpy signs instances of a name bottom-up; one name more than present
    signs the absence of another (RFC 6376 5.4.2), so none can be added.
    """
    counts: dict[bytes, int] = {}
    for name, _value in present:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    extra = {name.lower().encode() for name in oversign}
    fields = []
    for name in dict.fromkeys(n.lower().encode() for n in (*wanted, *oversign)):
        fields += [name] * (counts.get(name, 0) + (name in extra))
    return fields


def load_signer(config: Config) -> Signer:
    """The signer of `config`, every key read; ConfigError names the first bad one."""
    return Signer(config.dkim, load_domain_keys(config))
