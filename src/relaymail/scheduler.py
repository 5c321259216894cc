"""The scheduler (Postfix's qmgr): decides what to deliver when, and records outcomes.

The store is the durable log. The schedule in memory is the active window
(active_window.py): at most `[queue] active_limit` messages, with their pending
recipients and no body, in due order. New mail joins it when it has room; the
rest waits on disk and comes in by an indexed read in due order
(Store.due_messages) as the window drains, and at start, so neither memory nor
the restart time follows the queue's size. A message leaves the window when it
is done or deferred to a later time; it comes back when it is due.

A delivery starts only when the slot table (slot_table.py) grants a global slot
and its destination's: a message whose destinations are all busy waits parked,
holding nothing. The body is read from the store by the delivery, chunk by
chunk, as its session sends it; a message whose delivery starts in the dispatch
right after its acceptance takes the data the inbound side still holds (up to
message_data.IN_MEMORY) instead, and reads nothing. A body not taken then is
dropped, so the window never holds one. Outcomes go to the store in batches.

What changes the schedule from outside (the CLI's hold/release/delete/retry)
arrives as admin events in the store, polled once a second (at once where the
store hears of them). Where nodes share the store, each delivery starts with
the store's claim on the message: one another node holds leaves the window.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import observe
from .active_window import ActiveWindow, Entry, WaitingRecipient, WindowStats
from .body import MessageBody
from .config_queue import QueueSettings
from .delivery import DeliveryEngine, RecipientResult, Status
from .destination_memory import DestinationMemory
from .destination_share import SharedDestinations
from .dsn import NoticeKind, should_bounce
from .dsn_request import NO_DSN
from .errors import QueueFull
from .message import Envelope, domain_key
from .message_data import IN_MEMORY, MessageData
from .queue.backlog import WriteBacklog
from .queue.store import (
    AdminAction,
    PendingMessage,
    QueuedMessage,
    RecipientUpdate,
    Store,
    TraceHeader,
)
from .routing import Destination
from .scheduler_records import (
    age_words,
    delivery_event,
    entry_notice,
    expired_result,
    iso,
    recipient_update,
    untried_deferral,
    utc,
)
from .slot_table import Grant, Limits, SlotTable
from .suspension import Suspension
from .suspension_file import entries, write_suspended

if TYPE_CHECKING:
    from .admin.history import DeliveryHistory

log = logging.getLogger("relaymail.queue")


# How often admin changes made by other processes (the CLI) are looked for.
ADMIN_POLL = 1.0
# A failed refill (the store refusing reads) is tried again this much later.
REFILL_RETRY = 1.0


class Scheduler:
    def __init__(
        self,
        store: Store,
        engine: DeliveryEngine,
        settings: QueueSettings,
        *,
        hostname: str,
        clock: Callable[[], float] = time.time,
        history: DeliveryHistory | None = None,
        suspended_to: Path | None = None,
        shared: SharedDestinations | None = None,
    ) -> None:
        self.store = store
        self.history = history  # the status page's record of outcomes
        self.engine = engine
        self.settings = settings
        self.hostname = hostname
        self._clock = clock
        self._window = ActiveWindow(settings.active_limit)
        self._slots = SlotTable(self._limits(), engine.shaping_group)
        # Destinations whose minute is spent, by when they may send again (heap).
        self._rate_waits: list[tuple[float, int, Destination]] = []
        self._rate_order = itertools.count()  # ties in the heap never compare destinations
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # Small bodies of messages accepted since the last dispatch, as stored.
        self._fresh: dict[str, MessageBody] = {}
        self._stale: set[str] = set()
        self._memory = DestinationMemory(shared)  # shared: what other nodes found
        self._background: set[asyncio.Task[None]] = set()
        self._suspended_to = suspended_to  # the directory `queue stats` reads them from
        self._admin_cursor = 0
        self._stopping = False
        self._writes = WriteBacklog()
        # What the disk may hold beyond the window: `_disk_gen` counts the moments mail due
        # now may have been left there (a full window, an admin change); a refill that saw
        # every due message clears `_more_on_disk`; `_disk_due`: the next due time there.
        self._disk_gen = 1
        self._more_on_disk = True
        self._disk_due: float | None = None
        self._refilling: asyncio.Task[None] | None = None
        self._left: set[str] | None = None  # left the window while a refill reads
        self._refill_after = 0.0

    def _limits(self) -> Limits:
        engine = self.engine
        return Limits(self.settings.max_deliveries, engine.destination_concurrency, engine.shaping)

    def suspensions(self) -> list[Suspension]:
        """The destinations suspended now for throttling, the one ending first first."""
        return self._memory.suspensions.all_active(self._clock())

    def window_stats(self) -> WindowStats:
        """The active window now, and the most messages it ever held at once."""
        return self._window.stats()

    # -- lifecycle -------------------------------------------------------------

    def load(self) -> int:
        """Prepare to deliver the queue left by the last run; returns how many messages wait.

        Nothing is read but the count: the first refill (in run) brings in the
        earliest due messages, at most the window's limit.
        """
        self._admin_cursor = self.store.latest_admin_event_id()
        if self._suspended_to is not None:
            write_suspended(self._suspended_to, [])  # the last run's are forgotten with it
        return self.store.count_messages()

    async def run(self) -> None:
        """Deliver due messages until stop(); never returns otherwise."""
        poller = asyncio.create_task(self._poll_admin())
        try:
            while not self._stopping:
                now = self._clock()
                self._dispatch(now)
                self._maybe_refill(now)
                self._wake.clear()
                # With every slot taken, a delivery that ends wakes the loop, not the heap.
                due = None if self._slots.full else self._window.next_due()
                rate = self._rate_waits[0][0] if self._rate_waits else None
                wake_at = [t for t in (due, self._disk_due, rate) if t is not None]
                if self._more_on_disk and self._refill_after > now:
                    wake_at.append(self._refill_after)
                timeout = max(0.0, min(wake_at) - self._clock()) if wake_at else 3600.0
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            poller.cancel()
            if self._refilling is not None:
                self._refilling.cancel()

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

    # -- dispatch --------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        """Start every due delivery the slot table grants."""
        try:
            self._start_granted(now)
        finally:
            self._fresh.clear()  # not started now: read from the store when it is

    def _start_granted(self, now: float) -> None:
        self._slots.limits = self._limits()
        self._slots.group_of = self.engine.shaping_group
        self._window.limit = self.settings.active_limit
        while self._rate_waits and self._rate_waits[0][0] <= now:
            self._window.unpark(heapq.heappop(self._rate_waits)[2])
        while not self._slots.full and not self._stopping:
            entry = self._window.pop_due(now)
            if entry is None:
                return
            by_destination: dict[Destination, list[str]] = defaultdict(list)
            for rcpt, pending in entry.recipients.items():
                if pending.due <= now:
                    by_destination[self.engine.destination(domain_key(rcpt))].append(rcpt)
            held = [d for d in by_destination if self._held_back(d, now)]
            grant = self._slots.grant(by_destination, now, free=held)
            if grant is None:
                first = next(iter(by_destination))
                self._window.park(entry, first)
                until = self._slots.wait_until(by_destination, now)
                if until is not None:
                    heapq.heappush(self._rate_waits, (until, next(self._rate_order), first))
                continue
            granted = grant.destinations | grant.free
            rcpts = [r for d in granted for r in by_destination[d]]
            self._window.started(entry.id)
            fresh = self._fresh.pop(entry.id, None)
            task = asyncio.create_task(self._deliver(entry, rcpts, grant, fresh))
            self._in_flight[entry.id] = task

    # -- the window and the disk ---------------------------------------------------

    def _maybe_refill(self, now: float) -> None:
        if self._disk_due is not None and self._disk_due <= now:
            self._disk_due = None
            self._disk_gen += 1
            self._more_on_disk = True
        room = self._window.room
        if not (self._more_on_disk and room and self._refilling is None):
            return
        if now < self._refill_after or self._stopping:
            return
        # While ready work remains, wait for a tenth of the window to be free: a
        # read per message that leaves would cost more than the deliveries.
        if self._window.ready_by(now) and room < max(1, self._window.limit // 10):
            return
        self._refilling = asyncio.create_task(self._refill(now, room))

    async def _refill(self, now: float, room: int) -> None:
        generation = self._disk_gen
        self._left, self._disk_due = set(), None
        exclude = self._window.ids()
        try:
            batch = await asyncio.to_thread(self.store.due_messages, now, room, exclude)
        except Exception as exc:
            if not isinstance(exc, QueueFull):  # the store has said what is wrong, once
                log.exception("reading due messages failed; trying again")
            self._refill_after = self._clock() + REFILL_RETRY
            return
        finally:
            left, self._left, self._refilling = self._left, None, None
            self._wake.set()
        # A message that left meanwhile may be older in this read than in the store.
        for message in batch.messages:
            if message.id not in left and message.id not in self._window:
                self._adopt(message)
        self._more_on_disk = batch.more or self._disk_gen != generation
        if batch.next_due is not None:
            self._note_on_disk(batch.next_due)
        self._memory.sweep(now)
        self._slots.sweep(now)

    def _note_on_disk(self, due: float) -> None:
        """A message waits on disk (not in the window), due at `due`."""
        if due <= self._clock():
            self._disk_gen += 1
            self._more_on_disk = True
            self._wake.set()
        elif self._disk_due is None or due < self._disk_due:
            self._disk_due = due

    def _leave(self, message_id: str) -> None:
        self._window.remove(message_id)
        if self._left is not None:
            self._left.add(message_id)

    # -- intake ----------------------------------------------------------------

    def submit(
        self, message: QueuedMessage, arrived: float | None = None, body: MessageBody | None = None
    ) -> None:
        """A message just made durable by the inbound path: deliver it now if there is room.

        `arrived`: when its sender began to hand it over (MAIL FROM, the maildrop file);
        `body`: what was stored, if it is small and still in memory.
        """
        now = self._clock()
        before = max(0.0, message.received_at - arrived) if arrived is not None else 0.0
        entry = Entry(
            message.id, message.envelope.sender, message.received_at, False,
            {r: WaitingRecipient(0, now) for r in message.envelope.recipients}, before,
            requiretls=message.envelope.requiretls, dsn=message.envelope.dsn,
        )  # fmt: skip
        if self._window.put(entry):
            if body is not None:
                self._fresh[message.id] = body
            self._wake.set()
        else:
            self._note_on_disk(now)  # a refill finds it, in due order

    async def enqueue(
        self,
        envelope: Envelope,
        data: bytes | MessageData,
        trace: TraceHeader | None = None,
        *,
        pickup: str | None = None,
        arrived: float | None = None,
    ) -> str:
        """Queue and schedule a message (inbound mail, DSNs, local submission).

        `trace` makes the Received: header from the queue id; `pickup` is the maildrop
        file the message came from, recorded with it (Store.enqueue).
        """
        message = await self.store.enqueue(
            envelope, data, self._clock(), trace=trace, pickup=pickup
        )
        stored = data if isinstance(data, MessageData) else MessageData.of(data)
        # What was stored, unless it is in a file: the first delivery reads nothing.
        fresh = MessageBody.fresh(stored, message.trace) if message.size <= IN_MEMORY else None
        self.submit(message, arrived, fresh)
        # The inbound server logs the acceptance; DSNs, local submissions their own lines.
        log.debug("queued id=%s from=<%s> recipients=%d size=%d", message.id, envelope.sender,
                  len(envelope.recipients), message.size)  # fmt: skip
        return message.id

    def _adopt(self, message: PendingMessage) -> None:
        """Take the store's view of a message into the window (or leave it on disk)."""
        settling = self._writes.settling(message.id)  # final, though the store says pending
        entry = Entry(
            message.id, message.sender, message.received_at, message.warned,
            {r.address: WaitingRecipient(r.attempts, r.next_attempt) for r in message.recipients
             if r.address not in settling},
            requiretls=message.requiretls, dsn=message.dsn,
        )  # fmt: skip
        if not entry.recipients or message.held:
            self._leave(message.id)  # a held message waits on disk for its release
        elif self._window.put(entry):
            self._wake.set()
        else:
            self._note_on_disk(entry.due)

    # -- delivery --------------------------------------------------------------

    async def _deliver(
        self, entry: Entry, rcpts: list[str], grant: Grant, fresh: MessageBody | None
    ) -> None:
        recorded = False
        try:
            await self._attempt(entry, rcpts, fresh)
            recorded = not self._writes  # the store has this attempt's outcomes
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
            self._slots.release(grant)
            for destination in grant.destinations | grant.free:
                self._window.unpark(destination)
            self._window.finished(entry.id)
            self._in_flight.pop(entry.id, None)
            self._after_attempt(entry, recorded)
            self._wake.set()

    def _after_attempt(self, entry: Entry, recorded: bool) -> None:
        if entry.id in self._stale:
            self._stale.discard(entry.id)
            self._reload(entry.id)
        elif not entry.recipients or entry.id not in self._window:
            self._leave(entry.id)
        elif entry.due <= self._clock() or not recorded:
            # Recipients still due (their destination had no slot), or times the
            # store does not have yet: the window keeps the message.
            self._window.schedule(entry)
        else:
            # Deferred: on disk until it is due again, when a refill brings it back.
            self._leave(entry.id)
            self._note_on_disk(entry.due)

    async def _attempt(self, entry: Entry, granted: list[str], fresh: MessageBody | None) -> None:
        if not await self.store.claim(entry.id):
            # Another node of the cluster delivers it (its lease is live): not ours any more.
            log.info("id=%s: claimed by another node; left to it", entry.id)
            entry.recipients.clear()
            return
        now = started = self._clock()
        due = [r for r in granted if r in entry.recipients and entry.recipients[r].due <= now]
        updates: list[RecipientUpdate] = []
        skipped = self._skip_held_back(entry, due, now, updates)
        due = [r for r in due if r not in skipped]
        results: list[RecipientResult] = []
        body = MessageBody.of(b"")
        if due:
            try:
                body = self.store.open_body(entry.id) if fresh is None else fresh
            except KeyError:
                await self._body_missing(entry)
                return
            results = await self.engine.deliver(
                Envelope(entry.sender, tuple(due), entry.requiretls, entry.dsn), body,
                queue_id=entry.id,
            )
        now = self._clock()
        bounced: list[RecipientResult] = []
        deferred: list[RecipientResult] = []
        relayed: list[RecipientResult] = []  # delivered where no DSN follows (RFC 3461)
        for result in results:
            pending = entry.recipients[result.recipient]
            pending.attempts += 1
            status = result.status
            reason = result.reason
            age = now - entry.received_at
            expired = status is Status.DEFERRED and age >= self.settings.lifetime
            if expired:
                status = Status.BOUNCED
                waited = age_words(now - entry.received_at)
                reason = f"gave up after {waited} in the queue: {reason}"
                result = expired_result(result, reason)
            if status is Status.DEFERRED:
                pending.due = now + self.settings.retry.delay(pending.attempts)
                deferred.append(result)
            else:
                del entry.recipients[result.recipient]
                if status is Status.BOUNCED:
                    bounced.append(result)
                elif not result.dsn_passed_on:
                    relayed.append(result)
            # Neither an unreadable body nor a REQUIRETLS refusal says the destination is
            # down for the other mail: the fault, or the requirement, is this message's.
            if not (result.body_unreadable or entry.requiretls):
                self._learn(entry, result, pending, now)
            updates.append(recipient_update(entry.id, result, status, pending, now, reason))
            observe.emit(delivery_event(entry, result, expired, pending.due, started, now))
            if self.history is not None:
                self.history.record(entry.id, result, status, reason, now)
        final = [(entry.id, u.recipient) for u in updates if u.state.is_final]
        await self._writes.write(functools.partial(self.store.record, updates), settles=final)
        if bounced:
            await self._send_dsn(entry, bounced, body, NoticeKind.BOUNCE)
        if deferred and not entry.warned and now - entry.received_at >= self.settings.delay_warning:
            entry.warned = True
            await self._writes.write(functools.partial(self.store.mark_warned, entry.id))
            await self._send_dsn(entry, deferred, body, NoticeKind.DELAY)
        if relayed and entry.dsn is not None and entry.dsn.recipients:
            await self._send_dsn(entry, relayed, body, NoticeKind.RELAYED)

    async def _body_missing(self, entry: Entry) -> None:
        """The message has no data to send: deleted meanwhile, or its body row is gone."""
        entry.recipients.clear()
        if self.store.load_pending_message(entry.id) is None:
            return  # deleted by an admin since it was scheduled: nothing to do
        # Retrying cannot bring the body back and a bounce could not quote it:
        # hold the message so it stays visible (`queue list`) and stops looping.
        log.error("id=%s: message body missing from the queue; message held", entry.id)
        await self._writes.write(functools.partial(self.store.set_hold, entry.id, True))

    def _held_back(self, destination: Destination, now: float) -> bool:
        """Whether `destination` is suspended for throttling now (its mail waits untried)."""
        return self._memory.suspended(self._slots.key_of(destination), now)

    def _skip_held_back(
        self, entry: Entry, due: list[str], now: float, updates: list[RecipientUpdate]
    ) -> set[str]:
        """Don't hammer a destination that just failed or throttles us: defer, untried."""
        skipped: set[str] = set()
        for rcpt in due:
            domain = domain_key(rcpt)
            key = self._slots.key_of(self.engine.destination(domain))
            held = self._memory.held_back(domain, key, now)
            if held is None:
                continue
            pending = entry.recipients[rcpt]
            pending.due = held.until
            skipped.add(rcpt)
            event, update = untried_deferral(entry, rcpt, pending, held.until, held.reason, now)
            observe.emit(event)
            updates.append(update)
        return skipped

    def _learn(
        self, entry: Entry, result: RecipientResult, pending: WaitingRecipient, now: float
    ) -> None:
        """What `result` says of its destination: down, throttling (then suspended), fine."""
        destination = self.engine.destination(domain_key(result.recipient))
        key = self._slots.key_of(destination)
        shape = self._slots.shape(destination)
        suspension = self._memory.learn(result, key, shape, pending.due, now)
        if suspension is None:
            return
        if result.status is Status.DEFERRED:  # tried again when the suspension ends
            pending.due = max(pending.due, suspension.until)
        observe.emit(
            observe.Suspended(
                entry.id, suspension.label, iso(suspension.until),
                round(suspension.until - now, 3), suspension.strikes, suspension.sign,
                suspension.reason,
            )
        )  # fmt: skip
        if self._suspended_to is not None:
            # Off the loop: `queue stats` reads it; a write that fails costs only the listing.
            listed = entries(self.suspensions())
            write = functools.partial(write_suspended, self._suspended_to, listed)
            task = asyncio.create_task(asyncio.to_thread(write))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send_dsn(
        self, entry: Entry, results: Sequence[RecipientResult], body: MessageBody,
        kind: NoticeKind,
    ) -> None:  # fmt: skip
        """Report through the queue itself what each recipient's NOTIFY asks for (RFC 3461);
        never to the null sender (no loops)."""
        request = entry.dsn or NO_DSN
        wanted = [r for r in results if request.of(r.recipient).wants(kind.event)]
        if not wanted:
            if kind is not NoticeKind.RELAYED:  # NOTIFY said no: say that none went
                observe.emit(observe.Notice(entry.id, kind.value, entry.sender, None))
            return
        if not should_bounce(entry.sender):
            observe.emit(observe.Notice(entry.id, kind.value, entry.sender, None))
            return
        notice = entry_notice(
            kind, entry, wanted, body, reporting_mta=self.hostname, now=utc(self._clock()),
            lifetime=self.settings.lifetime,
        )  # fmt: skip
        if notice is None:
            return

        async def queue_notice() -> None:
            dsn_id = await self.enqueue(notice.envelope, notice.data)
            observe.emit(observe.Notice(entry.id, kind.value, entry.sender, dsn_id))

        await self._writes.write(queue_notice)

    # -- admin events ------------------------------------------------------------

    async def _poll_admin(self) -> None:
        while True:
            # At once when the store hears of an event (another node's, a CLI's), else polled.
            await self.store.wait_admin_event(ADMIN_POLL)
            try:
                events = await asyncio.to_thread(self.store.fetch_admin_events, self._admin_cursor)
            except QueueFull:
                continue  # the store has said what is wrong, once; ask again in a second
            except Exception:
                log.exception("reading admin events failed")
                continue
            for event in events:
                self._admin_cursor = max(self._admin_cursor, event.id)
                self._apply_admin(event.message_id, event.action)
                observe.emit(observe.Admin(event.message_id, event.action))

    def _apply_admin(self, message_id: str | None, action: AdminAction) -> None:
        if action in (AdminAction.RETRY, AdminAction.RELEASE, AdminAction.SUBMIT):
            self._note_on_disk(self._clock())  # what it made due may be on disk
        if action is AdminAction.RETRY:  # after a change at the destination: new sessions
            self.engine.forget_idle_sessions()
        if message_id is None:
            # The whole queue changed: the window starts again from the store, in due
            # order, with one read instead of one per message.
            for idle in self._window.idle_ids():
                self._leave(idle)
            self._note_on_disk(self._clock())
        elif message_id in self._in_flight:
            self._stale.add(message_id)
        elif message_id in self._window:
            self._reload(message_id)

    def _reload(self, message_id: str) -> None:
        message = self.store.load_pending_message(message_id)
        if message is None:
            self._leave(message_id)
        else:
            self._adopt(message)

    def in_flight(self) -> list[asyncio.Task[None]]:
        """The deliveries running now (a reload lets them finish on the old engine)."""
        return list(self._in_flight.values())
