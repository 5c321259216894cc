"""The durable MTA-STS policy cache: `mta-sts.db`, so policies survive restarts."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from .policy import StsPolicy, StsPolicyInvalid, parse_policy

# --- The durable cache -----------------------------------------------------------------


class StsCache:
    """Policies by domain in `<directory>/mta-sts.db`; a policy is good until fetched_at +
    max_age, which the reader checks (`StsPolicy.is_expired`).

    Calls are short synchronous SQLite statements, safe from any thread.
    """

    FILE_NAME = "mta-sts.db"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / self.FILE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A policy lost to a power cut is fetched again; no need for an fsync per put.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS policy ("
            " domain TEXT PRIMARY KEY, policy_id TEXT NOT NULL,"
            " fetched_at REAL NOT NULL, text TEXT NOT NULL)"
        )

    def get(self, domain: str) -> StsPolicy | None:
        """The stored policy for `domain`, expired or not; None if none or unreadable."""
        with self._lock:
            row = self._db.execute(
                "SELECT policy_id, fetched_at, text FROM policy WHERE domain = ?", (domain,)
            ).fetchone()
        if row is None:
            return None
        try:
            return parse_policy(row[2], policy_id=row[0], fetched_at=row[1])
        except StsPolicyInvalid:
            return None  # stored by a laxer version of the parser: as good as absent

    def put(self, domain: str, policy: StsPolicy) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO policy (domain, policy_id, fetched_at, text)"
                " VALUES (?, ?, ?, ?)",
                (domain, policy.policy_id, policy.fetched_at, policy.text),
            )

    def delete(self, domain: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM policy WHERE domain = ?", (domain,))

    def domains(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT domain FROM policy ORDER BY 1")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
