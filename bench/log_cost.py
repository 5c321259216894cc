"""The cost of one log event: rendered as text, as JSON, with and without the metrics.

    python3 bench/log_cost.py [--events N]

A message relayed to one recipient makes about six events (accepted, the TLS
attempt line, delivery, and connection events at DEBUG); the daemon's cost per
message is about six times the figure printed here. The end-to-end figure is
bench/run.py with `--baseline-command` pointing at a build without the events.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from relaymail import observe
from relaymail.delivery.results import AttemptResult, Relay, TlsStep
from relaymail.logs import JsonFormatter, TextFormatter
from relaymail.metrics import Metrics
from relaymail.tls.policy import Action, Event, Level

STEP = TlsStep(Level.MAY, Event.VERIFIED, Action.USE_TLS, AttemptResult.TLS, "TLS up")
EVENT = observe.Delivery(
    "1K3F2A9QZ8", "u@dest.example", observe.DeliveryStatus.SENT, sender="a@src.example",
    relay=Relay("mx.dest.example", "192.0.2.7", 25), delay=0.081,
    delays=observe.Delays(0.01, 0.0, 0.05, 0.021), dsn="2.0.0", tls="TLSv1.3/verified",
    policy="may(default level)", decision=STEP, reply="250 2.0.0 Ok: queued as RCV1",
    reason="accepted by mx.dest.example:25",
)  # fmt: skip


def measure(events: int) -> float:
    started = time.perf_counter()
    for _ in range(events):
        observe.emit(EVENT)
    return (time.perf_counter() - started) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    events = parser.parse_args().events
    root = logging.getLogger()
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
    root.handlers[:] = [handler]
    rows = []
    for name, level, formatter, metrics in (
        ("logging off, no metrics", logging.WARNING, None, False),
        ("text", logging.INFO, TextFormatter(), False),
        ("json", logging.INFO, JsonFormatter(), False),
        ("json + metrics", logging.INFO, JsonFormatter(), True),
        ("metrics only", logging.WARNING, None, True),
    ):  # fmt: skip
        root.setLevel(level)
        if formatter is not None:
            handler.setFormatter(formatter)
        unsubscribe = observe.subscribe(Metrics().observe) if metrics else None
        measure(min(events, 1000))  # warm up
        rows.append((name, measure(events)))
        if unsubscribe is not None:
            unsubscribe()
    for name, micros in rows:
        print(f"{name:28} {micros:8.2f} us/event")


if __name__ == "__main__":
    main()
