"""Recipient verification for relay_domains: unknown recipients get 550 at RCPT time.

Mail for a relay domain from an outside client is taken for any address there; when
the next hop then refuses the address, the bounce goes to the envelope sender, which
a spammer forged: backscatter. So before the RCPT is answered the address is checked
(Postfix's reject_unverified_recipient, or relay_recipient_maps with a list):

* `probe`: the engine asks the next hop, over the same routes, TLS policy and
  sessions as delivery, with MAIL FROM:<>, RCPT TO and RSET (never DATA). An accepted
  address is remembered for `positive_ttl`, a refused one for `negative_ttl`, both in
  memory (bounded) and in recipients.db beside the queue, so a restart does not probe
  again. A probe that takes longer than `wait` is answered 450 and goes on (up to
  `probe_timeout`); the client's retry finds its answer.
* `list`: the addresses and "@domain" entries of `recipients_file` exist, nothing else.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from ..address_set import AddressSet
from ..config import RecipientVerification, VerifyMode
from ..delivery.results import RecipientResult, Status
from ..errors import AddressError, ConfigError, RelaymailError
from ..message import domain_of
from ..state_db import StateDb

__all__ = [
    "RecipientVerifier",
    "Verdict",
    "VerdictCache",
    "read_recipients",
    "verdict_reply",
]

log = logging.getLogger("relaymail.server")


def _recipients(settings: RecipientVerification) -> AddressSet | None:
    if settings.mode is not VerifyMode.LIST:
        return None
    assert settings.recipients_file is not None  # the configuration requires it
    return read_recipients(settings.recipients_file)


class Verdict(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    """No answer yet, or the next hop could not say: try again later."""


_VERDICT_OF_STATUS: Final = {
    Status.DELIVERED: Verdict.ACCEPTED,
    Status.BOUNCED: Verdict.REJECTED,
    Status.DEFERRED: Verdict.UNKNOWN,
}


def verdict_reply(verdict: Verdict, address: str) -> str | None:
    """The RCPT reply for a verdict; None when the recipient is taken."""
    if verdict is Verdict.REJECTED:
        return f"550 5.1.1 <{address}>: Recipient address rejected: undeliverable address"
    if verdict is Verdict.UNKNOWN:
        return f"450 4.1.1 <{address}>: Recipient address rejected: unverified address"
    return None


def read_recipients(path: Path) -> AddressSet:
    """`recipients_file`: one address or "@domain" per line, `#` comments; errors name the line."""
    key = "recipient_verification.recipients_file"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        try:
            AddressSet.of((entry,))
        except AddressError as exc:
            raise ConfigError(key, f"{path} line {number}: {exc}") from None
        entries.append(entry)
    return AddressSet.of(tuple(entries))


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS verdicts (
    address TEXT PRIMARY KEY,
    verdict TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_by_expiry ON verdicts (expires);
"""
# Expired and surplus rows are deleted after this many writes, not on each one.
_PRUNE_EVERY: Final = 256


class VerdictCache:
    """Verdicts with their expiry (wall clock, so they survive restarts): LRU in memory
    over recipients.db. A database that fails costs the persistence, never an answer."""

    def __init__(self, directory: Path, size: int) -> None:
        self.size = size
        self._directory = directory
        self._memory: OrderedDict[str, tuple[Verdict, float]] = OrderedDict()
        self._opened: StateDb | None = None
        self._writes = 0

    @property
    def _db(self) -> StateDb:
        # Opened at first use: the daemon makes the cache before it drops root, and
        # the file must belong to the service user.
        if self._opened is None:
            self._opened = StateDb(self._directory, "recipients.db", _SCHEMA)
        return self._opened

    def __len__(self) -> int:
        """Verdicts held in memory."""
        return len(self._memory)

    def get(self, key: str, now: float) -> Verdict | None:
        found = self._memory.get(key)
        if found is None:
            found = self._stored(key)
            if found is not None:
                self._remember(key, *found)
        else:
            self._memory.move_to_end(key)
        if found is None or found[1] <= now:
            return None
        return found[0]

    def put(self, key: str, verdict: Verdict, expires: float) -> None:
        self._remember(key, verdict, expires)
        try:
            with self._db.connection() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO verdicts (address, verdict, expires) VALUES (?, ?, ?)",
                    (key, verdict.value, expires),
                )
                self._writes += 1
                if self._writes % _PRUNE_EVERY == 0:
                    self._prune(conn, time.time())
        except (sqlite3.Error, OSError, RelaymailError) as exc:
            log.warning("recipients.db: verdict for %s not stored: %s", key, exc)

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()

    def _remember(self, key: str, verdict: Verdict, expires: float) -> None:
        self._memory[key] = (verdict, expires)
        self._memory.move_to_end(key)
        while len(self._memory) > self.size:
            self._memory.popitem(last=False)

    def _stored(self, key: str) -> tuple[Verdict, float] | None:
        try:
            with self._db.connection() as conn:
                row = conn.execute(
                    "SELECT verdict, expires FROM verdicts WHERE address = ?", (key,)
                ).fetchone()
        except (sqlite3.Error, OSError, RelaymailError):
            return None
        if row is None:
            return None
        try:
            return Verdict(row[0]), float(row[1])
        except ValueError:
            return None

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM verdicts WHERE expires <= ?", (now,))
        conn.execute(
            "DELETE FROM verdicts WHERE address IN (SELECT address FROM verdicts"
            " ORDER BY expires LIMIT max(0, (SELECT count(*) FROM verdicts) - ?))",
            (self.size,),
        )


