"""Downgrade memory: domains whose MX hosts have done TLS, so a vanished STARTTLS stands out.

An attacker on the path can delete STARTTLS from the EHLO reply, and under
`may` that silently sends the mail in clear. With `[tls] remember = true`,
once a domain's MX has done TLS, a later session without STARTTLS is treated
as possible stripping: deferred and logged, until `relaymail tls forget
DOMAIN` or until `remember_for` has passed since TLS was last seen.

A tiny SQLite table beside the queue (a state file, state_db.py); reads are one indexed lookup per
session, writes happen once per domain per hour at most.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..expiring import ExpiringMap
from ..state_db import StateDb

FILENAME = "tls-memory.db"
# Refresh the "last seen with TLS" time at most this often per domain.
_REFRESH = 3600.0
_SCHEMA = "CREATE TABLE IF NOT EXISTS tls_seen (domain TEXT PRIMARY KEY, last_tls REAL NOT NULL);"


class TlsMemory:
    def __init__(self, directory: Path, remember_for: float) -> None:
        self._db = StateDb(directory, FILENAME, _SCHEMA)
        self.remember_for = remember_for
        self._written: ExpiringMap[str, bool] = ExpiringMap()  # written within _REFRESH

    def saw_tls(self, domain: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self._written.get(domain, now):
            return
        with self._db.connection() as conn:
            conn.execute(
                "INSERT INTO tls_seen (domain, last_tls) VALUES (?, ?)"
                " ON CONFLICT (domain) DO UPDATE SET last_tls = excluded.last_tls",
                (domain, now),
            )
        self._written.put(domain, True, now + _REFRESH, now)

    def promised(self, domain: str, now: float | None = None) -> str | None:
        """Why `domain` must not go clear, or None: 'did TLS on <date>'."""
        now = time.time() if now is None else now
        with self._db.connection() as conn:
            row = conn.execute(
                "SELECT last_tls FROM tls_seen WHERE domain = ?", (domain,)
            ).fetchone()
        if row is None or now - row[0] > self.remember_for:
            return None
        return f"its MX did TLS on {time.strftime('%Y-%m-%d %H:%M', time.gmtime(row[0]))}Z"

    def forget(self, domain: str) -> bool:
        self._written.pop(domain)
        with self._db.connection() as conn:
            cursor = conn.execute("DELETE FROM tls_seen WHERE domain = ?", (domain,))
            return cursor.rowcount > 0

    def close(self) -> None:
        self._db.close()
