"""How `relaymail queue` shows the queue: text for people (listed as mailq does), JSON for scripts.

JSON is JSON all the way down: the TLS facts are an object, never JSON text
inside a string. Text shows whatever came from outside (addresses, replies)
through `printable`, so a hostile reply cannot drive the terminal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from ..daemon_lock import DaemonStatus
from ..display import printable
from ..queue.store import MessageDetail, MessageSummary, QueueStats, RecipientDetail
from ..suspension_file import SuspendedEntry


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _reason(recipient: RecipientDetail) -> str | None:
    return recipient.last_reply or recipient.last_error


def _recipient_json(recipient: RecipientDetail) -> dict[str, Any]:
    # RFC 3461's parameters in their wire form, xtext as received.
    notify, orcpt = recipient.dsn
    shown = {field: value for field, value in asdict(recipient).items() if field != "dsn"}
    return {
        **shown,
        "reason": _reason(recipient),
        "notify": None if notify is None else notify.wire,
        "orcpt": None if orcpt is None else orcpt.wire,
    }


def print_list(
    messages: list[MessageSummary],
    recipients: Mapping[str, tuple[RecipientDetail, ...]],
    total: int,
    as_json: bool,
) -> None:
    """mailq's layout: a line per message (`!` when held), then its recipients still to go."""
    if as_json:
        listed = [
            {**asdict(m), "to": [_recipient_json(r) for r in recipients.get(m.id, ())]}
            for m in messages
        ]
        print(json.dumps({"total": total, "messages": listed}))
        return
    if not total:
        print("the queue is empty")
        return
    print(f"{'-Queue ID-':<12} {'--Size--':>8} {'----Arrival Time---':<19}  -Sender/Recipient-")
    for m in messages:
        mark = "!" if m.held else " "
        print(f"{m.id}{mark} {m.size:>8} {_when(m.received_at):<19}  "
              f"<{printable(m.sender)}>")  # fmt: skip
        for r in recipients.get(m.id, ()):
            if r.state.is_final:
                continue
            reason = _reason(r)
            line = f"{'':>43}{r.state.value:<9} <{printable(r.address)}>"
            print(line + (f"  ({printable(reason)})" if reason else ""))
    shown = sum(m.size for m in messages)
    print(f"-- {len(messages)} of {total} message(s), {shown} bytes shown")


def print_detail(detail: MessageDetail, as_json: bool) -> None:
    if as_json:
        shown = {**asdict(detail), "recipients": [_recipient_json(r) for r in detail.recipients]}
        print(json.dumps(shown))
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    console.print(
        f"[bold]{detail.id}[/bold] from <{escape(printable(detail.sender))}>, {detail.size} bytes,"
        f" received {_when(detail.received_at)}"
        + (", [yellow]held[/yellow]" if detail.held else "")
        + (", delay warning sent" if detail.warned else "")
        + (", REQUIRETLS" if detail.requiretls else "")
        + (f", RET={detail.ret.value}" if detail.ret is not None else "")
        + (f", ENVID={escape(printable(detail.envid))}" if detail.envid is not None else "")
    )
    table = Table(show_lines=True)
    columns = ("recipient", "state", "attempts", "next try", "host", "last reply", "TLS", "DSN")
    for column in columns:
        table.add_column(column, overflow="fold")
    for r in detail.recipients:
        table.add_row(
            escape(printable(r.address)), r.state.value, str(r.attempts), _when(r.next_attempt),
            escape(printable(r.host or "-")), escape(printable(_reason(r) or "-")),
            _tls_words(r.tls), escape(printable(r.dsn.wire.strip() or "-")),
        )  # fmt: skip
    console.print(table)


def _console() -> Any:
    import shutil

    from rich.console import Console

    return Console(width=shutil.get_terminal_size((160, 24)).columns)


def _tls_words(tls: Mapping[str, Any] | None) -> str:
    if tls is None:
        return "-"
    from ..tls.context import TlsFacts  # here: `relaymail queue` starts without cryptography

    facts = TlsFacts.from_json(tls)
    if not facts.used:
        return "none"
    verified = "verified" if facts.verified else "not verified"
    return f"{printable(facts.version or '?')} {verified}"


def print_stats(
    stats: QueueStats, daemon: DaemonStatus, suspended: list[SuspendedEntry], as_json: bool
) -> None:
    if as_json:
        running = daemon.pid is not None if daemon.known else None
        listed = [asdict(e) for e in suspended]
        print(json.dumps({**asdict(stats), "daemon_running": running, "daemon_pid": daemon.pid,
                          "suspended": listed}))  # fmt: skip
        return
    r = stats.recipients
    oldest = f"{stats.oldest_age:.0f}s" if stats.oldest_age is not None else "-"
    print(
        f"messages {stats.messages} (held {stats.held}), {stats.total_bytes} bytes; "
        f"recipients queued {r.queued}, deferred {r.deferred}; oldest {oldest}; {daemon}"
    )
    for entry in suspended:
        until = datetime.fromtimestamp(entry.until, UTC).isoformat(timespec="seconds")
        print(
            f"suspended {printable(entry.destination)} until {until.replace('+00:00', 'Z')} "
            f"(strike {entry.strikes}, {entry.sign}): {printable(entry.reply)}"
        )
