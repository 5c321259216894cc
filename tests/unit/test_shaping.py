"""Traffic shaping: the [shaping] keys, the throttle table, suspensions, and the scheduler
holding destinations and MX groups to their limits on virtual time (tests/unit/virtual_time.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relaymail import observe
from relaymail.config import parse_config
from relaymail.delivery import RecipientResult, Status
from relaymail.errors import ConfigError
from relaymail.queue import RecipientState
from relaymail.routing import Destination
from relaymail.shaping import MxGroup, Shape, ShapingSettings, parse_shaping
from relaymail.slot_table import UNKNOWN, Limits, SlotTable
from relaymail.suspension import Suspensions
from relaymail.suspension_file import entries, read_suspended, write_suspended
from relaymail.throttle import throttle_sign
from tests.unit.test_scheduler import EPOCH, ScriptedEngine, running, settings
from tests.unit.virtual_time import run

GOOGLE = MxGroup("google.com")
GMAIL = Destination("gmail.com", routed=False)
HOSTED = Destination("hosted.example", routed=False)
OTHER = Destination("other.example", routed=False)


def shaping(raw: dict[str, dict[str, object]]) -> ShapingSettings:
    return parse_config({"shaping": raw}).shaping


# -- configuration ---------------------------------------------------------------


def test_a_domain_entry_takes_what_it_leaves_out_from_its_group_then_the_default() -> None:
    config = shaping({
        "*": {"max_messages_per_connection": 50, "backoff_max": "2h"},
        "mx:.google.com": {"max_connections": 10, "max_messages_per_minute": 300},
        "gmail.com": {"max_connections": 4},
    })  # fmt: skip
    assert config.shape("gmail.com", GOOGLE) == Shape(4, 300, 50, 60.0, 7200.0)
    assert config.group_shape(GOOGLE) == Shape(10, 300, 50, 60.0, 7200.0)
    assert config.shape("other.example", None) == Shape(None, None, 50, 60.0, 7200.0)
    assert config.group_of(["alt1.gmail-smtp-in.l.google.com"]) == GOOGLE
    assert config.group_of(["mx.google.com.evil.example", "notgoogle.com"]) is None


def test_the_defaults_limit_no_rate_and_reuse_a_session_for_100_messages() -> None:
    assert parse_config({}).shaping.shape("any.example", None) == Shape(None, None, 100, 60, 3600)


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        ({"*": {"max_conections": 3}}, 'shaping."*".max_conections', "unknown key"),
        ({"gmail.com": {"max_connections": 0}}, 'shaping."gmail.com".max_connections', "between"),
        ({"gmail.com": {"max_connections": True}}, 'shaping."gmail.com".max_connections', "whole"),
        ({"a.example": {"backoff_min": "1h", "backoff_max": "1m"}},
         'shaping."a.example".backoff_min', "above backoff_max"),
        ({"a.example": {"backoff_max": "soon"}}, 'shaping."a.example".backoff_max', "duration"),
        ({"mx:": {}}, 'shaping."mx:"', "MX group"),
        ({"mx:192.0.2.1": {}}, 'shaping."mx:192.0.2.1"', "MX group"),
        ({"not a domain": {}}, 'shaping."not a domain"', "not a valid host name"),
        ({"192.0.2.1": {}}, 'shaping."192.0.2.1"', "must be a domain"),
        ({"a.example": 3}, 'shaping."a.example"', "must be a table"),
        ({"mx:.google.com": {}, "mx:google.com": {}}, 'shaping."mx:google.com"', "same MX group"),
    ],
)  # fmt: skip
def test_a_broken_shaping_entry_is_refused_naming_its_key(
    raw: dict[str, object], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_shaping(raw)
    assert caught.value.key == key
    assert reason in caught.value.reason


# -- the throttle table ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "sign"),
    [
        ("421 4.7.0 Try again later, closing connection.", "421 service not available"),
        ("421-4.7.28 Our system has detected an unusual rate of unsolicited mail",
         "gmail rate limit"),
        ("451 4.7.28 [192.0.2.1] Gmail has rate limited this sender", "gmail rate limit"),
        ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred", "yahoo deferral"),
        ("451 4.7.500 Server busy. Please try again later from [192.0.2.1]",
         "microsoft server busy"),
        ("450 4.2.1 too many messages from you, slow down", "too many messages"),
        ("451 4.7.1 Service unavailable - try again later", "451 4.7.x"),
        ("451 4.7.1 Greylisted, please try again in 300 seconds", None),
        ("450 4.2.0 mailbox busy", None),
        ("550 5.7.28 rate limited forever", None),  # permanent: a bounce, not a back-off
        ("250 2.0.0 Ok", None),
    ],
)  # fmt: skip
def test_throttling_replies_are_known_by_the_table(reply: str, sign: str | None) -> None:
    found = throttle_sign(reply)
    assert (found.name if found else None) == sign


# -- suspensions ---------------------------------------------------------------------


def test_each_throttling_after_a_resume_doubles_the_suspension_up_to_backoff_max() -> None:
    suspensions = Suspensions()
    shape = Shape(backoff_min=60.0, backoff_max=200.0)
    waits = []
    now = 0.0
    for _ in range(4):
        suspension = suspensions.throttled(GMAIL, shape, "421 busy", now, "421")
        assert suspension is not None
        waits.append(suspension.until - now)
        assert suspensions.throttled(GMAIL, shape, "421 busy", now + 1, "421") is None  # same
        now = suspension.until + 1
    assert waits == [60.0, 120.0, 200.0, 200.0]
    suspensions.delivered(GMAIL, now)
    again = suspensions.throttled(GMAIL, shape, "421 busy", now, "421")
    assert again is not None and again.until - now == 60.0


def test_mail_accepted_while_suspended_does_not_end_the_suspension() -> None:
    suspensions = Suspensions()
    suspensions.throttled(GMAIL, Shape(), "421 busy", 0.0, "421")
    suspensions.delivered(GMAIL, 5.0)
    assert suspensions.active(GMAIL, 5.0) is not None


# -- the slot table -----------------------------------------------------------------


def test_an_mx_group_shares_its_connections_among_its_domains() -> None:
    config = shaping({"mx:.google.com": {"max_connections": 2}})
    groups = {GMAIL: GOOGLE, HOSTED: GOOGLE}
    table = SlotTable(Limits(100, 20, config), lambda d: groups.get(d))
    assert table.grant([GMAIL]) is not None and table.grant([HOSTED]) is not None
    assert table.grant([GMAIL]) is None and table.grant([HOSTED]) is None
    assert table.grant([OTHER]) is not None
    assert (table.in_use(GOOGLE), table.in_use(GMAIL), table.in_use(OTHER)) == (2, 1, 1)


def test_a_destination_whose_group_is_unknown_gets_one_slot_until_it_is_learnt() -> None:
    config = shaping({"mx:.google.com": {"max_connections": 5}})
    table = SlotTable(Limits(100, 20, config), lambda d: UNKNOWN)
    first = table.grant([GMAIL])
    assert first is not None and table.grant([GMAIL]) is None
    table.group_of = lambda d: GOOGLE
    assert table.grant([GMAIL]) is not None


def test_the_minute_of_a_rate_limited_destination_is_a_sliding_window() -> None:
    config = shaping({"gmail.com": {"max_messages_per_minute": 2}})
    table = SlotTable(Limits(100, 20, config))
    for now in (0.0, 30.0):
        grant = table.grant([GMAIL], now)
        assert grant is not None
        table.release(grant)
    assert table.grant([GMAIL], 59.0) is None
    assert table.wait_until([GMAIL], 59.0) == 60.0
    assert table.grant([GMAIL], 60.0) is not None


# -- the scheduler ------------------------------------------------------------------


def test_messages_per_minute_are_never_exceeded_in_any_minute() -> None:
    async def main() -> None:
        config = shaping({"gmail.com": {"max_messages_per_minute": 10}})
        engine = ScriptedEngine({}, slow={"gmail.com": 0.5}, shaping=config)
        async with running({}, engine=engine) as queue:
            for n in range(35):
                await queue.enqueue(f"u{n}@gmail.com")
            await queue.enqueue("bob@other.example")
            await asyncio.sleep(1000)
        starts = [t.at for t in engine.tried if "@gmail.com" in t.recipients[0]]
        assert len(starts) == 35  # each message once
        busiest = max(sum(s <= t < s + 60 for t in starts) for s in starts)
        assert busiest == 10
        assert [sum(m * 60 <= t < (m + 1) * 60 for t in starts) for m in range(4)] == [10] * 3 + [5]
        assert engine.times_for("bob@other.example") == [0.0]  # other destinations do not wait

    run(main())


def test_max_connections_of_a_destination_and_of_its_mx_group_are_never_exceeded() -> None:
    async def main() -> None:
        config = shaping({
            "mx:.google.com": {"max_connections": 3},
            "gmail.com": {"max_connections": 2},
        })  # fmt: skip
        slow = {"gmail.com": 10.0, "hosted.example": 10.0, "other.example": 10.0}
        groups = {"gmail.com": GOOGLE, "hosted.example": GOOGLE}
        engine = ScriptedEngine({}, slow=slow, shaping=config, groups=groups)
        async with running({}, engine=engine) as queue:
            for n in range(10):
                for domain in slow:
                    await queue.enqueue(f"u{n}@{domain}")
            await asyncio.sleep(1000)
        assert len(engine.tried) == 30
        assert engine.peak("gmail.com") == 2
        assert engine.peak("gmail.com", "hosted.example") == 3
        assert engine.peak("other.example") == 10  # not shaped: all at once

    run(main())


def throttled(rcpt: str) -> RecipientResult:
    reply = "421 4.7.0 Try again later"
    return RecipientResult(rcpt, Status.DEFERRED, reply, "mx.gmail.com", reply)


def test_a_throttling_reply_suspends_the_destination_once_then_it_resumes() -> None:
    async def main() -> None:
        config = shaping({"gmail.com": {"backoff_min": "5m"}})
        engine = ScriptedEngine({"a@gmail.com": [throttled]}, shaping=config)
        events: list[observe.LogEvent] = []
        unsubscribe = observe.subscribe(events.append)
        try:
            async with running({}, settings(), engine=engine) as queue:
                await queue.enqueue("a@gmail.com")
                await asyncio.sleep(10)
                waiting = [await queue.enqueue(f"u{n}@gmail.com") for n in range(3)]
                await queue.enqueue("bob@other.example")
                await asyncio.sleep(1)
                assert [t.recipients for t in engine.tried] == [("a@gmail.com",),
                                                                 ("bob@other.example",)]
                [suspension] = queue.scheduler.suspensions()
                assert (suspension.label, suspension.until) == ("gmail.com", EPOCH + 300)
                detail = queue.store.get_message(waiting[0])
                assert detail is not None
                [rcpt] = detail.recipients
                assert (rcpt.state, rcpt.attempts) == (RecipientState.DEFERRED, 0)
                assert rcpt.last_error is not None and "suspended: throttled" in rcpt.last_error
                await asyncio.sleep(600)
                assert queue.scheduler.suspensions() == []
        finally:
            unsubscribe()
        suspended = [e for e in events if isinstance(e, observe.Suspended)]
        assert [(e.destination, e.seconds, e.strikes) for e in suspended] == [("gmail.com", 300, 1)]
        assert sorted(engine.times_for("a@gmail.com")) == [0.0, 300.0]
        assert all(engine.times_for(f"u{n}@gmail.com") == [300.0] for n in range(3))

    run(main())


def test_a_throttling_reply_suspends_the_whole_mx_group() -> None:
    async def main() -> None:
        config = shaping({"mx:.google.com": {"backoff_min": "2m"}})
        groups = {"gmail.com": GOOGLE, "hosted.example": GOOGLE}
        engine = ScriptedEngine({"a@gmail.com": [throttled]}, shaping=config, groups=groups)
        async with running({}, engine=engine) as queue:
            await queue.enqueue("a@gmail.com")
            await asyncio.sleep(10)
            await queue.enqueue("b@hosted.example")
            await asyncio.sleep(1)
            assert [s.label for s in queue.scheduler.suspensions()] == ["mx:.google.com"]
            await asyncio.sleep(200)
            assert queue.scheduler.suspensions() == []
        assert engine.times_for("b@hosted.example") == [120.0]

    run(main())



def test_queue_stats_reads_the_suspensions_not_over_and_nothing_from_a_broken_file(
    tmp_path: Path,
) -> None:
    suspensions = Suspensions()
    suspensions.throttled(GMAIL, Shape(), "421 busy", 0.0, "421")
    suspensions.throttled(GOOGLE, Shape(backoff_min=10.0), "421 busy", 0.0, "421")
    write_suspended(tmp_path, entries(suspensions.all_active(1.0)))
    assert [e.destination for e in read_suspended(tmp_path, 1.0)] == ["mx:.google.com", "gmail.com"]
    assert [e.destination for e in read_suspended(tmp_path, 30.0)] == ["gmail.com"]
    (tmp_path / "suspended.json").write_text('[{"destination": 1}]')
    assert read_suspended(tmp_path, 1.0) == []
    assert read_suspended(tmp_path / "missing", 1.0) == []


def test_only_destinations_with_a_rate_limit_keep_the_times_of_their_sends() -> None:
    config = shaping({"gmail.com": {"max_messages_per_minute": 100}})
    table = SlotTable(Limits(100, 20, config))
    for _ in range(5):
        for destination in (GMAIL, OTHER):
            grant = table.grant([destination], 1.0)
            assert grant is not None
            table.release(grant)
    assert (table.sent_in_window(GMAIL, 2.0), table.sent_in_window(OTHER, 2.0)) == (5, 0)
    assert table.sent_in_window(GMAIL, 61.0) == 0
