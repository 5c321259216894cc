"""The TLSRPT record (RFC 8460 3): the `_smtp._tls` TXT lookup and its rua URIs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from ...errors import RelaymailError
from ...resolver import describe_dns_error

# ---------------------------------------------------------------------------
# The TLSRPT record (RFC 8460 3)


class TlsRptLookupError(RelaymailError):
    """The TXT lookup failed for now (timeout, SERVFAIL): try again later."""


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    rua: tuple[str, ...]  # the URIs in the order given, schemes not yet checked


_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_URI_DELIM = re.compile(r"[ \t]*,[ \t]*")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
# RFC 3986 URI: a scheme, then only characters a URI may hold (no space, no `"<>\^{|}`).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_VERSION = "v=TLSRPTv1"


def parse_tlsrpt_record(text: str) -> TlsRptRecord:
    """Parse one record that begins with v=TLSRPTv1; ValueError if it breaks the grammar."""
    fields = _FIELD_DELIM.split(text)
    if fields[0] != _VERSION:
        raise ValueError(f"the record must begin with {_VERSION}")
    if fields[-1] == "" and len(fields) > 1:
        fields.pop()  # the optional final delimiter
    rua: tuple[str, ...] | None = None
    for item in fields[1:]:
        name, equals, value = item.partition("=")
        if name == "rua" and equals:
            if rua is not None:
                raise ValueError("more than one rua field")
            uris = tuple(_URI_DELIM.split(value))
            bad = [u for u in uris if not _URI.fullmatch(u)]
            if bad:
                raise ValueError(f"not a URI: {bad[0]!r}")
            rua = uris
        elif not (equals and _EXT_NAME.fullmatch(name) and _EXT_VALUE.fullmatch(value)):
            raise ValueError(f"malformed field {item!r}")
        # Other well-formed fields are extensions: ignored (RFC 8460 3).
    if rua is None:
        raise ValueError("no rua field")
    return TlsRptRecord(rua)


def select_tlsrpt_record(texts: Iterable[str]) -> TlsRptRecord | None:
    """RFC 8460 3: drop records not beginning with v=TLSRPTv1; exactly one valid one, or none."""
    candidates = [t for t in texts if t.startswith(_VERSION)]
    if len(candidates) != 1:
        return None
    try:
        return parse_tlsrpt_record(candidates[0])
    except ValueError:
        return None


async def lookup_tlsrpt(domain: str, resolver: dns.asyncresolver.Resolver) -> TlsRptRecord | None:
    """The TLSRPT record of `domain`, None if it has no (usable) one.

    Raises TlsRptLookupError when DNS fails in a way that may pass.
    """
    name = f"_smtp._tls.{domain}"
    try:
        answer = await resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        why = describe_dns_error(exc)
        raise TlsRptLookupError(f"TXT lookup for {name} failed: {why}") from exc
    # A record's character-strings are one string, concatenated without spaces.
    # Latin-1 cannot fail; non-ASCII then fails the grammar, as it should.
    return select_tlsrpt_record(b"".join(rdata.strings).decode("latin-1") for rdata in answer)
