"""The retry schedule: which interval follows which failed attempt, and its jitter."""

from __future__ import annotations

import random

from relaymail.retry import DEFAULT_INTERVALS, RetrySchedule

EXACT = RetrySchedule(intervals=(60.0, 300.0, 900.0), jitter=0.0)


def test_each_failed_attempt_waits_the_next_interval() -> None:
    assert [EXACT.delay(n) for n in (1, 2, 3)] == [60.0, 300.0, 900.0]


def test_after_the_last_interval_the_wait_stays_at_it() -> None:
    assert [EXACT.delay(n) for n in (4, 10, 1000)] == [900.0, 900.0, 900.0]


def test_an_attempt_count_below_one_waits_the_first_interval() -> None:
    assert [EXACT.delay(n) for n in (0, -3)] == [60.0, 60.0]


def test_the_default_schedule_grows_from_a_minute_to_an_hour() -> None:
    schedule = RetrySchedule()
    assert schedule.intervals == DEFAULT_INTERVALS == (60.0, 300.0, 900.0, 1800.0, 3600.0)
    assert schedule.jitter == 0.1


def test_jitter_spreads_the_wait_within_its_fraction_either_way() -> None:
    schedule = RetrySchedule(intervals=(100.0,), jitter=0.1)
    rng = random.Random(7)
    delays = [schedule.delay(1, rng) for _ in range(2000)]

    assert all(90.0 <= d <= 110.0 for d in delays)
    assert min(delays) < 91.0 and max(delays) > 109.0  # both sides are used
    assert len(set(delays)) > 1900


def test_the_same_random_source_gives_the_same_waits() -> None:
    schedule = RetrySchedule()
    first = [schedule.delay(n, random.Random(42)) for n in range(1, 6)]
    again = [schedule.delay(n, random.Random(42)) for n in range(1, 6)]
    assert first == again
