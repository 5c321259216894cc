"""The retry schedule: an immutable value that says when to try again.

Quick first retries catch greylisting (typically 1-5 minutes) and brief
outages; the interval then grows to hourly so a long-dead destination costs
little. A small jitter spreads retries of a large backlog over time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_INTERVALS = (60.0, 300.0, 900.0, 1800.0, 3600.0)


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    intervals: tuple[float, ...] = DEFAULT_INTERVALS
    jitter: float = 0.1  # fraction of the interval, either way

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
        base = self.intervals[min(max(attempts, 1), len(self.intervals)) - 1]
        spread = base * self.jitter
        return base + (rng or random).uniform(-spread, spread)
