"""The durable MTA-STS policy cache: `mta-sts.db`, so policies survive restarts."""

from __future__ import annotations

from pathlib import Path

from ...state_db import StateDb
from .policy import StsPolicy, StsPolicyInvalid, parse_policy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policy (
    domain TEXT PRIMARY KEY, policy_id TEXT NOT NULL, fetched_at REAL NOT NULL, text TEXT NOT NULL
);
"""


class StsCache:
    """Policies by domain in `<directory>/mta-sts.db`; a policy is good until fetched_at +
    max_age, which the reader checks (`StsPolicy.is_expired`).

    Calls are short synchronous SQLite statements, safe from any thread.
    """

    FILE_NAME = "mta-sts.db"

    def __init__(self, directory: Path) -> None:
        # A policy lost to a power cut is fetched again: a state file, no fsync per put.
        self._db = StateDb(directory, self.FILE_NAME, _SCHEMA)
        self.path = self._db.path

    def get(self, domain: str) -> StsPolicy | None:
        """The stored policy for `domain`, expired or not; None if none or unreadable."""
        with self._db.connection() as conn:
            row = conn.execute(
                "SELECT policy_id, fetched_at, text FROM policy WHERE domain = ?", (domain,)
            ).fetchone()
        if row is None:
            return None
        try:
            return parse_policy(row[2], policy_id=row[0], fetched_at=row[1])
        except StsPolicyInvalid:
            return None  # stored by a laxer version of the parser: as good as absent

    def put(self, domain: str, policy: StsPolicy) -> None:
        with self._db.connection() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO policy (domain, policy_id, fetched_at, text)"
                " VALUES (?, ?, ?, ?)",
                (domain, policy.policy_id, policy.fetched_at, policy.text),
            )

    def delete(self, domain: str) -> None:
        with self._db.connection() as conn:
            conn.execute("DELETE FROM policy WHERE domain = ?", (domain,))

    def domains(self) -> list[str]:
        with self._db.connection() as conn:
            return [row[0] for row in conn.execute("SELECT domain FROM policy ORDER BY 1")]

    def close(self) -> None:
        self._db.close()
