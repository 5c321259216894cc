"""The [dkim."domain"] tables: which keys sign which domain's mail, and how.

Read with the rest of the configuration, without touching the key files:
sendmail and the queue commands load the configuration too, run as users who
may not read the keys, and must not pay for cryptography. `serve` reads the
keys (relaymail.dkim.keys) before it accepts mail and on every reload.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..config_fields import host, list_of, only, path, read_table
from ..config_values import text
from ..errors import ConfigError
from ..message import Origin
from ..resolver import is_ip

__all__ = [
    "DEFAULT_HEADERS",
    "Canonicalization",
    "DkimDomain",
    "DkimKeyFile",
    "parse_dkim",
    "selector",
]


class Canonicalization(enum.StrEnum):
    """RFC 6376 3.4: how header fields and the body are prepared for hashing."""

    SIMPLE = "simple"
    RELAXED = "relaxed"


# RFC 6376 5.4.1's list, the MIME fields, and the list headers (RFC 2369, RFC 8058's
# List-Unsubscribe-Post: the large receivers want one-click unsubscribe signed).
DEFAULT_HEADERS: Final = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID", "In-Reply-To",
    "References", "Sender", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "Content-ID", "Content-Description", "Resent-Date", "Resent-From", "Resent-Sender",
    "Resent-To", "Resent-Cc", "Resent-Message-ID", "List-Id", "List-Help",
    "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe", "List-Post",
    "List-Owner", "List-Archive",
)  # fmt: skip

# Trace and transport fields change on the way, and Bcc must not be revealed
# (RFC 6376 5.4.1); signing them breaks signatures or leaks.
_NEVER_SIGNED: Final = frozenset(
    {"received", "return-path", "dkim-signature", "bcc", "resent-bcc", "comments", "keywords"}
)
_DEFAULT_ORIGINS: Final = frozenset({Origin.LOCAL, Origin.AUTHENTICATED, Origin.RELAY_NETWORKS})
# RFC 5322 2.2 field names: printable ASCII but the colon.
_FIELD_NAME: Final = re.compile(r"[!-9;-~]{1,76}")
# RFC 6376 3.1: a selector is a sub-domain, possibly of several labels.
_SELECTOR: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


@dataclass(frozen=True, slots=True)
class DkimKeyFile:
    """One key a domain signs with: its DNS selector and the private key's file."""

    selector: str
    key_file: Path
    where: str
    """The configuration key that named it, for the errors about the file."""


@dataclass(frozen=True, slots=True)
class DkimDomain:
    """How mail whose From: is in `domain` is signed; one signature per key (RFC 8463 6)."""

    domain: str
    keys: tuple[DkimKeyFile, ...]
    headers: tuple[str, ...] = DEFAULT_HEADERS
    oversign: tuple[str, ...] = ("From",)
    """Signed once more than present, so that no such field can be added (RFC 6376 8.15)."""
    header_canonicalization: Canonicalization = Canonicalization.RELAXED
    body_canonicalization: Canonicalization = Canonicalization.RELAXED
    origins: frozenset[Origin] = _DEFAULT_ORIGINS
    """Whose mail is signed (the `sign` key); never Origin.OUTSIDE."""


def selector(value: Any, key: str) -> str:
    name = text(value, key)
    if len(name) > 253 or not _SELECTOR.fullmatch(name):
        raise ConfigError(key, f"{name!r} is not a selector (DNS labels: letters, digits, '-')")
    return name.lower()


def _field_name(value: Any, key: str) -> str:
    name = text(value, key)
    if not _FIELD_NAME.fullmatch(name):
        raise ConfigError(key, f"{name!r} is not a header field name")
    if name.lower() in _NEVER_SIGNED:
        raise ConfigError(key, f"{name} must not be signed (RFC 6376 5.4.1: it changes in transit)")
    return name


