"""Admin changes to many messages at once: one transaction, run on the writer thread.

The selection becomes one WHERE clause over `message`; ids travel as one
JSON array (`json_each`), so 100,000 ids on stdin need neither 100,000
statements nor more host parameters than SQLite allows.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .ids import format_queue_id
from .schema import PENDING
from .selection import CHANGES, AdminOutcome, Selection
from .store import AdminAction
from .writer import Transaction

_IN_LIST = "IN (SELECT value FROM json_each(?))"


def selection_sql(selection: Selection) -> tuple[str, list[Any]]:
    """The WHERE clause over `message AS m` that picks exactly `selection`."""
    clauses = ["1"]
    params: list[Any] = []
    named = selection.queue_ids()
    if named is not None:
        clauses.append(f"m.id {_IN_LIST}")
        params.append(json.dumps(sorted(named)))
    if selection.sender is not None:
        clauses.append("m.sender LIKE ? ESCAPE '\\'")
        params.append(selection.sender.like())
    if selection.recipient is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM recipient AS r WHERE r.message_id = m.id"
            " AND r.state IN (?, ?) AND r.address LIKE ? ESCAPE '\\')"
        )
        params += [*PENDING, selection.recipient.like()]
    if selection.received_before is not None:
        clauses.append("m.received_at < ?")
        params.append(selection.received_before)
    return " AND ".join(clauses), params


def change(txn: Transaction, action: AdminAction, selection: Selection, now: float) -> AdminOutcome:
    if action not in CHANGES:
        raise ValueError(f"not an admin change: {action}")
    conn = txn.conn
    where, params = selection_sql(selection)
    rows = conn.execute(f"SELECT m.id, m.held FROM message AS m WHERE {where} ORDER BY m.id",
                        params).fetchall()  # fmt: skip
    skips_held = action is AdminAction.RETRY
    held = [qid for qid, is_held in rows if is_held and skips_held]
    targets = [qid for qid, is_held in rows if not (is_held and skips_held)]
    moved = 0
    chosen = json.dumps(targets)
    if action in (AdminAction.HOLD, AdminAction.RELEASE):
        conn.execute(f"UPDATE message SET held = ? WHERE id {_IN_LIST}",
                     (int(action is AdminAction.HOLD), chosen))  # fmt: skip
    if action in (AdminAction.RETRY, AdminAction.RELEASE):
        # Releasing is the admin's "go": the mail is tried now, not at its old retry time.
        conn.execute(
            "UPDATE recipient SET next_attempt = ? WHERE state IN (?, ?) AND next_attempt > ?"
            f" AND message_id {_IN_LIST}",
            (now, *PENDING, now, chosen),
        )
        # Every waiting recipient is counted, also one that was due already: the
        # count is what goes now, and a release of held mail due long ago is not "0".
        [(moved,)] = conn.execute(
            f"SELECT count(*) FROM recipient WHERE state IN (?, ?) AND message_id {_IN_LIST}",
            (*PENDING, chosen),
        ).fetchall()
    if action is AdminAction.DELETE:
        for table, key in (("recipient", "message_id"), ("body", "message_id"), ("message", "id")):
            conn.execute(f"DELETE FROM {table} WHERE {key} {_IN_LIST}", (chosen,))
    at = time.time()
    # A retry of the whole queue is one event: the daemon re-reads every entry anyway.
    whole = action is AdminAction.RETRY and selection.everything
    events = [None] if whole else targets
    conn.executemany("INSERT INTO admin_event (message_id, action, at) VALUES (?, ?, ?)",
                     [(qid, action.value, at) for qid in events])  # fmt: skip
    return AdminOutcome(
        action=action,
        changed=tuple(map(format_queue_id, targets)),
        held=tuple(map(format_queue_id, held)),
        missing=selection.missing(qid for qid, _ in rows),
        recipients=moved,
    )
