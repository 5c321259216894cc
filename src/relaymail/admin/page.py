"""The status page and a message's page: server-rendered HTML, no script, no external resource.

Everything shown that came from mail or from the network (addresses, replies, host names,
reasons) is hostile input: it goes through `_e` (html.escape, quotes included) and nowhere
else. Pure: views in, markup out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape

from ..delivery.results import Attempt, Status
from ..display import visible
from ..queue.store import RecipientDetail
from ..tls.context import CLEAR, TlsFacts
from .chart import hourly_chart
from .history import HistoryEntry, SessionTls
from .status import DomainPosture, MessageView, StatusView

STYLESHEET = b"""\
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #1d232a; background: #fbfbfa; }
h1 { font-size: 1.4em; margin: 0; } h2 { font-size: 1.1em; margin: 1.6em 0 .5em; }
header p { color: #5b6570; margin: .2em 0 0; }
table { border-collapse: collapse; width: 100%; margin-bottom: .8em; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e2e4e6;
         vertical-align: top; }
th { font-weight: 600; color: #5b6570; } td.n { text-align: right;
  font-variant-numeric: tabular-nums; }
.counts { display: flex; flex-wrap: wrap; gap: 1em; margin: 0; }
.counts div { background: #fff; border: 1px solid #e2e4e6; border-radius: 6px;
              padding: .5em 1em; min-width: 7em; }
.counts dt { color: #5b6570; font-size: .85em; } .counts dd { margin: 0; font-size: 1.5em; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }
.delivered { color: #17753a; } .deferred { color: #a15c00; } .bounced { color: #b3261e; }
.verified { color: #17753a; } .tls { color: #2a5db0; } .clear { color: #b3261e; }
rect.bar.delivered { fill: #2e9d57; } rect.bar.deferred { fill: #e0a030; }
rect.bar.bounced { fill: #d04a3f; }
.chart .axis { stroke: #9aa3ab; } .chart .tick { font-size: 10px; fill: #5b6570; }
.legend span { margin-right: 1em; }
details summary { cursor: pointer; color: #2a5db0; } ol.trace { margin: .3em 0; }
code, .mono { font-family: ui-monospace, monospace; font-size: .92em; }
.muted { color: #5b6570; }
"""


def _e(value: object) -> str:
    # Control characters written out too: `curl` of the page in a terminal runs none.
    return escape(visible(str(value)), quote=True)


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _page(title: str, body: Iterable[str]) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="stylesheet" href="/style.css"></head><body>'
        + "".join(body)
        + "</body></html>"
    ).encode()


def _table(table_id: str, headings: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table whose cells are markup already escaped; headings are ours."""
    head = "".join(f"<th>{h}</th>" for h in headings)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: object, css: str = "") -> str:
    return f'<td class="{css}">{_e(value)}</td>' if css else f"<td>{_e(value)}</td>"


def status_page(view: StatusView, hostname: str) -> bytes:
    return _page(f"relaymail on {hostname}", [
        f"<header><h1>relaymail on {_e(hostname)}</h1>"
        f"<p>as of {_when(view.now)} UTC</p></header>",
        _queue_section(view), _suspended_section(view), _hours_section(view),
        _posture_section(view.posture),
        '<section id="recent"><h2>Recent deliveries</h2>',
        _attempts_table("recent-deliveries", view.recent, with_message=True), "</section>",
    ])  # fmt: skip


def _queue_section(view: StatusView) -> str:
    stats = view.stats
    counts = [
        ("messages", stats.messages), ("queued", stats.recipients.queued),
        ("deferred", stats.recipients.deferred), ("held", stats.held),
        ("oldest", _age(stats.oldest_age)), ("size", f"{stats.total_bytes} B"),
    ]  # fmt: skip
    boxes = "".join(
        f'<div><dt>{name}</dt><dd id="queue-{name}">{_e(value)}</dd></div>'
        for name, value in counts
    )
    destinations = _table(
        "top-destinations", ["destination", "recipients"],
        ([_cell(t.name), _cell(t.count, "n")] for t in view.pending.destinations),
    )  # fmt: skip
    reasons = _table(
        "top-deferral-reasons", ["deferral reason", "recipients"],
        ([_cell(t.name), _cell(t.count, "n")] for t in view.pending.reasons),
    )  # fmt: skip
    return (
        '<section id="queue"><h2>Queue now</h2>'
        f'<dl class="counts">{boxes}</dl>'
        '<p class="muted">queued and deferred count recipients; oldest is the oldest message'
        f" (since {_when(stats.oldest_received_at)})</p>"
        f'<div class="cols"><div>{destinations}</div><div>{reasons}</div></div></section>'
    )


def _suspended_section(view: StatusView) -> str:
    rows = (
        [_cell(s.destination), _cell(_when(s.until)), _cell(s.strikes, "n"), _cell(s.sign),
         _cell(s.reply)]
        for s in view.suspended
    )  # fmt: skip
    table = _table("suspended-destinations", ["destination", "until (UTC)", "strike",
                   "throttle sign", "reply"], rows)  # fmt: skip
    empty = "" if view.suspended else '<p class="muted">none: no destination throttles us</p>'
    return f'<section id="suspended"><h2>Suspended destinations</h2>{table}{empty}</section>'


def _hours_section(view: StatusView) -> str:
    totals = {s: sum(bar.counts.get(s, 0) for bar in view.hours) for s in Status}
    legend = "".join(
        f'<span class="{s.value}" id="day-{s.value}">{totals[s]} {s.value}</span>' for s in Status
    )
    return (
        '<section id="hours"><h2>Last 24 hours: delivery attempts per hour by outcome'
        " (one per recipient)</h2>"
        f'<p class="legend">{legend}</p>{hourly_chart(view.hours)}</section>'
    )


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _posture_section(rows: Sequence[DomainPosture]) -> str:
    def row(p: DomainPosture) -> list[str]:
        causes = "; ".join(
            f"{c.reason.value if c.reason else 'unknown'} under {c.policy}: {c.count}"
            for c in p.causes
        )
        shares = [
            _cell(_share(n, p.total), f"n {css}")
            for n, css in ((p.verified, "verified"), (p.encrypted, "tls"), (p.clear, "clear"))
        ]
        return [_cell(p.domain), _cell(p.total, "n"), *shares, _cell(causes or "-")]

    table = _table(
        "tls-posture",
        ["domain", "deliveries", "verified", "TLS", "clear", "why clear (policy)"],
        (row(p) for p in rows),
    )
    return (
        '<section id="tls"><h2>TLS by destination domain, last 24 hours</h2>'
        '<p class="muted">verified: TLS with the certificate checked; TLS: encrypted, not'
        " verified; clear: no TLS, and why</p>"
        f"{table}</section>"
    )


def _tls_words(entry: HistoryEntry) -> str:
    if entry.tls is SessionTls.CLEAR:
        why = entry.clear_reason.value if entry.clear_reason else "unknown"
        return f"clear: {why}"
    return entry.tls.value


def _trace(attempts: Sequence[Attempt]) -> str:
    if not attempts:
        return '<span class="muted">-</span>'
    steps = "".join(
        f'<li><span class="mono">{_e(a.host)} [{_e(a.ip)}]</span> {_e(a.result.value)}'
        f"{' (TLS)' if a.tls else ''}: {_e(a.detail)}</li>"
        for a in attempts
    )
    return f'<details><summary>decision trace</summary><ol class="trace">{steps}</ol></details>'


def _attempts_table(table_id: str, entries: Sequence[HistoryEntry], *, with_message: bool) -> str:
    def row(h: HistoryEntry) -> list[str]:
        link = f'<td><a class="mono" href="/message/{_e(h.queue_id)}">{_e(h.queue_id)}</a></td>'
        return [
            _cell(_when(h.at)), *([link] if with_message else []), _cell(h.recipient),
            _cell(h.status.value, h.status.value), _cell(h.relay or "-"),
            _cell(_tls_words(h), h.tls.value), _cell(h.policy or "-"),
            f"<td>{_e(h.reply or h.reason)}{_trace(h.trace)}</td>",
        ]  # fmt: skip

    headings = ["time (UTC)", *(["queue id"] if with_message else []), "recipient", "status",
                "relay", "TLS", "policy", "reply or reason"]  # fmt: skip
    return _table(table_id, headings, (row(h) for h in entries))


def message_page(view: MessageView, hostname: str) -> bytes:
    parts = [
        f'<header><h1>Message <span class="mono">{_e(view.queue_id)}</span></h1>'
        f'<p><a href="/">relaymail on {_e(hostname)}</a></p></header>'
    ]
    queued = view.queued
    if queued is None:
        parts.append('<p id="message-state">no longer in the queue</p>')
    else:
        parts.append(
            f'<p id="message-state">from &lt;{_e(queued.sender)}&gt;, {queued.size} B, received'
            f" {_when(queued.received_at)} UTC{', on hold' if queued.held else ''}</p>"
        )
        parts.append("<section><h2>Recipients</h2>")
        parts.append(_table(
            "recipients", ["recipient", "state", "attempts", "next attempt", "relay", "TLS",
                           "last reply or error"],
            (_recipient_row(r) for r in queued.recipients),
        ))  # fmt: skip
        parts.append("</section>")
    parts.append("<section><h2>Attempts</h2>")
    parts.append(_attempts_table("attempts", view.attempts, with_message=False))
    parts.append("</section>")
    return _page(f"relaymail: message {view.queue_id}", parts)


def _recipient_row(r: RecipientDetail) -> list[str]:
    final = r.state.is_final
    tls = TlsFacts.from_json(r.tls) if r.tls else CLEAR
    tls_words = ("verified" if tls.verified else "tls") if tls.used else "clear"
    return [
        _cell(r.address), _cell(r.state.value, r.state.value), _cell(r.attempts, "n"),
        _cell("-" if final else _when(r.next_attempt)), _cell(r.host or "-"),
        _cell(tls_words if r.last_attempt else "-"),
        _cell(r.last_reply or r.last_error or "-"),
    ]  # fmt: skip
