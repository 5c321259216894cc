"""The scheduler (Postfix's qmgr): decides what to deliver when, and records outcomes.

The store is the durable log; the schedule itself lives in memory: one entry
per queued message with its pending recipients, ordered by due time in a
heap. New mail is handed over by the inbound path with its data still in
memory, so the common case (accept, deliver at once) never reads the body
back from disk. Outcomes go to the store in batches (its group commit).

What changes the schedule from outside (the CLI's hold/release/delete/retry)
arrives as admin events in the store, polled once a second.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .config import QueueSettings
from .delivery import DeliveryEngine, RecipientResult, Status
from .errors import QueueFull
from .message import Envelope, domain_of
from .message_data import MessageData
from .queue.backlog import WriteBacklog
from .queue.store import (
    PendingMessage,
    QueuedMessage,
    RecipientState,
    RecipientUpdate,
    Store,
    TraceHeader,
)

log = logging.getLogger("relaymail.queue")


# How often admin changes made by other processes (the CLI) are looked for.
ADMIN_POLL = 1.0


@dataclass(slots=True)
class _Pending:
    attempts: int
    due: float


@dataclass(slots=True)
class _Entry:
    id: str
    sender: str
    received_at: float
    held: bool
    warned: bool
    recipients: dict[str, _Pending]
    data: bytes | None = None  # kept until the first attempt, to spare a read

    @property
    def due(self) -> float:
        return min(p.due for p in self.recipients.values())


class Scheduler:
    def __init__(
        self,
        store: Store,
        engine: DeliveryEngine,
        settings: QueueSettings,
        *,
        hostname: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.hostname = hostname
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._stale: set[str] = set()
        self._slots = asyncio.Semaphore(settings.max_deliveries)
        self._dead_until: dict[str, tuple[float, str]] = {}
        self._admin_cursor = 0
        self._stopping = False
        self._writes = WriteBacklog()

    # -- lifecycle -------------------------------------------------------------

    def load(self) -> int:
        """Read the queue left by the last run (after a crash too); returns how many."""
        self._admin_cursor = self.store.latest_admin_event_id()
        pending = self.store.load_pending()
        for message in pending:
            self._adopt(message)
        return len(pending)

    async def run(self) -> None:
        """Deliver due messages until stop(); never returns otherwise."""
        poller = asyncio.create_task(self._poll_admin())
        try:
            while not self._stopping:
                now = self._clock()
                while self._heap and self._heap[0][0] <= now and not self._stopping:
                    _, message_id = heapq.heappop(self._heap)
                    entry = self._entries.get(message_id)
                    if entry is None or entry.held or message_id in self._in_flight:
                        continue
                    if entry.due > now:
                        self._push(entry)  # rescheduled since this heap item was made
                        continue
                    await self._slots.acquire()
                    task = asyncio.create_task(self._deliver(entry))
                    self._in_flight[message_id] = task
                self._wake.clear()
                timeout = max(0.0, self._heap[0][0] - self._clock()) if self._heap else 3600.0
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            poller.cancel()

    async def stop(self, grace: float) -> None:
        """Stop starting deliveries; let running ones finish for `grace` seconds, then cancel.

        A cancelled delivery leaves its recipients as they were in the store, so
        they are tried again after restart (a duplicate at worst, never a loss).
        """
        self._stopping = True
        self._wake.set()
        tasks = list(self._in_flight.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._writes.close(grace)

    # -- intake ----------------------------------------------------------------

    def submit(self, message: QueuedMessage, data: bytes | None) -> None:
        """A message just made durable by the inbound path: deliver it now."""
        now = self._clock()
        entry = _Entry(
            message.id, message.envelope.sender, message.received_at, False, False,
            {r: _Pending(0, now) for r in message.envelope.recipients}, data,
        )  # fmt: skip
        self._entries[entry.id] = entry
        self._push(entry)

    async def enqueue(
        self,
        envelope: Envelope,
        data: bytes | MessageData,
        trace: TraceHeader | None = None,
        *,
        pickup: str | None = None,
    ) -> str:
        """Queue and schedule a message (inbound mail, DSNs, local submission).

        `trace` makes the Received: header from the queue id; `pickup` is the maildrop
        file the message came from, recorded with it (Store.enqueue).
        """
        message = await self.store.enqueue(
            envelope, data, self._clock(), trace=trace, pickup=pickup
        )
        # A small message stays in memory for its first attempt; a large one is read back.
        small = data.in_memory() if isinstance(data, MessageData) else data
        self.submit(message, None if small is None else message.trace + small)
        # The inbound server logs the acceptance with this id; DSNs and local
        # submissions say so in their own lines.
        log.debug(
            "queued id=%s from=<%s> recipients=%d size=%d",
            message.id, envelope.sender, len(envelope.recipients), message.size,
        )  # fmt: skip
        return message.id

    def _adopt(self, message: PendingMessage) -> None:
        settling = self._writes.settling(message.id)  # final, though the store says pending
        entry = _Entry(
            message.id, message.sender, message.received_at, message.held, message.warned,
            {r.address: _Pending(r.attempts, r.next_attempt) for r in message.recipients
             if r.address not in settling},
        )  # fmt: skip
        if not entry.recipients:
            self._entries.pop(message.id, None)
            return
        self._entries[entry.id] = entry
        self._push(entry)

    def _push(self, entry: _Entry) -> None:
        if entry.held:
            return
        due = entry.due
        heapq.heappush(self._heap, (due, entry.id))
        if due <= self._clock() or (self._heap[0][1] == entry.id):
            self._wake.set()

    # -- delivery --------------------------------------------------------------

    async def _deliver(self, entry: _Entry) -> None:
        try:
            await self._attempt(entry)
        except Exception as exc:
            # Outcomes never get here (the backlog keeps them): this is a read or a
            # bug before any recipient was tried, so trying again repeats nothing.
            if isinstance(exc, QueueFull):
                log.error("id=%s: not attempted, will retry: %s", entry.id, exc)
            else:  # a bug must not kill the scheduler
                log.exception("id=%s: delivery attempt failed unexpectedly", entry.id)
            for pending in entry.recipients.values():
                pending.due = self._clock() + self.settings.retry.delay(pending.attempts + 1)
        finally:
            self._slots.release()
            self._in_flight.pop(entry.id, None)
            if entry.id in self._stale:
                self._stale.discard(entry.id)
                self._reload(entry.id)
            elif entry.recipients and entry.id in self._entries:
                self._push(entry)
            else:
                self._entries.pop(entry.id, None)

    async def _attempt(self, entry: _Entry) -> None:
        now = self._clock()
        due = [r for r, p in entry.recipients.items() if p.due <= now]
        updates: list[RecipientUpdate] = []
        skipped = self._skip_dead_destinations(entry, due, now, updates)
        due = [r for r in due if r not in skipped]
        results: list[RecipientResult] = []
        data = b""
        if due:
            try:
                data = entry.data or await self.store.read_data(entry.id)
            except KeyError:
                await self._body_missing(entry)
                return
            entry.data = None
            results = await self.engine.deliver(Envelope(entry.sender, tuple(due)), data)
        now = self._clock()
        bounced: list[RecipientResult] = []
        deferred: list[RecipientResult] = []
        for result in results:
            pending = entry.recipients[result.recipient]
            pending.attempts += 1
            status = result.status
            reason = result.reason
            if status is Status.DEFERRED and now - entry.received_at >= self.settings.lifetime:
                status = Status.BOUNCED
                reason = f"gave up after {_age(now - entry.received_at)} in the queue: {reason}"
                result = _expired(result, reason)
            if status is Status.DEFERRED:
                pending.due = now + self.settings.retry.delay(pending.attempts)
                deferred.append(result)
            else:
                del entry.recipients[result.recipient]
                if status is Status.BOUNCED:
                    bounced.append(result)
            self._note_destination(result, now, pending)
            updates.append(_update(entry.id, result, status, pending, now, reason))
            _log_result(entry.id, result, status, reason, pending.due)
        final = [(entry.id, u.recipient) for u in updates if u.state.is_final]
        await self._writes.write(functools.partial(self.store.record, updates), settles=final)
        if bounced:
            await self._send_dsn(entry, bounced, data, delay=False)
        if deferred and not entry.warned and now - entry.received_at >= self.settings.delay_warning:
            entry.warned = True
            await self._writes.write(functools.partial(self.store.mark_warned, entry.id))
            await self._send_dsn(entry, deferred, data, delay=True)

    async def _body_missing(self, entry: _Entry) -> None:
        """The message has no data to send: deleted meanwhile, or its body row is gone."""
        self._entries.pop(entry.id, None)
        entry.recipients.clear()
        if self.store.load_pending_message(entry.id) is None:
            return  # deleted by an admin since it was scheduled: nothing to do
        # Retrying cannot bring the body back and a bounce could not quote it:
        # hold the message so it stays visible (`queue list`) and stops looping.
        log.error("id=%s: message body missing from the queue; message held", entry.id)
        await self._writes.write(functools.partial(self.store.set_hold, entry.id, True))

    def _skip_dead_destinations(
        self, entry: _Entry, due: list[str], now: float, updates: list[RecipientUpdate]
    ) -> set[str]:
        """Per-destination retry memory: don't hammer a destination that just failed."""
        skipped: set[str] = set()
        for rcpt in due:
            dead = self._dead_until.get(domain_of(rcpt))
            if dead is None or dead[0] <= now:
                continue
            until, reason = dead
            pending = entry.recipients[rcpt]
            pending.due = until
            skipped.add(rcpt)
            updates.append(
                RecipientUpdate(
                    entry.id,
                    rcpt,
                    RecipientState.DEFERRED,
                    pending.attempts,
                    until,
                    last_attempt=None,
                    last_error=f"not tried: destination down ({reason})",
                )
            )
        return skipped

    def _note_destination(self, result: RecipientResult, now: float, pending: _Pending) -> None:
        domain = domain_of(result.recipient)
        if result.status is Status.DEFERRED and result.reply is None:
            # No host answered at all (connection-level): remember it for the
            # other messages to this destination until this one's next retry.
            self._dead_until[domain] = (pending.due, result.reason)
        elif result.reply is not None:
            self._dead_until.pop(domain, None)

    async def _send_dsn(
        self, entry: _Entry, results: Sequence[RecipientResult], data: bytes, delay: bool
    ) -> None:
        """Bounce or warn through the queue itself; never for the null sender (no loops)."""
        from . import dsn

        kind = "delay warning" if delay else "bounce"
        if not dsn.should_bounce(entry.sender):
            log.info("id=%s: no %s for a message from <>", entry.id, kind)
            return
        now = _utc(self._clock())
        build = (
            functools.partial(
                dsn.build_delay_warning,
                retry_until=_utc(entry.received_at + self.settings.lifetime),
            )
            if delay
            else dsn.build_bounce
        )
        notice = build(
            original_sender=entry.sender,
            queue_id=entry.id,
            original_headers=dsn.header_section(data),
            recipients=[dsn.recipient_facts(r, last_attempt=now) for r in results],
            reporting_mta=self.hostname,
            arrival_date=_utc(entry.received_at),
            now=now,
        )
        if notice is None:
            return

        async def queue_notice() -> None:
            dsn_id = await self.enqueue(notice.envelope, notice.data)
            log.info("id=%s: %s to <%s> queued as %s", entry.id, kind, entry.sender, dsn_id)

        await self._writes.write(queue_notice)

    # -- admin events ------------------------------------------------------------

    async def _poll_admin(self) -> None:
        while True:
            await asyncio.sleep(ADMIN_POLL)
            try:
                events = await asyncio.to_thread(self.store.fetch_admin_events, self._admin_cursor)
            except QueueFull:
                continue  # the store has said what is wrong, once; ask again in a second
            except Exception:
                log.exception("reading admin events failed")
                continue
            for event in events:
                self._admin_cursor = max(self._admin_cursor, event.id)
                if event.message_id is None:
                    for message_id in list(self._entries):
                        if message_id not in self._in_flight:
                            self._reload(message_id)
                elif event.message_id in self._in_flight:
                    self._stale.add(event.message_id)
                else:
                    self._reload(event.message_id)
                log.info("admin %s %s", event.action.value, event.message_id or "all")

    def _reload(self, message_id: str) -> None:
        message = self.store.load_pending_message(message_id)
        if message is None:
            self._entries.pop(message_id, None)
        else:
            self._adopt(message)

    def in_flight(self) -> list[asyncio.Task[None]]:
        """The deliveries running now (a reload lets them finish on the old engine)."""
        return list(self._in_flight.values())


