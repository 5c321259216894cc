"""The pages escape everything that came from mail or the network: it is text, never markup."""

from __future__ import annotations

import re

from relaymail.admin.history import ClearReason, HistoryEntry, HourCount, SessionTls
from relaymail.admin.page import message_page, status_page
from relaymail.admin.status import (
    ClearCause,
    DomainPosture,
    MessageView,
    StatusView,
    hour_bars,
)
from relaymail.delivery.results import Attempt, AttemptResult, Status
from relaymail.queue.store import (
    MessageDetail,
    PendingBreakdown,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    Tally,
)
from relaymail.suspension_file import SuspendedEntry

EVIL = "<script>alert('x')</script>\"&'"
TERMINAL = "\x1b[2J\x1b[31mEVIL\x07"  # a reply that would clear and colour a terminal


def entry() -> HistoryEntry:
    return HistoryEntry(
        1000.0, "1AAAAAAAAAA", f"{EVIL}@x.test", EVIL, Status.DEFERRED, EVIL, EVIL, EVIL,
        SessionTls.CLEAR, ClearReason.TEMPFAIL, EVIL,
        (Attempt(EVIL, EVIL, AttemptResult.CONTINUED_CLEAR, False, EVIL),),
    )  # fmt: skip


def assert_inert(page: bytes) -> None:
    text = page.decode()
    assert "<script" not in text and "alert('x')" not in text
    assert text.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;&amp;&#x27;") >= 3
    # Every attribute value is ours: no quote from the input closed one.
    assert not re.search(r'="[^"]*<', text)


def test_the_status_page_escapes_hostile_values_everywhere():
    view = StatusView(
        now=3600.0 * 30,
        stats=QueueStats(1, 0, 10, RecipientCounts(deferred=1), 1000.0, 5.0),
        pending=PendingBreakdown((Tally(EVIL, 1),), (Tally(EVIL, 1),)),
        hours=hour_bars([HourCount(29, Status.DEFERRED, 1)], 3600.0 * 30),
        posture=(DomainPosture(EVIL, 0, 0, 1, (ClearCause(ClearReason.TEMPFAIL, EVIL, 1),)),),
        recent=(entry(),),
        suspended=(SuspendedEntry(EVIL, 3600.0 * 30, 3600.0 * 31, 2, "421", EVIL),),
    )
    page = status_page(view, EVIL)
    assert_inert(page)
    assert b'<td class="n">2</td><td>421</td>' in page  # the strike, the sign


def test_a_message_page_escapes_hostile_values_everywhere():
    recipient = RecipientDetail(
        f"{EVIL}@x.test", RecipientState.DEFERRED, 1, 2000.0, 1000.0, EVIL, EVIL,
        {"used": False}, EVIL,
    )  # fmt: skip
    detail = MessageDetail("1AAAAAAAAAA", EVIL, 10, 900.0, False, False, (recipient,))
    assert_inert(message_page(MessageView("1AAAAAAAAAA", detail, (entry(),)), EVIL))


def test_control_characters_are_shown_written_out_not_sent_to_the_terminal():
    recipient = RecipientDetail(
        "u@x.test", RecipientState.DEFERRED, 1, 2000.0, 1000.0, TERMINAL, TERMINAL,
        {"used": False}, TERMINAL,
    )  # fmt: skip
    detail = MessageDetail("1AAAAAAAAAA", "a@x.test", 10, 900.0, False, False, (recipient,))
    page = message_page(MessageView("1AAAAAAAAAA", detail, ()), "relay.test").decode()
    assert "\x1b" not in page and "\x07" not in page
    assert "\\x1b[2J\\x1b[31mEVIL\\x07" in page

