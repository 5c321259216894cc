"""Downgrade memory: the highest TLS level each domain's MX hosts have shown, so a drop stands out.

An attacker on the path can delete STARTTLS from the EHLO reply, answer it with a forged
454, or present a certificate of their own; under `may` (or `encrypt`, for the
certificate) each of those silently costs the mail its protection. With `[tls] remember
= true`, every session records the level it reached (clear < TLS < verified TLS), a level
that goes up is recorded at once, and a later session below the remembered level is
deferred and explained (tls/downgrade.py), until `relaymail tls forget DOMAIN` or until
`remember_for` has passed since the level was last seen.

One small table (state_db.py): a SQLite file beside the queue, or with `[queue] backend =
"postgresql"` a table of the queue's database, so a level learnt by one node is enforced
by all. Reads are one indexed lookup per session; the "last seen" time is written at
most once an hour per domain, a rise in level at once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..expiring import ExpiringMap
from ..state_db import StateAccess, StateDatabase, StateSchema, StateUnavailable, open_state
from .downgrade import Remembered, TlsLevel

if TYPE_CHECKING:
    from ..config_queue import QueueSettings

log = logging.getLogger("relaymail.tls")

FILENAME = "tls-memory.db"
# Refresh the "last seen" time at most this often per domain.
_REFRESH = 3600.0
SCHEMA = StateSchema(
    FILENAME,
    """
    CREATE TABLE IF NOT EXISTS tls_level (
        domain    TEXT PRIMARY KEY,
        level     INTEGER NOT NULL,  -- TlsLevel: 1 TLS, 2 verified
        since     {REAL} NOT NULL,
        last_seen {REAL} NOT NULL
    );
    """,
    version=2,
    upgrades={
        # Version 1 knew only "did TLS" and when last: that is level TLS, since then.
        2: """
        CREATE TABLE IF NOT EXISTS tls_seen (domain TEXT PRIMARY KEY, last_tls {REAL} NOT NULL);
        INSERT INTO tls_level (domain, level, since, last_seen)
            SELECT domain, 1, last_tls, last_tls FROM tls_seen WHERE true
            ON CONFLICT (domain) DO NOTHING;
        DROP TABLE tls_seen;
        """
    },
)

# One statement, so two nodes recording at once cannot lose a rise: the level only goes
# up, unless the memory had expired, and then what is seen now starts it afresh.
_RECORD = """
INSERT INTO tls_level (domain, level, since, last_seen) VALUES (?, ?, ?, ?)
ON CONFLICT (domain) DO UPDATE SET
    level = CASE WHEN tls_level.last_seen < ? OR excluded.level > tls_level.level
                 THEN excluded.level ELSE tls_level.level END,
    since = CASE WHEN tls_level.last_seen < ? OR excluded.level > tls_level.level
                 THEN excluded.since ELSE tls_level.since END,
    last_seen = CASE WHEN tls_level.last_seen < ? OR excluded.level >= tls_level.level
                     THEN excluded.last_seen ELSE tls_level.last_seen END
"""


class TlsMemory:
    def __init__(
        self,
        location: Path | QueueSettings,
        remember_for: float,
        access: StateAccess = StateAccess.CREATE,
    ) -> None:
        """`access`: the daemon creates the file; `tls show|forget` open it only if it is there
        (StateMissing otherwise), so a command run as root leaves no file the daemon cannot use."""
        self._db: StateDatabase = open_state(location, SCHEMA, access)
        self.remember_for = remember_for
        # What this process wrote within _REFRESH: a level no higher needs no write.
        self._written: ExpiringMap[str, TlsLevel] = ExpiringMap()

    @property
    def where(self) -> str:
        return self._db.where

    def saw(self, domain: str, level: TlsLevel, now: float | None = None) -> None:
        """A session with `domain` reached `level`."""
        now = time.time() if now is None else now
        if not self._news(domain, level, now):
            return
        expired = now - self.remember_for
        with self._db.connection() as conn:
            conn.execute(_RECORD, (domain, int(level), now, now, expired, expired, expired))
        self._written.put(domain, level, now + _REFRESH, now)

    def recall(self, domain: str, now: float | None = None) -> Remembered | None:
        """What is remembered of `domain` and still in force at `now`."""
        now = time.time() if now is None else now
        with self._db.connection() as conn:
            row = conn.execute(
                "SELECT level, since, last_seen FROM tls_level WHERE domain = ?", (domain,)
            ).fetchone()
        if row is None:
            return None
        found = Remembered(domain, TlsLevel(row[0]), row[1], row[2])
        return None if now > found.expires(self.remember_for) else found

    async def recall_async(self, domain: str) -> Remembered | None:
        """recall() for the event loop; a database out of reach remembers nothing, said once
        per session: the memory is opportunistic, as `may` is."""
        try:
            return await self._db.run(self.recall, domain)
        except StateUnavailable as exc:
            log.warning("domain=%s: downgrade memory unreadable, not applied: %s", domain, exc)
            return None

    async def saw_async(self, domain: str, level: TlsLevel) -> None:
        now = time.time()
        if not self._news(domain, level, now):  # the usual case skips the worker thread
            return
        try:
            await self._db.run(self.saw, domain, level, now)
        except StateUnavailable as exc:
            log.warning("domain=%s: downgrade memory not written: %s", domain, exc)

    def _news(self, domain: str, level: TlsLevel, now: float) -> bool:
        """Whether `level` is worth a write: clear never is (the memory holds what a
        domain can do), nor a level no higher than one written within the hour."""
        if level is TlsLevel.CLEAR:
            return False
        written = self._written.get(domain, now)
        return written is None or level > written

    def forget(self, domain: str) -> bool:
        self._written.pop(domain)
        with self._db.connection() as conn:
            cursor = conn.execute("DELETE FROM tls_level WHERE domain = ?", (domain,))
            return cursor.rowcount > 0

    def close(self) -> None:
        self._db.close()
