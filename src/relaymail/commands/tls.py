"""`relaymail tls forget DOMAIN` and `relaymail tlsrpt show [DOMAIN]`: the TLS state files."""

from __future__ import annotations

import json

from ..config import Config
from .exits import EX_OK


def forget(config: Config, domain: str) -> int:
    """Clear the downgrade memory of `domain` (checked and in lookup form)."""
    from ..tls.memory import TlsMemory

    memory = TlsMemory(config.queue.directory, config.tls.remember_for)
    try:
        forgotten = memory.forget(domain)
    finally:
        memory.close()
    print(f"{domain}: " + ("forgotten" if forgotten else "nothing remembered"))
    return EX_OK


def show_reports(config: Config, domain: str | None) -> int:
    """Print the TLS reports (RFC 8460 JSON) of today so far, for `domain` or every domain."""
    from ..tls.reporting import TlsReportStore, preview_reports

    name = config.delivery.helo_name
    store = TlsReportStore(config.queue.directory)
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
