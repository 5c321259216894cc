"""`relaymail tls show|forget DOMAIN` and `relaymail tlsrpt show [DOMAIN]`: the TLS state.

They open the state where `[queue]` says (state_db.py): the files beside a SQLite queue,
or the tables of the cluster's PostgreSQL database, so any node shows and forgets for all.
They are run as root while the daemon runs as `[server] user`, so they never create a
SQLite file (none there: nothing remembered), and `show` writes nothing (StateAccess).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import Config
from ..state_db import StateAccess, StateDenied, StateMissing
from ..tls.downgrade import Remembered, TlsLevel
from .exits import EX_NOPERM, EX_OK

if TYPE_CHECKING:
    from ..tls.memory import TlsMemory

_T = TypeVar("_T")


def forget(config: Config, domain: str) -> int:
    """Clear the downgrade memory of `domain` (checked and in lookup form)."""
    try:
        forgotten = _with_memory(config, StateAccess.WRITE, lambda m: m.forget(domain))
    except StateDenied as exc:
        return _denied(exc)
    print(f"{domain}: " + ("forgotten" if forgotten else "nothing remembered"))
    return EX_OK


def show(config: Config, domain: str, *, as_json: bool) -> int:
    """Print what the downgrade memory holds for `domain`, since when, until when."""
    try:
        found = _with_memory(config, StateAccess.READ, lambda m: m.recall(domain))
    except StateDenied as exc:
        return _denied(exc)
    if as_json:
        print(json.dumps(_shown(config, domain, found)))
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


def _shown(config: Config, domain: str, found: Remembered | None) -> dict[str, Any]:
    """The README's JSON: every key always there, the times null when nothing is remembered;
    `enforced` is whether `[tls] remember` covers the domain, remembered or not."""
    enforced = config.tls.remembers(domain)
    if found is None:
        return {"domain": domain, "level": None, "since": None, "last_seen": None,
                "expires": None, "enforced": enforced}  # fmt: skip
    return {
        "domain": domain,
        "level": found.level.name.lower(),
        "since": _iso(found.since),
        "last_seen": _iso(found.last_seen),
        "expires": _iso(found.expires(config.tls.remember_for)),
        "enforced": enforced,
    }


def _with_memory(config: Config, access: StateAccess, use: Callable[[TlsMemory], _T]) -> _T | None:
    """What `use` makes of the downgrade memory opened for `access`; None when there is
    none yet (nothing was ever remembered). StateDenied: this user may not open it."""
    from ..tls.memory import TlsMemory

    try:
        memory = TlsMemory(config.queue, config.tls.remember_for, access)
    except StateMissing:
        return None
    try:
        return use(memory)
    finally:
        memory.close()


def _denied(exc: StateDenied) -> int:
    print(f"relaymail: {exc}", file=sys.stderr)
    return EX_NOPERM


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def show_reports(config: Config, domain: str | None) -> int:
    """Print the TLS reports (RFC 8460 JSON) of today so far, for `domain` or every domain."""
    from ..state_db import open_state
    from ..tls.reporting import TlsReportStore, preview_reports
    from ..tls.reporting.store import SCHEMA

    # The store opens its file as the daemon does; a look first, through the reader's
    # checks, keeps it from creating one (none there: nothing counted yet).
    try:
        open_state(config.queue, SCHEMA, StateAccess.READ).close()
    except StateMissing:
        print(json.dumps([], indent=2))
        return EX_OK
    except StateDenied as exc:
        return _denied(exc)
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
