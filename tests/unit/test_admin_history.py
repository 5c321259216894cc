"""The delivery history and the status page's sums: typed rows in, typed rows out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from relaymail.admin.app import authorized
from relaymail.admin.history import (
    ClearReason,
    DeliveryHistory,
    HourCount,
    SessionCount,
    SessionTls,
    session_tls,
)
from relaymail.admin.status import ClearCause, DomainPosture, hour_bars, posture
from relaymail.delivery.results import Attempt, AttemptResult, RecipientResult, Status
from relaymail.tls.context import CLEAR, PolicyJudgement, TlsFacts
from relaymail.tls.policy import Event, Level
from relaymail.tls.verify import VERIFIED

P = "may (default level)"


def judged(event: Event | None, tls: TlsFacts = CLEAR, level: Level = Level.MAY) -> TlsFacts:
    return TlsFacts(
        tls.used, tls.version, tls.cipher, tls.verification,
        judgement=PolicyJudgement(event, level, "default level"),
    )  # fmt: skip


UP = TlsFacts(True, "TLSv1.3", "TLS_AES_256_GCM_SHA384")


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (judged(Event.VERIFIED, TlsFacts(True, "TLSv1.3", None, VERIFIED)),
         (SessionTls.VERIFIED, None, P)),
        (judged(Event.UNVERIFIED, UP), (SessionTls.ENCRYPTED, None, P)),
        (judged(Event.NOT_OFFERED), (SessionTls.CLEAR, ClearReason.NOT_OFFERED, P)),
        (judged(Event.TEMPFAIL), (SessionTls.CLEAR, ClearReason.TEMPFAIL, P)),
        (judged(Event.PERMFAIL), (SessionTls.CLEAR, ClearReason.PERMFAIL, P)),
        (judged(Event.HANDSHAKE_FAILED), (SessionTls.CLEAR, ClearReason.HANDSHAKE_FAILED, P)),
        (judged(Event.INJECTION), (SessionTls.CLEAR, ClearReason.INJECTION, P)),
        (judged(None, level=Level.NONE),
         (SessionTls.CLEAR, ClearReason.NOT_ASKED, "none (default level)")),
        (CLEAR, (SessionTls.NO_SESSION, None, None)),
    ],
)  # fmt: skip
def test_a_sessions_tls_says_how_it_was_protected_why_clear_and_under_which_policy(tls, expected):
    assert session_tls(tls) == expected


def result(rcpt: str, status: Status, tls: TlsFacts, reply: str = "250 ok") -> RecipientResult:
    trace = (Attempt("mx.test:25", "192.0.2.1", AttemptResult.CONTINUED_CLEAR, False, "454"),)
    return RecipientResult(rcpt, status, "why", "mx.test:25", reply, tls, trace)


async def test_outcomes_are_written_in_a_batch_and_read_back_typed(tmp_path: Path):
    history = DeliveryHistory(tmp_path)
    now = time.time()
    history.record("1AAAAAAAAAA", result("a@x.test", Status.DELIVERED, judged(Event.TEMPFAIL)),
                   Status.DELIVERED, "sent", now)  # fmt: skip
    history.record("1AAAAAAAAAB", result("b@Y.test", Status.DEFERRED, CLEAR, "451 later"),
                   Status.DEFERRED, "later", now)  # fmt: skip
    assert history.recent(10) == []  # nothing written on the delivery path
    await history.flush()
    first, second = history.recent(10)[::-1]
    assert (first.queue_id, first.domain, first.tls, first.clear_reason) == (
        "1AAAAAAAAAA", "x.test", SessionTls.CLEAR, ClearReason.TEMPFAIL,
    )  # fmt: skip
    assert first.trace == result("a", Status.DELIVERED, CLEAR).attempts
    assert (second.domain, second.status, second.tls, second.reply) == (
        "y.test", Status.DEFERRED, SessionTls.NO_SESSION, "451 later",
    )  # fmt: skip
    assert [e.recipient for e in history.of_message("1AAAAAAAAAB")] == ["b@Y.test"]
    assert history.sessions(now - 10) == [
        SessionCount("x.test", SessionTls.CLEAR, ClearReason.TEMPFAIL, P, 1)
    ]  # the deferral had no session: not part of the TLS posture
    history.close()


async def test_old_rows_and_rows_past_the_cap_are_pruned(tmp_path: Path):
    history = DeliveryHistory(tmp_path, retention=3600, max_rows=2)
    now = time.time()
    for n, at in enumerate((now - 7200, now - 3, now - 2, now - 1)):
        history.record(f"1AAAAAAAAA{n}", result(f"u{n}@x.test", Status.DELIVERED, CLEAR),
                       Status.DELIVERED, "sent", at)  # fmt: skip
    await history.flush()
    assert [e.recipient for e in history.recent(10)] == ["u3@x.test", "u2@x.test"]
    history.close()


async def test_a_history_that_cannot_write_costs_rows_never_an_exception(tmp_path: Path):
    history = DeliveryHistory(tmp_path, max_buffered=2)
    for n in range(3):
        history.record(f"1AAAAAAAAA{n}", result("u@x.test", Status.DELIVERED, CLEAR),
                       Status.DELIVERED, "sent", time.time())  # fmt: skip
    history.close()  # every write now fails
    await history.flush()  # logged, not raised
    history.record("1AAAAAAAAAZ", None, Status.DELIVERED, "sent", 0.0)  # type: ignore[arg-type]


async def test_an_unusable_history_file_is_set_aside(tmp_path: Path):
    (tmp_path / "history.db").write_bytes(b"this is not SQLite" * 100)
    history = DeliveryHistory(tmp_path)
    assert history.recent(1) == []
    assert [p.name.startswith("history.db.unusable-") for p in tmp_path.iterdir()].count(True) == 1
    history.close()


def test_hour_bars_cover_the_last_24_hours_with_empty_ones():
    now = 100 * 3600 + 1800.0
    rows = [HourCount(100, Status.DELIVERED, 3), HourCount(99, Status.DEFERRED, 1),
            HourCount(50, Status.BOUNCED, 9)]  # fmt: skip
    bars = hour_bars(rows, now)
    assert len(bars) == 24 and bars[-1].start == 100 * 3600 and bars[0].start == 77 * 3600
    assert bars[-1].counts == {Status.DELIVERED: 3, Status.DEFERRED: 0, Status.BOUNCED: 0}
    assert bars[-2].counts[Status.DEFERRED] == 1
    assert sum(sum(b.counts.values()) for b in bars) == 4  # hour 50 is out of the window


def test_posture_sums_by_domain_busiest_first_with_the_reasons_for_clear():
    rows = [
        SessionCount("a.test", SessionTls.VERIFIED, None, P, 5),
        SessionCount("b.test", SessionTls.CLEAR, ClearReason.TEMPFAIL, P, 2),
        SessionCount("b.test", SessionTls.CLEAR, ClearReason.NOT_OFFERED, P, 3),
        SessionCount("b.test", SessionTls.ENCRYPTED, None, P, 1),
    ]
    assert posture(rows) == (
        DomainPosture("b.test", 0, 1, 5, (
            ClearCause(ClearReason.NOT_OFFERED, P, 3),
            ClearCause(ClearReason.TEMPFAIL, P, 2),
        )),
        DomainPosture("a.test", 5, 0, 0),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer 0123456789abcdef", True),
        ("bearer   0123456789abcdef ", True),
        ("Basic YWRtaW46MDEyMzQ1Njc4OWFiY2RlZg==", True),  # admin:0123456789abcdef
        ("Basic OjAxMjM0NTY3ODlhYmNkZWY=", True),  # no user name
        ("Bearer 0123456789abcdeF", False),
        ("Bearer 0123456789abcde", False),
        ("Basic MDEyMzQ1Njc4OWFiY2RlZg==", False),  # the token as user name, no password
        ("Basic !!!", False),
        ("Token 0123456789abcdef", False),
        ("0123456789abcdef", False),
        ("Bearer \u00ff\u00fe", False),
        (None, False),
    ],
)
def test_the_token_is_taken_from_bearer_or_basic_only(header, ok):
    assert authorized(header, "0123456789abcdef") is ok