Probe = Callable[[str, str], Awaitable[RecipientResult]]
"""Ask the next hops about (address, probe sender): DeliveryEngine.verify_recipient."""


class RecipientVerifier:
    """Answers "does this relay recipient exist?" per `RecipientVerification`."""

    def __init__(
        self,
        settings: RecipientVerification,
        probe: Probe,
        cache: VerdictCache | None,
        recipients: AddressSet | None = None,
    ) -> None:
        self.settings = settings
        self.recipients = recipients
        self._probe = probe
        self._cache = cache
        self._probing: dict[str, asyncio.Task[Verdict]] = {}

    @classmethod
    def for_config(
        cls, settings: RecipientVerification, probe: Probe, directory: Path
    ) -> RecipientVerifier:
        """The daemon's verifier; ConfigError for a bad recipients_file."""
        return cls(settings, probe, VerdictCache(directory, settings.cache_size),
                   _recipients(settings))  # fmt: skip

    def adopt(self, settings: RecipientVerification) -> None:
        """A reloaded configuration (ConfigError keeps the old one); cached verdicts stay."""
        self.recipients = _recipients(settings)
        self.settings = settings
        if self._cache is not None:
            self._cache.size = settings.cache_size

    async def verdict(self, address: str) -> Verdict:
        settings = self.settings
        if settings.mode is VerifyMode.OFF:
            return Verdict.ACCEPTED
        if settings.mode is VerifyMode.LIST:
            assert self.recipients is not None
            return Verdict.ACCEPTED if self.recipients.matches(address) else Verdict.REJECTED
        local, _, _ = address.rpartition("@")
        key = f"{local}@{domain_of(address)}"
        if self._cache is not None and (cached := self._cache.get(key, time.time())):
            return cached
        task = self._probing.get(key)
        if task is None:
            if len(self._probing) >= settings.max_probes:
                return Verdict.UNKNOWN  # the refusal's log line says so
            task = asyncio.create_task(self._verify(key, address))
            self._probing[key] = task
            task.add_done_callback(lambda _: self._probing.pop(key, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), settings.wait)
        except TimeoutError:
            return Verdict.UNKNOWN

    async def close(self) -> None:
        """Stop the probes still running (their clients got 450) and close the cache."""
        running = list(self._probing.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._cache is not None:
            self._cache.close()

    async def _verify(self, key: str, address: str) -> Verdict:
        settings = self.settings
        try:
            result = await asyncio.wait_for(
                self._probe(address, settings.sender), settings.probe_timeout
            )
        except TimeoutError:
            verdict, reason = Verdict.UNKNOWN, f"no answer in {settings.probe_timeout:g} s"
        except Exception as exc:  # a defect in a probe must cost a 450, not the session
            verdict, reason = Verdict.UNKNOWN, f"probe failed: {type(exc).__name__}: {exc}"
        else:
            verdict, reason = _VERDICT_OF_STATUS[result.status], result.reason
        ttl = {Verdict.ACCEPTED: settings.positive_ttl, Verdict.REJECTED: settings.negative_ttl}
        if self._cache is not None and verdict in ttl:
            self._cache.put(key, verdict, time.time() + ttl[verdict])
        log.info("verify recipient=<%s> verdict=%s reason=%s", address, verdict, reason)
        return verdict
