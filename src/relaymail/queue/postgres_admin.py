"""Admin changes to many messages at once on PostgreSQL, written once for both drivers.

`change` is a procedure that yields its statements and is sent their rows back:
it knows the SQL and the rules, not the connection. The daemon's store runs it
on its async writer (`run_async`), the `relaymail queue` command on a sync
connection (`run_sync`), so the CLI needs no event loop to change the queue.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .ids import format_queue_id
from .postgres_schema import ADMIN_CHANNEL, EVENT_LOCK, PENDING
from .selection import CHANGES, AdminOutcome, Selection
from .store import AdminAction

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")
Statement = tuple[str, Sequence[Any]]
Procedure = Generator[Statement, list[tuple[Any, ...]], T]

# LIKE folds no case in PostgreSQL, and lower() follows the database's locale:
# both sides are folded here, ASCII letters only, as the selection rules say.
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FOLD = str.maketrans(_UPPER, _UPPER.lower())


def ascii_lower(column: str) -> str:
    return f"translate({column}, '{_UPPER}', '{_UPPER.lower()}')"


def selection_sql(selection: Selection) -> tuple[str, list[Any]]:
    """The WHERE clause over `message AS m` that picks exactly `selection`."""
    clauses = ["true"]
    params: list[Any] = []
    named = selection.queue_ids()
    if named is not None:
        clauses.append("m.id = ANY(%s)")
        params.append(sorted(named))
    if selection.sender is not None:
        clauses.append(f"{ascii_lower('m.sender')} LIKE %s ESCAPE '\\'")
        params.append(selection.sender.like().translate(_FOLD))
    if selection.recipient is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM recipient AS r WHERE r.message_id = m.id"
            f" AND r.state IN (%s, %s) AND {ascii_lower('r.address')} LIKE %s ESCAPE '\\')"
        )
        params += [*PENDING, selection.recipient.like().translate(_FOLD)]
    if selection.received_before is not None:
        clauses.append("m.received_at < %s")
        params.append(selection.received_before)
    return " AND ".join(clauses), params


def change(action: AdminAction, selection: Selection, now: float) -> Procedure[AdminOutcome]:
    """Hold, release, delete or retry what `selection` picks, with one event per message."""
    if action not in CHANGES:
        raise ValueError(f"not an admin change: {action}")
    where, params = selection_sql(selection)
    # Locked, so a node recording an outcome meanwhile waits for this change, not over it.
    rows = yield (f"SELECT m.id, m.held FROM message AS m WHERE {where} ORDER BY m.id"
                  " FOR UPDATE", params)  # fmt: skip
    skips_held = action is AdminAction.RETRY
    held = [qid for qid, is_held in rows if is_held and skips_held]
    targets = [qid for qid, is_held in rows if not (is_held and skips_held)]
    moved = 0
    if action in (AdminAction.HOLD, AdminAction.RELEASE):
        yield ("UPDATE message SET held = %s WHERE id = ANY(%s)",
               (action is AdminAction.HOLD, targets))  # fmt: skip
    if action in (AdminAction.RETRY, AdminAction.RELEASE):
        # Releasing is the admin's "go": the mail is tried now, not at its old retry time.
        yield ("UPDATE recipient SET next_attempt = %s WHERE state IN (%s, %s)"
               " AND next_attempt > %s AND message_id = ANY(%s)",
               (now, *PENDING, now, targets))  # fmt: skip
        # Every waiting recipient is counted, also one that was due already (sqlite_admin).
        [(moved,)] = yield (
            "SELECT count(*) FROM recipient WHERE state IN (%s, %s) AND message_id = ANY(%s)",
            (*PENDING, targets),
        )
    if action is AdminAction.DELETE:
        yield ("DELETE FROM message WHERE id = ANY(%s)", (targets,))
    # A retry of the whole queue is one event: the daemons re-read every entry anyway.
    whole = action is AdminAction.RETRY and selection.everything
    events: list[int | None] = [None] if whole else list(targets)
    if events:
        yield ("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))
        yield (
            "INSERT INTO admin_event (message_id, action, at) SELECT unnest(%s::bigint[]), %s, %s",
            (events, action.value, time.time()),
        )
        yield (f"NOTIFY {ADMIN_CHANNEL}", ())
    return AdminOutcome(
        action=action,
        changed=tuple(map(format_queue_id, targets)),
        held=tuple(map(format_queue_id, held)),
        missing=selection.missing(qid for qid, _ in rows),
        recipients=int(moved),
    )


def run_sync(conn: psycopg.Connection, procedure: Procedure[T]) -> T:
    """Run `procedure` on a sync connection, inside one transaction."""
    with conn.transaction(), conn.cursor() as cur:
        try:
            sql, params = next(procedure)
            while True:
                cur.execute(sql, params)
                sql, params = procedure.send(cur.fetchall() if cur.description else [])
        except StopIteration as done:
            result: T = done.value
            return result


async def run_async(conn: psycopg.AsyncConnection, procedure: Procedure[T]) -> T:
    """Run `procedure` on an async connection, in the transaction already open."""
    async with conn.cursor() as cur:
        try:
            sql, params = next(procedure)
            while True:
                await cur.execute(sql, params)
                sql, params = procedure.send(await cur.fetchall() if cur.description else [])
        except StopIteration as done:
            result: T = done.value
            return result
