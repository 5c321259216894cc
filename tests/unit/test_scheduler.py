"""The scheduler (Postfix's qmgr) on virtual time: a scripted engine, the memory store.

Retries, lifetimes, delay warnings, dead-destination memory and admin events
on their real schedule (minutes to hours), run in milliseconds: the event
loop's clock jumps to the next timer (tests/unit/virtual_time.py) and the
scheduler's clock follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import pytest

from relaymail import observe
from relaymail.body import MessageBody
from relaymail.config_queue import QueueSettings
from relaymail.delivery import RecipientResult, Status
from relaymail.dsn_request import DsnRequest, Notify, RecipientDsn
from relaymail.errors import QueueFull
from relaymail.message import Envelope, domain_of
from relaymail.queue import RecipientState, RecipientUpdate
from relaymail.queue.memory import MemoryStore
from relaymail.retry import RetrySchedule
from relaymail.routing import Destination
from relaymail.scheduler import Scheduler
from relaymail.shaping import MxGroup, ShapingSettings
from tests.unit.virtual_time import run

EPOCH = 1_700_000_000.0  # the scheduler's wall clock when the test begins
ALICE = "alice@example.org"
BOB = "bob@example.com"
CAROL = "carol@example.com"
BODY = b"Subject: hello\r\n\r\nbody\r\n"
NEVER = 10**9  # seconds: a lifetime or warning delay a test does not reach

Answer = Callable[[str], RecipientResult]


def greylisted(rcpt: str) -> RecipientResult:
    return RecipientResult(
        rcpt, Status.DEFERRED, "451 4.7.1 greylisted", "mx.example.com", "451 4.7.1 greylisted"
    )


def unreachable(rcpt: str) -> RecipientResult:
    """No host answered: the kind of failure remembered for the whole destination."""
    return RecipientResult(rcpt, Status.DEFERRED, "connection refused", None, None)


def accepted(rcpt: str) -> RecipientResult:
    return RecipientResult(rcpt, Status.DELIVERED, "250 2.0.0 ok", "mx.example.com", "250 2.0.0 ok")


@dataclass(frozen=True, slots=True)
class Tried:
    at: float  # seconds since the test began
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    requiretls: bool = False


class ScriptedEngine:
    """Answers each recipient with its script's next answer; accepts once the script is out.

    A delivery to a domain in `slow` takes that many seconds. `groups` are the
    destinations' MX groups, as a real engine learns them by routing.
    """

    def __init__(
        self,
        script: Mapping[str, Sequence[Answer]],
        slow: Mapping[str, float] | None = None,
        destination_concurrency: int = 20,
        shaping: ShapingSettings | None = None,
        groups: Mapping[str, MxGroup] | None = None,
    ) -> None:
        self._script = {rcpt: list(answers) for rcpt, answers in script.items()}
        self._slow = slow or {}
        self.destination_concurrency = destination_concurrency
        self.shaping = shaping or ShapingSettings()
        self._groups = groups or {}
        self.tried: list[Tried] = []
        self._changes: list[tuple[float, int, frozenset[str]]] = []  # deliveries start, end

    @staticmethod
    def destination(domain: str) -> Destination:
        return Destination(domain, routed=False)

    def shaping_group(self, destination: Destination) -> MxGroup | None:
        return self._groups.get(destination.name)

    def forget_idle_sessions(self) -> None:
        """A scripted engine keeps no sessions."""

    async def deliver(
        self, envelope: Envelope, body: MessageBody, *, queue_id: str | None = None
    ) -> list[RecipientResult]:
        now = asyncio.get_running_loop().time()
        self.tried.append(
            Tried(now, envelope.sender, envelope.recipients, body.read_all(), envelope.requiretls)
        )
        domains = frozenset(domain_of(r) for r in envelope.recipients)
        self._changes.append((now, 1, domains))
        await asyncio.sleep(max(self._slow.get(domain_of(r), 0.0) for r in envelope.recipients))
        self._changes.append((asyncio.get_running_loop().time(), -1, domains))
        answers = [self._script.get(rcpt) for rcpt in envelope.recipients]
        return [
            (answer.pop(0) if answer else accepted)(rcpt)
            for rcpt, answer in zip(envelope.recipients, answers, strict=True)
        ]

    def peak(self, *domains: str) -> int:
        """The most deliveries to any of `domains` that ran at once."""
        most = now = 0
        for _, change, to in sorted(self._changes, key=lambda c: (c[0], c[1])):
            if to & set(domains):
                now += change
                most = max(most, now)
        return most

    def times_for(self, rcpt: str) -> list[float]:
        return [t.at for t in self.tried if rcpt in t.recipients]


class RefusingStore(MemoryStore):
    """A store whose disk is full while `refusing` is set: every write raises QueueFull."""

    refusing = False

    async def record(self, updates: Sequence[RecipientUpdate]) -> None:
        if self.refusing:
            raise QueueFull("queue storage disk full")
        await super().record(updates)


@dataclass(slots=True)
class Queue:
    store: MemoryStore
    engine: ScriptedEngine
    scheduler: Scheduler

    async def enqueue(self, *recipients: str) -> str:
        return await self.scheduler.enqueue(Envelope(ALICE, recipients), BODY)

    def dsns(self) -> list[Tried]:
        return [t for t in self.engine.tried if t.sender == ""]


def settings(lifetime: float = NEVER, delay_warning: float = NEVER, **limits: int) -> QueueSettings:
    retry = RetrySchedule(intervals=(60.0, 300.0, 900.0), jitter=0.0)
    return QueueSettings(lifetime=lifetime, delay_warning=delay_warning, retry=retry, **limits)


@contextlib.asynccontextmanager
async def running(
    script: Mapping[str, Sequence[Answer]],
    queue_settings: QueueSettings | None = None,
    store: MemoryStore | None = None,
    engine: ScriptedEngine | None = None,
) -> AsyncIterator[Queue]:
    loop = asyncio.get_running_loop()
    store = MemoryStore() if store is None else store
    engine = ScriptedEngine(script) if engine is None else engine
    scheduler = Scheduler(
        store,
        engine,  # type: ignore[arg-type]
        queue_settings or settings(),
        hostname="relay.example.org",
        clock=lambda: EPOCH + loop.time(),
    )
    task = asyncio.create_task(scheduler.run())
    try:
        yield Queue(store, engine, scheduler)
    finally:
        await scheduler.stop(1.0)
        await task


def at(*seconds: float) -> object:
    return pytest.approx(list(seconds), abs=1e-3)


# -- retries and lifetime ----------------------------------------------------


def test_a_deferred_recipient_is_retried_on_the_schedule_until_it_is_accepted() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted] * 3}) as queue:
            message_id = await queue.enqueue(BOB)
            await asyncio.sleep(100)
            detail = queue.store.get_message(message_id)
            assert detail is not None
            [bob] = detail.recipients
            assert (bob.state, bob.attempts, bob.last_reply) == (
                RecipientState.DEFERRED,
                2,
                "451 4.7.1 greylisted",
            )
            assert bob.next_attempt == pytest.approx(EPOCH + 360, abs=1e-3)

            await asyncio.sleep(1200)
            assert queue.engine.times_for(BOB) == at(0, 60, 360, 1260)
            assert queue.store.get_message(message_id) is None
            assert queue.dsns() == []

    run(main())


def test_the_interval_stays_at_the_last_one_of_the_schedule() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted] * 4}) as queue:
            await queue.enqueue(BOB)
            await asyncio.sleep(2200)
            assert queue.engine.times_for(BOB) == at(0, 60, 360, 1260, 2160)

    run(main())


def test_a_recipient_still_deferred_at_its_lifetime_bounces_to_the_sender() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted] * 10}, settings(lifetime=1000)) as queue:
            message_id = await queue.enqueue(BOB)
            await asyncio.sleep(1300)
            assert queue.engine.times_for(BOB) == at(0, 60, 360, 1260)
            [bounce] = queue.dsns()
            assert (bounce.at, bounce.recipients) == (pytest.approx(1260, abs=1e-3), (ALICE,))
            assert b"Action: failed" in bounce.data
            assert queue.store.get_message(message_id) is None

    run(main())


def test_each_attempt_is_one_delivery_event_and_the_last_one_says_expired() -> None:
    events: list[observe.LogEvent] = []

    async def main() -> None:
        async with running({BOB: [greylisted] * 10}, settings(lifetime=1000)) as queue:
            message_id = await queue.enqueue(BOB)
            await asyncio.sleep(1300)
            outcomes = [e for e in events if isinstance(e, observe.Delivery) and e.to == BOB]
            assert {e.queue_id for e in outcomes} == {message_id}
            assert [e.status for e in outcomes] == [observe.DeliveryStatus.DEFERRED] * 3 + [
                observe.DeliveryStatus.EXPIRED
            ]
            assert [e.delay for e in outcomes] == at(0, 60, 360, 1260)
            assert [e.delays.in_queue for e in outcomes if e.delays] == at(0, 60, 360, 1260)
            assert outcomes[-1].reply == "451 4.7.1 greylisted"
            assert outcomes[-1].reason.startswith("gave up after ")
            [notice] = [e for e in events if isinstance(e, observe.Notice)]
            assert (notice.queue_id, notice.kind, notice.to) == (message_id, "bounce", ALICE)

    unsubscribe = observe.subscribe(events.append)
    try:
        run(main())
    finally:
        unsubscribe()


def test_one_delay_warning_then_silence_until_the_bounce() -> None:
    async def main() -> None:
        script = {BOB: [greylisted] * 10}
        async with running(script, settings(lifetime=1000, delay_warning=300)) as queue:
            message_id = await queue.enqueue(BOB)
            await asyncio.sleep(400)
            detail = queue.store.get_message(message_id)
            assert detail is not None and detail.warned
            [warning] = queue.dsns()
            assert (warning.at, warning.recipients) == (pytest.approx(360, abs=1e-3), (ALICE,))
            assert b"Action: delayed" in warning.data

            await asyncio.sleep(1000)
            assert [b"Action: delayed" in d.data for d in queue.dsns()] == [True, False]

    run(main())


def test_notify_decides_which_recipients_get_a_warning_and_a_bounce() -> None:
    dave = "dave@example.com"
    asked = DsnRequest(envid="E1").with_recipients(
        [(BOB, RecipientDsn(Notify.FAILURE)),  # no warning, a bounce
         (CAROL, RecipientDsn(Notify.DELAY)),  # a warning, no bounce
         (dave, RecipientDsn(Notify.NEVER))]  # neither
    )  # fmt: skip

    async def main() -> None:
        script = {r: [greylisted] * 10 for r in (BOB, CAROL, dave)}
        async with running(script, settings(lifetime=1000, delay_warning=300)) as queue:
            await queue.scheduler.enqueue(Envelope(ALICE, (BOB, CAROL, dave), dsn=asked), BODY)
            await asyncio.sleep(1300)
            [warning, bounce] = queue.dsns()
            assert b"Action: delayed" in warning.data and b"Action: failed" in bounce.data
            for report, rcpt in ((warning, CAROL), (bounce, BOB)):
                assert report.data.count(b"Final-Recipient:") == 1
                assert f"Final-Recipient: rfc822; {rcpt}".encode() in report.data
                assert b"Original-Envelope-Id: E1" in report.data

    run(main())


def test_a_success_report_only_where_the_next_hop_takes_no_dsn() -> None:
    def passed_on(rcpt: str) -> RecipientResult:
        return dataclasses.replace(accepted(rcpt), dsn_passed_on=True)

    asked = DsnRequest().with_recipients(
        [(BOB, RecipientDsn(Notify.SUCCESS)), (CAROL, RecipientDsn(Notify.SUCCESS))]
    )

    async def main() -> None:
        async with running({CAROL: [passed_on]}) as queue:
            await queue.scheduler.enqueue(Envelope(ALICE, (BOB, CAROL), dsn=asked), BODY)
            await asyncio.sleep(10)
            [relayed] = queue.dsns()
            assert b"Action: relayed" in relayed.data
            assert f"Final-Recipient: rfc822; {BOB}".encode() in relayed.data
            assert relayed.data.count(b"Final-Recipient:") == 1  # not CAROL's

    run(main())


# -- dead destinations -------------------------------------------------------


def test_a_destination_no_host_answered_is_skipped_then_retried_with_the_first() -> None:
    async def main() -> None:
        async with running({BOB: [unreachable]}) as queue:
            first = await queue.enqueue(BOB)
            await asyncio.sleep(10)
            second = await queue.enqueue(CAROL)  # the same destination, example.com
            await asyncio.sleep(1)

            assert queue.engine.times_for(CAROL) == []
            detail = queue.store.get_message(second)
            assert detail is not None
            [carol] = detail.recipients
            assert (carol.state, carol.attempts, carol.last_attempt) == (
                RecipientState.DEFERRED,
                0,
                None,
            )
            assert carol.next_attempt == pytest.approx(EPOCH + 60, abs=1e-3)

            await asyncio.sleep(100)
            assert queue.engine.times_for(BOB) == at(0, 60)
            assert queue.engine.times_for(CAROL) == at(60)
            assert queue.store.get_message(first) is None
            assert queue.store.get_message(second) is None

    run(main())


def test_a_destination_that_answered_is_not_remembered_as_down() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted]}) as queue:
            await queue.enqueue(BOB)
            await asyncio.sleep(10)
            await queue.enqueue(CAROL)
            await asyncio.sleep(1)
            assert queue.engine.times_for(CAROL) == at(10)

    run(main())


# -- admin events from another process ----------------------------------------
# The scheduler looks for them once a second (ADMIN_POLL), at whole seconds here.


def test_a_held_message_waits_until_it_is_released() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted]}) as queue:
            message_id = await queue.enqueue(BOB)
            await asyncio.sleep(10.5)  # between two polls: no tie with one
            assert await queue.store.set_hold(message_id, True)
            await asyncio.sleep(500)
            assert queue.engine.times_for(BOB) == at(0)

            assert await queue.store.set_hold(message_id, False)
            await asyncio.sleep(2)
            assert queue.engine.times_for(BOB) == at(0, 511)
            assert queue.store.get_message(message_id) is None

    run(main())


def test_a_deleted_message_is_not_tried_again() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted]}) as queue:
            message_id = await queue.enqueue(BOB)
            await asyncio.sleep(10.5)  # between two polls: no tie with one
            assert await queue.store.delete(message_id)
            await asyncio.sleep(500)
            assert queue.engine.times_for(BOB) == at(0)
            assert queue.dsns() == []

    run(main())


def test_retry_makes_a_waiting_message_due_at_once() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted]}) as queue:
            message_id = await queue.enqueue(BOB)
            await asyncio.sleep(10.5)  # between two polls: no tie with one
            assert await queue.store.retry(message_id, now=EPOCH + 10.5) == 1
            await asyncio.sleep(2)
            assert queue.engine.times_for(BOB) == at(0, 11)

    run(main())


def test_retry_of_the_whole_queue_makes_every_waiting_message_due() -> None:
    async def main() -> None:
        async with running({BOB: [greylisted], CAROL: [greylisted]}) as queue:
            await queue.enqueue(BOB)
            await queue.enqueue(CAROL)
            await asyncio.sleep(10.5)  # between two polls: no tie with one
            assert await queue.store.retry(None, now=EPOCH + 10.5) == 2
            await asyncio.sleep(2)
            assert (queue.engine.times_for(BOB), queue.engine.times_for(CAROL)) == (
                at(0, 11),
                at(0, 11),
            )

    run(main())


# -- the store refuses a write ------------------------------------------------


def test_an_outcome_the_store_refuses_is_kept_and_never_delivered_twice() -> None:
    async def main() -> None:
        store = RefusingStore()
        async with running({}, store=store) as queue:
            message_id = await queue.enqueue(BOB)
            store.refusing = True  # before the delivery's outcome is written
            await asyncio.sleep(10)
            assert queue.engine.times_for(BOB) == at(0)
            assert len(queue.store.load_pending()) == 1  # the store still has it pending

            # An admin event reloads the message from the store: the outcome
            # waiting in memory keeps BOB from being delivered again.
            assert await store.retry(message_id, now=EPOCH + 10) == 0
            await asyncio.sleep(10)
            assert queue.engine.times_for(BOB) == at(0)

            store.refusing = False
            await asyncio.sleep(2)
            assert queue.store.get_message(message_id) is None
            assert queue.engine.times_for(BOB) == at(0)

    run(main())


# -- the active window and per-destination slots --------------------------------


def test_the_window_never_exceeds_its_limit_and_each_message_is_delivered_once() -> None:
    async def main() -> None:
        recipients = [f"user{n}@d{n % 7}.example" for n in range(60)]
        script = {r: [greylisted] for r in recipients[::5]}  # some come back from disk
        engine = ScriptedEngine(script, slow={f"d{n}.example": 3.0 for n in range(7)})
        limits = settings(active_limit=5, max_deliveries=3)
        async with running(script, limits, engine=engine) as queue:
            ids = [await queue.enqueue(r) for r in recipients]
            assert queue.scheduler.window_stats().size == 5
            await asyncio.sleep(600)

            stats = queue.scheduler.window_stats()
            assert (stats.size, stats.peak, stats.limit) == (0, 5, 5)
            tries = {r: len(queue.engine.times_for(r)) for r in recipients}
            assert tries == {r: 2 if r in script else 1 for r in recipients}
            assert all(queue.store.get_message(i) is None for i in ids)

    run(main())


def test_mail_queued_while_the_window_is_full_is_found_on_disk_in_arrival_order() -> None:
    async def main() -> None:
        engine = ScriptedEngine({}, slow={"example.com": 10.0})
        async with running({}, settings(active_limit=2), engine=engine) as queue:
            rcpts = [f"u{n}@example.com" for n in range(6)]
            for rcpt in rcpts:
                await queue.enqueue(rcpt)
            await asyncio.sleep(100)
            firsts = [queue.engine.times_for(r)[0] for r in rcpts]
            assert firsts == sorted(firsts) and len(queue.engine.tried) == 6
            assert queue.scheduler.window_stats().peak == 2

    run(main())


class CountingStore(MemoryStore):
    """Counts the bodies read back from it."""

    reads = 0

    def open_body(self, message_id: str) -> MessageBody:
        self.reads += 1
        return super().open_body(message_id)


def test_a_delivery_started_on_acceptance_takes_the_data_in_hand_and_a_later_one_reads_it() -> None:
    async def main() -> None:
        store = CountingStore()
        engine = ScriptedEngine({}, slow={"example.com": 10.0})
        async with running({}, settings(max_deliveries=1), store, engine) as queue:
            await queue.enqueue(BOB)  # starts at once
            await queue.enqueue(CAROL)  # waits for the slot
            await asyncio.sleep(1)
            assert queue.scheduler._fresh == {}  # the window holds no body meanwhile
            await asyncio.sleep(30)
            assert [(t.recipients, t.data) for t in engine.tried] == [
                ((BOB,), BODY),
                ((CAROL,), BODY),
            ]
            assert store.reads == 1

    run(main())


def test_a_slow_destination_holds_its_own_slots_and_no_others() -> None:
    async def main() -> None:
        engine = ScriptedEngine({}, slow={"slow.example": 1000.0}, destination_concurrency=2)
        async with running({}, settings(max_deliveries=4), engine=engine) as queue:
            for n in range(6):
                await queue.enqueue(f"u{n}@slow.example")
            await queue.enqueue(BOB)
            await asyncio.sleep(1)

            assert queue.engine.times_for(BOB) == at(0)
            stats = queue.scheduler.window_stats()
            assert (stats.in_flight, stats.parked) == (2, 4)
            await asyncio.sleep(3000)
            assert len(queue.engine.tried) == 7

    run(main())


def test_a_message_to_a_full_and_a_free_destination_goes_to_the_free_one_first() -> None:
    async def main() -> None:
        engine = ScriptedEngine({}, slow={"slow.example": 100.0}, destination_concurrency=1)
        async with running({}, engine=engine) as queue:
            await queue.enqueue("first@slow.example")
            await queue.enqueue("second@slow.example", BOB)
            await asyncio.sleep(1)
            assert queue.engine.times_for(BOB) == at(0)
            assert queue.engine.times_for("second@slow.example") == []
            await asyncio.sleep(300)
            assert queue.engine.times_for("second@slow.example") == at(100)

    run(main())


def test_a_restart_reads_the_earliest_due_messages_up_to_the_limit() -> None:
    async def main() -> None:
        store = MemoryStore()
        ids = [(await store.enqueue(Envelope(ALICE, (f"u{n}@example.com",)), BODY, EPOCH)).id
               for n in range(20)]  # fmt: skip
        engine = ScriptedEngine({}, slow={"example.com": 5.0})
        async with running({}, settings(active_limit=3), store=store, engine=engine) as queue:
            assert queue.scheduler.load() == 20
            await asyncio.sleep(200)
            assert all(queue.store.get_message(i) is None for i in ids)
            assert [t.data for t in queue.engine.tried] == [BODY] * 20
            assert queue.scheduler.window_stats().peak == 3

    run(main())


def unreadable(rcpt: str) -> RecipientResult:
    return RecipientResult(rcpt, Status.DEFERRED, "message body unreadable: disk I/O error",
                           body_unreadable=True)  # fmt: skip


def test_an_unreadable_body_defers_without_marking_the_destination_down() -> None:
    async def main() -> None:
        async with running({BOB: [unreadable]}) as queue:
            first = await queue.enqueue(BOB)
            await asyncio.sleep(10)
            await queue.enqueue(CAROL)  # the same destination
            await asyncio.sleep(1)
            assert queue.engine.times_for(CAROL) == at(10)
            detail = queue.store.get_message(first)
            assert detail is not None and detail.recipients[0].state is RecipientState.DEFERRED
            await asyncio.sleep(100)
            assert queue.engine.times_for(BOB) == at(0, 60)

    run(main())


def test_a_requiretls_message_no_host_took_does_not_mark_the_destination_down() -> None:
    async def main() -> None:
        async with running({BOB: [unreachable]}) as queue:
            flagged = Envelope(ALICE, (BOB,), requiretls=True)
            await queue.scheduler.enqueue(flagged, BODY)
            await asyncio.sleep(10)
            await queue.enqueue(CAROL)  # the same destination, without REQUIRETLS
            await asyncio.sleep(1)
            assert queue.engine.times_for(CAROL) == at(10)
            await asyncio.sleep(100)
            assert [(t.recipients, t.requiretls) for t in queue.engine.tried] == [
                ((BOB,), True), ((CAROL,), False), ((BOB,), True),
            ]  # fmt: skip

    run(main())