def _update(
    message_id: str,
    result: RecipientResult,
    status: Status,
    pending: _Pending,
    now: float,
    reason: str,
) -> RecipientUpdate:
    state = {
        Status.DELIVERED: RecipientState.DELIVERED,
        Status.BOUNCED: RecipientState.BOUNCED,
        Status.DEFERRED: RecipientState.DEFERRED,
    }[status]
    tls = json.dumps(result.tls.to_json())
    return RecipientUpdate(
        message_id, result.recipient, state, pending.attempts, pending.due,
        last_attempt=now, last_reply=result.reply, last_error=reason, tls=tls, host=result.host,
    )  # fmt: skip


def _expired(result: RecipientResult, reason: str) -> RecipientResult:
    from dataclasses import replace

    return replace(result, status=Status.BOUNCED, reason=reason)


def _log_result(
    message_id: str, result: RecipientResult, status: Status, reason: str, due: float
) -> None:
    tls = result.tls
    tls_words = (
        f"{tls.version}/{'verified' if tls.verified else 'unverified'}" if tls.used else "none"
    )
    extra = (
        f" next={time.strftime('%H:%M:%S', time.localtime(due))}"
        if status is Status.DEFERRED
        else ""
    )
    log.info(
        "%s id=%s to=<%s> host=%s tls=%s%s: %s",
        status.value, message_id, result.recipient, result.host or "-", tls_words, extra, reason,
    )  # fmt: skip


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"
