"""`relaymail queue ...`: the admin's view of the queue, as text or JSON.

Runs in its own process beside the daemon: reads go straight to the
database (WAL lets them run while the daemon writes; with PostgreSQL, the
whole cluster's queue); changes are written in one transaction with their
admin events, which every daemon applies within a second. Whether a
daemon runs is the queue's daemon lock's answer (daemon_lock.py), or the
cluster's list of live nodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import Config
from ..config_queue import QueueBackend
from ..daemon_lock import daemon_status
from ..queue.opening import QueueAdmin, open_admin
from ..queue.selection import CHANGES, AdminOutcome
from ..queue.sharded import ShardedQueue
from ..queue.store import AdminAction, RecipientState, Store
from ..suspension_file import read_all_suspended
from .exits import EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from .queue_views import print_detail, print_list, print_stats

_CHANGES = frozenset(action.value for action in CHANGES)
# Ids shown on the one line that reports ids not in the queue or left held.
_SHOWN_IDS = 10


def run_queue_command(config: Config, args: argparse.Namespace) -> int:
    from ..errors import QueueFull, QueueUnusable
    from .queue_selection import SelectionError, selection_of

    local = config.queue.backend is QueueBackend.SQLITE
    if local and not (config.queue.directory / "queue.db").exists():
        print(f"relaymail: no queue at {config.queue.directory}", file=sys.stderr)
        return EX_NOINPUT
    try:
        selection = selection_of(args) if args.action in _CHANGES else None
    except SelectionError as exc:
        print(f"relaymail: queue {args.action}: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        queue = open_admin(config.queue)
    except QueueUnusable as exc:
        print(f"relaymail: {exc}", file=sys.stderr)
        return exc.problem.exit_code
    try:
        if selection is not None:
            outcome = queue.change(AdminAction(args.action), selection)
            return _report(outcome, queue, args.json)
        return _read(queue.store, config.queue.directory, args)
    except QueueUnusable as exc:
        print(f"relaymail: {exc}", file=sys.stderr)
        return exc.problem.exit_code
    except QueueFull as exc:
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        queue.close()


def _read(store: Store | ShardedQueue, directory: Path, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        state = RecipientState(args.state) if args.state else None
        messages = store.list_messages(args.limit, args.offset, state)
        recipients = store.recipients_of([m.id for m in messages])
        print_list(messages, recipients, store.count_messages(state), args.json)
    elif action == "stats":
        daemon = daemon_status(directory)
        # Suspensions live in the daemon's memory: none without one.
        suspended = read_all_suspended(directory, time.time()) if daemon.pid is not None else []
        print_stats(store.stats(), daemon, suspended, args.json)
    elif action == "show":
        detail = store.get_message(args.id)
        if detail is None:
            return _missing([args.id])
        print_detail(detail, args.json)
    elif action == "cat":
        return _cat(store, args)
    return EX_OK


def _cat(store: Store | ShardedQueue, args: argparse.Namespace) -> int:
    """The message as queued (trace header included), as postcat -q and exim -Mvc show it."""
    from ..message import split_header_section

    try:
        data = store.load_data(args.id)
    except KeyError:
        return _missing([args.id])
    if args.headers or args.body:
        headers, body = split_header_section(data)
        data = headers if args.headers else body
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    return EX_OK


_DONE = {
    AdminAction.HOLD: "held",
    AdminAction.RELEASE: "released",
    AdminAction.DELETE: "deleted",
    AdminAction.RETRY: "retried",
}


def _report(outcome: AdminOutcome, queue: QueueAdmin, as_json: bool) -> int:
    if as_json:
        print(json.dumps({**asdict(outcome), "count": len(outcome.changed)}))
    else:
        done = f"{_DONE[outcome.action]} {len(outcome.changed)} message(s)"
        if outcome.action in (AdminAction.RETRY, AdminAction.RELEASE):
            done += f": {outcome.recipients} recipient(s) due now"
        if outcome.changed or not outcome.held:
            print(done)
        if outcome.held:
            print(f"held, so not retried (relaymail queue release first): {_ids(outcome.held)}")
    if outcome.missing:
        return _missing(outcome.missing)
    retried = outcome.action is AdminAction.RETRY and outcome.changed
    if retried and queue.stopped():
        # postqueue -f's answer when the mail system is down; the change is kept for its start.
        print(f"relaymail: no relaymail serve runs on {queue.where}: nothing is delivered"
              " until it starts", file=sys.stderr)  # fmt: skip
        return EX_UNAVAILABLE
    return EX_OK


def _ids(ids: tuple[str, ...]) -> str:
    from ..display import printable

    shown = " ".join(printable(i, 40) for i in ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def _missing(ids: Any) -> int:
    ids = tuple(ids)
    what = "no message" if len(ids) == 1 else f"{len(ids)} messages are not"
    print(f"relaymail: {what} in the queue: {_ids(ids)}", file=sys.stderr)
    return EX_NOINPUT