def _canonicalization(value: Any, key: str) -> tuple[Canonicalization, Canonicalization]:
    # RFC 6376 3.5 c=: "header/body"; a lone algorithm is the header's, the body's is simple.
    header, slash, body = text(value, key).lower().partition("/")
    try:
        return Canonicalization(header), Canonicalization(body if slash else "simple")
    except ValueError:
        raise ConfigError(
            key, f"{value!r} is not simple or relaxed, as header/body (e.g. relaxed/relaxed)"
        ) from None


def _origin(value: Any, key: str) -> Origin:
    if value == Origin.OUTSIDE.value:
        # Signing what others relay through us would lend our domain to whoever writes From:.
        raise ConfigError(key, "mail relayed from outside is never signed")
    try:
        return Origin(value)
    except ValueError:
        names = ", ".join(o.value for o in Origin if o is not Origin.OUTSIDE)
        raise ConfigError(key, f"{value!r} is not one of {names}") from None


def _key_table(value: Any, key: str) -> DkimKeyFile:
    if not isinstance(value, dict):
        raise ConfigError(key, 'must be a table like { selector = "s", key_file = "/path" }')
    only(value, key, {"selector", "key_file"})
    for required in ("selector", "key_file"):
        if required not in value:
            raise ConfigError(f"{key}.{required}", "missing")
    name = selector(value["selector"], f"{key}.selector")
    return DkimKeyFile(name, path(value["key_file"], f"{key}.key_file"), f"{key}.key_file")


_FIELDS: Final[Mapping[str, Any]] = {
    "selector": selector,
    "key_file": path,
    "keys": list_of(_key_table),
    "headers": list_of(_field_name, empty=False),
    "oversign": list_of(_field_name),
    "canonicalization": _canonicalization,
    "sign": list_of(_origin),
}


def _domain(name: str, raw: Any) -> DkimDomain:
    where = f'dkim."{name}"'
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    domain = host(name, where)
    if is_ip(domain):
        raise ConfigError(where, "a DKIM domain is a domain name, not an address")
    values = read_table(raw, where, _FIELDS)
    first, key_file = values.get("selector"), values.get("key_file")
    if (first is None) != (key_file is None):
        missing, given = ("selector", "key_file") if first is None else ("key_file", "selector")
        raise ConfigError(f"{where}.{missing}", f"missing ({given} needs it)")
    keys = [DkimKeyFile(first, key_file, f"{where}.key_file")] if first and key_file else []
    keys += [
        dataclasses.replace(k, where=f"{where}.keys[{i}].key_file")
        for i, k in enumerate(values.get("keys", ()))
    ]
    if not keys:
        raise ConfigError(where, "names no key (selector and key_file, or keys)")
    selectors = [k.selector for k in keys]
    for selector in selectors:
        if selectors.count(selector) > 1:
            raise ConfigError(where, f"selector {selector!r} is given twice")
    headers = values.get("headers", DEFAULT_HEADERS)
    if "from" not in (h.lower() for h in headers):
        raise ConfigError(f"{where}.headers", "must include From (RFC 6376 5.4)")
    header_c, body_c = values.get(
        "canonicalization", (Canonicalization.RELAXED, Canonicalization.RELAXED)
    )
    return DkimDomain(
        domain=domain,
        keys=tuple(keys),
        headers=headers,
        oversign=values.get("oversign", ("From",)),
        header_canonicalization=header_c,
        body_canonicalization=body_c,
        origins=frozenset(values.get("sign", _DEFAULT_ORIGINS)),
    )


def parse_dkim(raw: Mapping[str, Any]) -> dict[str, DkimDomain]:
    """The [dkim] section: From: domain -> how its mail is signed."""
    domains: dict[str, DkimDomain] = {}
    for name, table in raw.items():
        entry = _domain(name, table)
        if entry.domain in domains:
            raise ConfigError(f'dkim."{name}"', f"the same domain as another entry: {entry.domain}")
        domains[entry.domain] = entry
    return domains
