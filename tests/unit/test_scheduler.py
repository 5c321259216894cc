"""The scheduler (Postfix's qmgr) on virtual time: a scripted engine, the memory store.

Retries, lifetimes, delay warnings, dead-destination memory and admin events
on their real schedule (minutes to hours), run in milliseconds: the event
loop's clock jumps to the next timer (tests/unit/virtual_time.py) and the
scheduler's clock follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import pytest

from relaymail import observe
from relaymail.config import QueueSettings
from relaymail.delivery import RecipientResult, Status
from relaymail.errors import QueueFull
from relaymail.message import Envelope
from relaymail.queue import RecipientState, RecipientUpdate
from relaymail.queue.memory import MemoryStore
from relaymail.retry import RetrySchedule
from relaymail.scheduler import Scheduler
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


class ScriptedEngine:
    """Answers each recipient with its script's next answer; accepts once the script is out."""

    def __init__(self, script: Mapping[str, Sequence[Answer]]) -> None:
        self._script = {rcpt: list(answers) for rcpt, answers in script.items()}
        self.tried: list[Tried] = []

    async def deliver(
        self, envelope: Envelope, data: bytes, *, queue_id: str | None = None
    ) -> list[RecipientResult]:
        now = asyncio.get_running_loop().time()
        self.tried.append(Tried(now, envelope.sender, envelope.recipients, data))
        answers = [self._script.get(rcpt) for rcpt in envelope.recipients]
        return [
            (answer.pop(0) if answer else accepted)(rcpt)
            for rcpt, answer in zip(envelope.recipients, answers, strict=True)
        ]

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


def settings(lifetime: float = NEVER, delay_warning: float = NEVER) -> QueueSettings:
    retry = RetrySchedule(intervals=(60.0, 300.0, 900.0), jitter=0.0)
    return QueueSettings(lifetime=lifetime, delay_warning=delay_warning, retry=retry)


@contextlib.asynccontextmanager
async def running(
    script: Mapping[str, Sequence[Answer]],
    queue_settings: QueueSettings | None = None,
    store: MemoryStore | None = None,
) -> AsyncIterator[Queue]:
    loop = asyncio.get_running_loop()
    store = MemoryStore() if store is None else store
    engine = ScriptedEngine(script)
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
