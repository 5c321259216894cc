"""Log events: their text and JSON forms, the README's schema, and the metrics they feed."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import re
import sys
import time

import jsonschema
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relaymail.admin.queue_gauges import QueueGauges
from relaymail.delivery.results import AttemptResult, Relay, TlsStep
from relaymail.inbound.refusals import classify
from relaymail.logs import TEXT_FORMAT, JsonFormatter, LineHandler, TextFormatter
from relaymail.metrics import Metrics
from relaymail.observe import (
    Accepted,
    Admin,
    Attempt,
    Delays,
    Delivery,
    DeliveryStatus,
    Direction,
    Expanded,
    InboundConnection,
    LogEvent,
    Notice,
    OutboundConnection,
    PickedUp,
    Rejected,
    RejectReason,
    Suspended,
)
from relaymail.observe.hub import EventRecord, emit
from relaymail.observe.render import json_fields, json_line, text_line
from relaymail.queue.memory import MemoryStore
from relaymail.queue.store import AdminAction
from relaymail.tls.policy import Action, Event, Level
from tests.log_schema import EVERY_EVENT, README, documented_events, schema

FALLBACK = TlsStep(
    Level.MAY, Event.TEMPFAIL, Action.CONTINUE_CLEAR, AttemptResult.CONTINUED_CLEAR,
    "STARTTLS refused with a 4xx reply (454 4.7.0 TLS not available); tempfail_fallback is on",
)  # fmt: skip
RELAY = Relay("mx.dest.test", "192.0.2.7", 25)
SENT = Delivery(
    "1K3F2A9QZ8", "u@dest.test", DeliveryStatus.SENT, sender="a@src.test", relay=RELAY,
    delay=1.234, delays=Delays(0.012, 0.0, 0.05, 1.17), dsn="2.0.0", tls="clear",
    policy="may(default)", decision=FALLBACK, reply="250 2.0.0 Ok: queued as RCV1",
    reason="accepted by mx.dest.test:25",
)  # fmt: skip

# One of each event, every optional fact given.
SAMPLES: list[LogEvent] = [
    SENT,
    Attempt("1K3F2A9QZ8", "dest.test", RELAY, "mx.dest.test:25", AttemptResult.CONTINUED_CLEAR,
            "clear", "may(default)", FALLBACK, "454 4.7.0 TLS not available"),
    Accepted("1K3F2A9QZ8", "127.0.0.1", "client.test", "alice", "<m@client.test>", "a@src.test",
             412, 2, "TLSv1.3", folded=1),
    Rejected(None, "127.0.0.1", RejectReason.RELAY_DENIED, 554, "RCPT TO:<x@elsewhere>",
             "554 5.7.1 Relay access denied", "source routing"),
    PickedUp("1K3F2A9QZ8", 1000, "ann", "ann@example.org", 300, "<m@example.org>"),
    Expanded("1K3F2A9QZ8", "root@example.org", ("admin@example.net", "ops@example.org")),
    Admin("1K3F2A9QZ8", AdminAction.HOLD),
    Notice("1K3F2A9QZ8", "bounce", "a@src.test", "1K3F2B0000"),
    Suspended("1K3F2A9QZ8", "mx:.google.com", "2026-12-01T13:21:00Z", 60.0, 1,
              "gmail rate limit", "421 4.7.28 Gmail has rate limited this sender"),
    InboundConnection(Direction.OPENED, "127.0.0.1"),
    OutboundConnection(Direction.CLOSED, "192.0.2.7", 25),
]  # fmt: skip


def test_the_delivery_line_has_postfix_fields_in_postfix_order() -> None:
    assert text_line(SENT) == (
        "1K3F2A9QZ8: to=<u@dest.test>, from=<a@src.test>, relay=mx.dest.test[192.0.2.7]:25, "
        "delay=1.2, delays=0.01/0/0.05/1.2, dsn=2.0.0, tls=clear, policy=may(default), "
        "decision=continued-clear: STARTTLS refused with a 4xx reply (454 4.7.0 TLS not "
        "available); tempfail_fallback is on, status=sent (250 2.0.0 Ok: queued as RCV1)"
    )


def test_the_null_sender_is_shown_as_empty_brackets_not_left_out() -> None:
    bounce = dataclasses.replace(SENT, sender="")
    assert ", from=<>, " in text_line(bounce)
    assert json_fields(bounce)["from"] == ""


def test_a_line_without_a_queue_id_says_noqueue_and_leaves_out_absent_facts() -> None:
    refused = Rejected(None, None, RejectReason.SYNTAX, 500, "-", "500 5.5.2 Syntax error")
    line = "NOQUEUE: command=-, reason=syntax, code=500 (500 5.5.2 Syntax error)"
    assert text_line(refused) == line


def test_json_has_the_facts_as_typed_keys() -> None:
    fields = json_fields(SENT)
    assert fields["event"] == "delivery" and fields["id"] == "1K3F2A9QZ8"
    assert (fields["to"], fields["status"], fields["dsn"]) == ("u@dest.test", "sent", "2.0.0")
    assert fields["delay"] == 1.234 and fields["relay"] == "mx.dest.test[192.0.2.7]:25"
    assert fields["reply"] == "250 2.0.0 Ok: queued as RCV1" and fields["orig_to"] is None
    assert json_fields(SAMPLES[5])["to"] == ["admin@example.net", "ops@example.org"]


HOSTILE = "250 ok\r\nFAKE: to=<v@x>, status=sent\x1b[2K\x1b[31m\x7f\x85\u2028\x00 é"


@pytest.mark.parametrize("event", [
    Delivery("Q1", "u@d.test", DeliveryStatus.SENT, reply=HOSTILE),
    Rejected(None, "127.0.0.1", RejectReason.SYNTAX, 500, HOSTILE, "500 x"),
    Accepted("Q1", "127.0.0.1", HOSTILE, None, HOSTILE, HOSTILE, 1, 1, "clear"),
])  # fmt: skip
def test_control_characters_from_outside_never_reach_a_line(event: LogEvent) -> None:
    text = text_line(event)
    assert text.isprintable() and len(text.splitlines()) == 1
    assert "\\r\\nFAKE: to=<v@x>, status=sent\\x1b[2K" in text
    line = json_line(json_fields(event))
    assert line.isascii() and line.isprintable() and len(line.splitlines()) == 1
    assert HOSTILE in json.loads(line).values()  # the value itself, unchanged


def test_the_json_formatter_writes_events_as_facts_and_other_records_as_messages() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("relaymail.delivery", logging.INFO, "", 0, "%s", ("x",), None)
    record.event = SENT
    entry = json.loads(formatter.format(record))
    assert "message" not in entry and entry["logger"] == "relaymail.delivery"
    jsonschema.validate(entry, schema())
    plain = logging.LogRecord("relaymail.daemon", logging.INFO, "", 0, "stopped", (), None)
    assert json.loads(formatter.format(plain))["message"] == "stopped"


def _record_at(created: float) -> logging.LogRecord:
    record = logging.LogRecord("relaymail.daemon", logging.WARNING, "", 0, "stopped", (), None)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    return record


def test_the_text_formatter_writes_the_standard_formatters_line_for_any_instant() -> None:
    standard, ours = logging.Formatter(TEXT_FORMAT), TextFormatter()
    # Same second twice (the stamp is reused), the next one, back again, another day.
    for created in (1764595201.532, 1764595201.999, 1764595202.0, 1764595201.001, 1764681601.25):
        assert ours.format(_record_at(created)) == standard.format(_record_at(created))


def test_the_json_time_is_utc_with_milliseconds_for_any_instant() -> None:
    formatter = JsonFormatter()
    for created in (1764595201.532, 1764595201.007, 1764595262.5):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        expected = f"{stamp}.{int((created - int(created)) * 1000):03d}Z"
        assert json.loads(formatter.format(_record_at(created)))["time"] == expected


def test_an_event_record_has_what_any_format_asks_for_and_renders_its_line_once() -> None:
    record = EventRecord("relaymail.delivery", logging.INFO, SENT)
    assert TextFormatter().format(record) == logging.Formatter(TEXT_FORMAT).format(record)
    every = logging.Formatter(
        "%(name)s %(levelname)s %(levelno)d %(pathname)s %(filename)s %(module)s %(lineno)d"
        " %(funcName)s %(created)f %(msecs)d %(relativeCreated)d %(thread)d %(threadName)s"
        " %(processName)s %(process)d %(message)s"
    )
    line = every.format(record)
    assert line.startswith("relaymail.delivery INFO 20 ") and line.endswith(text_line(SENT))
    assert record.getMessage() is record.getMessage()  # rendered once for every handler


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_emit_hands_the_event_to_its_loggers_handlers_at_its_level() -> None:
    handler = _Collect()
    records = handler.records
    logger = logging.getLogger("relaymail.suspended")
    logger.addHandler(handler)
    try:
        emit(SAMPLES[8])  # Suspended: a warning
        logger.setLevel(logging.ERROR)
        emit(SAMPLES[8])  # below the logger's level: not even made
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert [(r.name, r.levelno) for r in records] == [("relaymail.suspended", logging.WARNING)]
    assert records[0].event is SAMPLES[8] and records[0].getMessage() == text_line(SAMPLES[8])


def test_the_readme_table_lists_every_event_and_every_field_in_order() -> None:
    documented = documented_events()
    common = [key for key, _, _ in documented.pop(EVERY_EVENT)]
    assert common == ["event", "id", "time", "level", "logger"]
    assert sorted(documented) == sorted({type(e).name for e in SAMPLES})
    assert sorted(documented) == sorted({c.name for c in _event_classes()})
    for event in SAMPLES:
        assert [key for key, _, _ in documented[event.name]] == [
            name for name, _, _ in event.fields()
        ]


def test_every_sample_fits_the_documented_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema())
    for event in SAMPLES:
        entry = {"time": "2026-12-01T13:20:01.532Z", "level": "info",
                 "logger": f"relaymail.{event.name}", **json_fields(event)}  # fmt: skip
        validator.validate(entry)
    wrong = {**json_fields(SENT), "time": "t", "level": "info", "logger": "x", "size": 1}
    assert not validator.is_valid(wrong)  # no key the table does not list


def _event_classes() -> list[type[LogEvent]]:
    # dataclass(slots=True) replaces each class, and the replaced one may linger here.
    return [c for c in LogEvent.__subclasses__() if hasattr(c, "name")]


# --------------------------------------------------------------------------- refusal reasons


@pytest.mark.parametrize(("reply", "explained", "expected"), [
    ("554 5.7.1 Relay access denied", None, RejectReason.RELAY_DENIED),
    ("552 5.3.4 Message size exceeds fixed maximum message size", None,
     RejectReason.MESSAGE_TOO_BIG),
    ("554 5.4.6 Too many Received: headers, mail loop detected", None, RejectReason.MAIL_LOOP),
    ("452 4.5.3 Too many recipients", None, RejectReason.TOO_MANY_RECIPIENTS),
    ("553 5.1.3 Bad recipient address syntax", None, RejectReason.BAD_ADDRESS),
    ("535 5.7.8 Authentication credentials invalid", None, RejectReason.AUTH_FAILED),
    ("503 5.5.1 Error: need MAIL command", None, RejectReason.BAD_SEQUENCE),
    ("500 5.5.1 Command not recognized", None, RejectReason.UNKNOWN_COMMAND),
    ("530 5.7.0 Must issue a STARTTLS command first", RejectReason.TLS_REQUIRED,
     RejectReason.TLS_REQUIRED),
    ("500 5.5.2 Line too long", RejectReason.LINE_TOO_LONG, RejectReason.LINE_TOO_LONG),
    ("TLS handshake failed: EOF", RejectReason.TLS_HANDSHAKE_FAILED,
     RejectReason.TLS_HANDSHAKE_FAILED),
    ("599 9.9.9 what", None, RejectReason.OTHER),
])  # fmt: skip
def test_refusals_get_the_reason_their_code_or_their_author_gives(
    reply: str, explained: RejectReason | None, expected: RejectReason
) -> None:
    refusal = classify(reply, explained)
    assert refusal.reason is expected
    assert refusal.code == (int(reply[:3]) if reply[:3].isdigit() else 0)


# --------------------------------------------------------------------------- metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_events_feed_the_metrics_with_bounded_labels() -> None:
    metrics = Metrics()
    deferred = Delivery("Q2", "v@dest.test", DeliveryStatus.DEFERRED, delay=3.0)
    for event in (*SAMPLES, deferred, deferred, InboundConnection(Direction.OPENED, "::1")):
        metrics.observe(event)
    got = samples(metrics)
    assert got[("relaymail_deliveries_total", (("status", "sent"),))] == 1
    assert got[("relaymail_deliveries_total", (("status", "deferred"),))] == 2
    assert got[("relaymail_deliveries_total", (("status", "expired"),))] == 0
    assert got[("relaymail_delivery_seconds_count", ())] == 1  # sent only
    assert got[("relaymail_delivery_seconds_sum", ())] == pytest.approx(1.234)
    decision = (("action", "continue_clear"), ("event", "tempfail"), ("level", "may"))
    assert got[("relaymail_tls_decisions_total", decision)] == 1
    assert got[("relaymail_inbound_rejections_total", (("reason", "relay-denied"),))] == 1
    assert got[("relaymail_inbound_sessions", ())] == 2
    assert got[("relaymail_outbound_connections", ())] == -1  # a close without its open
    labels = {k for (name, labels) in got for k, _ in labels}
    assert labels <= {"status", "level", "event", "action", "reason", "le"}


def test_the_readme_metrics_table_names_what_the_registry_has() -> None:
    text = README.read_text()
    section = text[text.index("\n## Metrics\n") :]
    documented = re.findall(r"^\| `(relaymail_\w+)` \|", section, re.M)
    exposed = [
        family.name + ("_total" if family.type == "counter" else "")
        for family in (*Metrics().registry.collect(), *QueueGauges(MemoryStore()).collect())
    ]
    assert sorted(documented) == sorted(exposed)


def test_the_readme_lists_every_rejection_reason() -> None:
    text = README.read_text()
    paragraph = text[text.index("Rejection reasons (") : text.index("\n## Metrics\n")]
    assert re.findall(r"`([a-z-]+)`", paragraph.split(":", 1)[1]) == [r.value for r in RejectReason]


def test_the_text_formatter_writes_an_exception_as_the_standard_one_does() -> None:
    try:
        raise ValueError("the queue said no")
    except ValueError:
        record = logging.LogRecord(
            "relaymail.daemon", logging.ERROR, "", 0, "failed %s", ("once",), sys.exc_info()
        )
    assert TextFormatter().format(record) == logging.Formatter(TEXT_FORMAT).format(record)
    assert "ValueError: the queue said no" in TextFormatter().format(record)


class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_the_lines_of_one_loop_turn_go_out_in_one_write_at_its_end() -> None:
    stream = _Writes()
    handler = LineHandler(stream)
    log = logging.getLogger("relaymail.test-line-handler")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("one")
        log.warning("two")
        assert stream.writes == []  # kept until the turn ends
        await asyncio.sleep(0)
        assert stream.writes == ["one\ntwo\n"]
        # From a thread without a loop: at once, after what the loop kept.
        log.warning("three")
        await asyncio.to_thread(log.warning, "four")
        assert stream.writes == ["one\ntwo\n", "three\nfour\n"]
        log.warning("five")
        handler.flush()  # as logging.shutdown() at exit
        assert stream.getvalue() == "one\ntwo\nthree\nfour\nfive\n"
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_with_no_loop_running_every_line_is_written_at_once() -> None:
    stream = _Writes()
    handler = LineHandler(stream)
    handler.handle(logging.LogRecord("relaymail.x", logging.INFO, "", 0, "alone", (), None))
    assert stream.writes == ["alone\n"]


class _Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("journald went away")


async def test_a_turn_whose_lines_cannot_be_written_is_reported_once_not_again_every_turn(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = _Broken()
    handler = LineHandler(stream)
    writes: list[int] = []
    original = handler._write_kept

    def counted() -> None:
        writes.append(1)
        original()

    handler._write_kept = counted  # type: ignore[method-assign]
    handler.handle(logging.LogRecord("relaymail.x", logging.INFO, "", 0, "lost", (), None))
    for _ in range(5):
        await asyncio.sleep(0)
    assert writes == [1]  # no loop exception handler logging through it again
    assert "could not be written" in capsys.readouterr().err


def test_lines_kept_for_a_loop_that_closed_are_written_by_the_next_loop() -> None:
    stream = _Writes()
    handler = LineHandler(stream)

    async def log(text: str) -> None:
        handler.handle(logging.LogRecord("relaymail.x", logging.INFO, "", 0, text, (), None))

    loop = asyncio.new_event_loop()
    record = logging.LogRecord("relaymail.x", logging.INFO, "", 0, "early", (), None)
    loop.call_soon(lambda: (handler.handle(record), loop.stop()))  # the loop's last turn
    loop.run_forever()
    loop.close()  # the turn's end never came
    assert stream.writes == []

    async def next_loop() -> None:
        await log("later")
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert stream.getvalue() == "early\nlater\n"
