"""`relaymail queue ...`: the admin's view of the queue, as tables or JSON.

Runs in its own process beside the daemon: reads go straight to the
database (WAL lets them run while the daemon writes); changes are written
with an admin event, which the daemon applies within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from ..config import Config
from ..queue.sqlite import SqliteStore
from ..queue.store import MessageDetail, MessageSummary, QueueStats, RecipientState
from .exits import EX_NOINPUT, EX_OK, EX_TEMPFAIL


def run_queue_command(config: Config, args: argparse.Namespace) -> int:
    from ..errors import QueueFull, QueueUnusable

    if not (config.queue.directory / "queue.db").exists():
        print(f"relaymail: no queue at {config.queue.directory}", file=sys.stderr)
        return EX_NOINPUT
    try:
        store = SqliteStore.open(config.queue.directory)
    except QueueUnusable as exc:
        print(f"relaymail: {exc}", file=sys.stderr)
        return exc.problem.exit_code
    try:
        return _dispatch(store, args)
    except QueueFull as exc:
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        asyncio.run(store.close())


def _dispatch(store: SqliteStore, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        state = RecipientState(args.state) if args.state else None
        messages = store.list_messages(args.limit, args.offset, state)
        total = store.count_messages(state)
        _print_list(messages, total, args.json)
    elif action == "stats":
        _print_stats(store.stats(), args.json)
    elif action == "show":
        detail = store.get_message(args.id)
        if detail is None:
            return _missing(args.id)
        _print_detail(detail, args.json)
    elif action == "retry":
        moved = asyncio.run(store.retry(None if args.all else args.id))
        if not args.all and moved == 0 and store.get_message(args.id) is None:
            return _missing(args.id)
        _say(args.json, {"retried": moved}, f"{moved} recipient(s) due now")
    else:
        changes = {
            "hold": lambda: store.set_hold(args.id, True),
            "release": lambda: store.set_hold(args.id, False),
            "delete": lambda: store.delete(args.id),
        }
        if not asyncio.run(changes[action]()):
            return _missing(args.id)
        _say(args.json, {"id": args.id, "action": action}, f"{args.id}: {action} done")
    return EX_OK


def _missing(message_id: str) -> int:
    print(f"relaymail: no message {message_id} in the queue", file=sys.stderr)
    return EX_NOINPUT


def _say(as_json: bool, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if as_json else text)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _print_list(messages: list[MessageSummary], total: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"total": total, "messages": [asdict(m) for m in messages]}))
        return
    from rich.table import Table

    table = Table(title=f"{len(messages)} of {total} message(s)")
    table.add_column("id", no_wrap=True)
    for column in ("received", "size", "sender", "queued", "deferred", "next try", "held"):
        table.add_column(column)
    for m in messages:
        table.add_row(
            m.id, _when(m.received_at), str(m.size), m.sender or "<>",
            str(m.recipients.queued), str(m.recipients.deferred),
            _when(m.next_attempt), "held" if m.held else "",
        )  # fmt: skip
    _console().print(table)


def _print_detail(detail: MessageDetail, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(detail)))
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    console.print(
        f"[bold]{detail.id}[/bold] from <{escape(detail.sender)}>, {detail.size} bytes, "
        f"received {_when(detail.received_at)}"
        + (", [yellow]held[/yellow]" if detail.held else "")
        + (", delay warning sent" if detail.warned else "")
    )
    table = Table(show_lines=True)
    for column in ("recipient", "state", "attempts", "next try", "host", "last reply", "TLS"):
        table.add_column(column, overflow="fold")
    for r in detail.recipients:
        table.add_row(
            escape(r.address), r.state.value, str(r.attempts), _when(r.next_attempt),
            escape(r.host or "-"), escape(r.last_reply or r.last_error or "-"), _tls_words(r.tls),
        )  # fmt: skip
    console.print(table)


def _console() -> Any:
    import shutil

    from rich.console import Console

    return Console(width=shutil.get_terminal_size((160, 24)).columns)


def _tls_words(tls: str | None) -> str:
    if not tls:
        return "-"
    from ..tls.context import TlsFacts  # here: `relaymail queue` starts without cryptography

    facts = TlsFacts.from_json(json.loads(tls))
    if not facts.used:
        return "none"
    verified = "verified" if facts.verified else "not verified"
    return f"{facts.version} {verified}"


def _print_stats(stats: QueueStats, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(stats)))
        return
    r = stats.recipients
    oldest = f"{stats.oldest_age:.0f}s" if stats.oldest_age is not None else "-"
    print(
        f"messages {stats.messages} (held {stats.held}), {stats.total_bytes} bytes; "
        f"recipients queued {r.queued}, deferred {r.deferred}; oldest {oldest}"
    )
