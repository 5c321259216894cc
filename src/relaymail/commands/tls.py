"""`relaymail tls show|forget DOMAIN` and `relaymail tlsrpt show [DOMAIN]`: the TLS state.

They open the state where `[queue]` says (state_db.py): the files beside a SQLite queue,
or the tables of the cluster's PostgreSQL database, so any node shows and forgets for all.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..config import Config
from ..tls.downgrade import TlsLevel
from .exits import EX_OK


def forget(config: Config, domain: str) -> int:
    """Clear the downgrade memory of `domain` (checked and in lookup form)."""
    from ..tls.memory import TlsMemory

    memory = TlsMemory(config.queue, config.tls.remember_for)
    try:
        forgotten = memory.forget(domain)
    finally:
        memory.close()
    print(f"{domain}: " + ("forgotten" if forgotten else "nothing remembered"))
    return EX_OK


def show(config: Config, domain: str, *, as_json: bool) -> int:
    """Print what the downgrade memory holds for `domain`, since when, until when."""
    from ..tls.memory import TlsMemory

    memory = TlsMemory(config.queue, config.tls.remember_for)
    try:
        found = memory.recall(domain)
    finally:
        memory.close()
    if as_json:
        shown: dict[str, Any] = {"domain": domain, "level": None}
        if found is not None:
            shown |= {
                "level": found.level.name.lower(),
                "since": _iso(found.since),
                "last_seen": _iso(found.last_seen),
                "expires": _iso(found.expires(config.tls.remember_for)),
                "enforced": config.tls.remembers(domain),
            }
        print(json.dumps(shown))
    elif found is None:
        print(f"{domain}: nothing remembered")
    else:
        enforced = "" if config.tls.remembers(domain) else " (not enforced: [tls] remember)"
        print(
            f"{domain}: {_SHOWN[found.level]} since {_iso(found.since)}, last seen "
            f"{_iso(found.last_seen)}, remembered until "
            f"{_iso(found.expires(config.tls.remember_for))}{enforced}"
        )
    return EX_OK


_SHOWN = {TlsLevel.TLS: "TLS (any certificate)", TlsLevel.VERIFIED: "verified TLS"}


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def show_reports(config: Config, domain: str | None) -> int:
    """Print the TLS reports (RFC 8460 JSON) of today so far, for `domain` or every domain."""
    from ..tls.reporting import TlsReportStore, preview_reports

    name = config.delivery.helo_name
    store = TlsReportStore(config.queue)
    try:
        reports = preview_reports(
            store,
            domain=domain,
            organization_name=config.tls.report_organization or name,
            contact_info=config.tls.report_contact or f"postmaster@{name}",
        )
    finally:
        store.close()
    print(json.dumps(reports, indent=2))
    return EX_OK
