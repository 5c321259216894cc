"""The durable MTA-STS policy cache, so policies survive restarts: `mta-sts.db`, or with
`[queue] backend = "postgresql"` a table every node shares (state_db.py), so a policy one
node fetched protects the others' sessions too, and a domain is fetched once per cluster."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...state_db import StateSchema, StateUnavailable, open_state
from .policy import StsPolicy, StsPolicyInvalid, parse_policy

if TYPE_CHECKING:
    from ...config_queue import QueueSettings

log = logging.getLogger("relaymail.mta_sts")

SCHEMA = StateSchema(
    "mta-sts.db",
    """
    CREATE TABLE IF NOT EXISTS policy (
        domain TEXT PRIMARY KEY, policy_id TEXT NOT NULL, fetched_at {REAL} NOT NULL,
        text TEXT NOT NULL
    );
    """,
)


class StsCache:
    """Policies by domain; a policy is good until fetched_at + max_age, which the reader
    checks (`StsPolicy.is_expired`).

    The plain calls are short synchronous statements, safe from any thread; the event
    loop uses the `_async` ones, which run on a worker thread and take a database that
    cannot be reached for an empty cache (the policy is fetched again), with a warning.
    """

    FILE_NAME = SCHEMA.filename

    def __init__(self, location: Path | QueueSettings) -> None:
        # A policy lost to a power cut is fetched again: a state file, no fsync per put.
        self._db = open_state(location, SCHEMA)
        self.where = self._db.where

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
                "INSERT INTO policy (domain, policy_id, fetched_at, text) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id,"
                " fetched_at = excluded.fetched_at, text = excluded.text",
                (domain, policy.policy_id, policy.fetched_at, policy.text),
            )

    def delete(self, domain: str) -> None:
        with self._db.connection() as conn:
            conn.execute("DELETE FROM policy WHERE domain = ?", (domain,))

    def domains(self) -> list[str]:
        with self._db.connection() as conn:
            return [row[0] for row in conn.execute("SELECT domain FROM policy ORDER BY 1")]

    async def get_async(self, domain: str) -> StsPolicy | None:
        try:
            return await self._db.run(self.get, domain)
        except StateUnavailable as exc:
            log.warning("domain=%s: MTA-STS cache unreadable, fetching afresh: %s", domain, exc)
            return None

    async def put_async(self, domain: str, policy: StsPolicy) -> None:
        await self._unless_unavailable(domain, self.put, domain, policy)

    async def delete_async(self, domain: str) -> None:
        await self._unless_unavailable(domain, self.delete, domain)

    async def _unless_unavailable(
        self, domain: str, work: Callable[..., None], *args: object
    ) -> None:
        try:
            await self._db.run(work, *args)
        except StateUnavailable as exc:
            log.warning("domain=%s: MTA-STS cache not written: %s", domain, exc)

    def close(self) -> None:
        self._db.close()
