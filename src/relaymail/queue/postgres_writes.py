"""The PostgreSQL queue's writes, each one operation over a batch (postgres_writer.py).

Every operation takes the items of all the writes of one batch and runs one
statement (or a few) for all of them, so a batch of 200 enqueues is one
nextval, one executemany per table and one COPY of their bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..dsn_request import DsnRequest
from ..message_data import MessageData
from .ids import format_queue_id
from .postgres_schema import ADMIN_CHANNEL, BODY_ROW, EVENT_LOCK, PENDING, SERVER_NOW
from .postgres_writer import Transaction
from .rows import stored_message_dsn, stored_recipient_dsn
from .store import AdminAction, TraceHeader

log = logging.getLogger("relaymail.queue")


@dataclass(frozen=True, slots=True)
class NewMessage:
    sender: str
    recipients: tuple[str, ...]
    data: MessageData
    received_at: float
    trace: TraceHeader | None
    pickup: str | None
    requiretls: bool
    dsn: DsnRequest | None


async def insert_messages(txn: Transaction, items: list[NewMessage]) -> list[tuple[int, bytes]]:
    """Each new message's queue id and trace header; claimed by this node, which delivers it.

    The bodies go in through one COPY, row by row (BODY_ROW octets each): the
    data is read from the MessageData as it is sent, never whole in memory.
    """
    conn = txn.conn
    cur = await conn.execute(
        "SELECT nextval('queue_id') FROM generate_series(1, %s)", (len(items),)
    )
    qids = sorted(row[0] for row in await cur.fetchall())
    headers = [b"" if m.trace is None else m.trace(format_queue_id(q))
               for q, m in zip(qids, items, strict=True)]  # fmt: skip
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO message (id, sender, received_at, size, requiretls, ret, envid,"
            f" claimed_by, lease_until) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, {SERVER_NOW} + %s)",
            [(q, m.sender, m.received_at, len(h) + m.data.size, m.requiretls,
              *stored_message_dsn(m.dsn), txn.node, txn.lease)
             for q, m, h in zip(qids, items, headers, strict=True)],
        )  # fmt: skip
        await cur.executemany(
            "INSERT INTO recipient (message_id, idx, address, state, next_attempt, notify, orcpt)"
            " VALUES (%s, %s, %s, 'queued', %s, %s, %s)",
            [(q, idx, rcpt, m.received_at, *stored_recipient_dsn(m.dsn, rcpt))
             for q, m in zip(qids, items, strict=True) for idx, rcpt in enumerate(m.recipients)],
        )  # fmt: skip
        pickups = [(txn.node, m.pickup, q, time.time())
                   for q, m in zip(qids, items, strict=True) if m.pickup is not None]  # fmt: skip
        if pickups:
            await cur.executemany(
                "INSERT INTO pickup (node, name, message_id, at) VALUES (%s, %s, %s, %s)", pickups
            )
        async with cur.copy("COPY body (message_id, seq, data) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int4", "bytea"])
            for qid, message, header in zip(qids, items, headers, strict=True):
                for seq, row in enumerate(_rows(header, message.data)):
                    await copy.write_row((qid, seq, row))
    return list(zip(qids, headers, strict=True))


def _rows(header: bytes, data: MessageData) -> Any:
    """header + data in pieces of BODY_ROW octets (the last one shorter)."""
    pending = bytearray(header)
    for chunk in data.chunks():
        pending += chunk
        while len(pending) >= BODY_ROW:
            yield bytes(pending[:BODY_ROW])
            del pending[:BODY_ROW]
    if pending:
        yield bytes(pending)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """One `record` call: its rows (as the UPDATE takes them) and the node's clock."""

    rows: tuple[tuple[Any, ...], ...]  # state, attempts, ..., host, message id, recipient
    now: float


async def record_outcomes(txn: Transaction, items: list[Outcomes]) -> list[frozenset[int]]:
    """Store delivery outcomes where this node holds the claim; per call, the ids it did not.

    The claim check is part of the write: the message rows are locked first, so
    another node cannot take a claim between the check and the update. A node
    whose lease was lost (another node claimed the message meanwhile) records
    nothing for it: the other node's attempt is the one the queue keeps. Messages
    left without a recipient due now are released for any node to claim when due.
    """
    conn = txn.conn
    qids = sorted({row[8] for item in items for row in item.rows})
    cur = await conn.execute(
        "SELECT id, claimed_by FROM message WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (qids,)
    )
    owners: dict[int, str | None] = dict(await cur.fetchall())
    ours = {qid for qid, owner in owners.items() if owner == txn.node}
    rows = [row for item in items for row in item.rows if row[8] in ours]
    if rows:
        async with conn.cursor() as cur:
            await cur.executemany(
                "UPDATE recipient SET state = %s, attempts = %s, next_attempt = %s,"
                " last_attempt = %s, last_reply = %s, last_error = %s, tls = %s, host = %s"
                " WHERE message_id = %s AND address = %s",
                rows,
            )
        touched = sorted(ours)
        await conn.execute(
            "DELETE FROM message AS m WHERE m.id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM recipient"
            " AS r WHERE r.message_id = m.id AND r.state IN (%s, %s))",
            (touched, *PENDING),
        )
        now = max(item.now for item in items)
        await conn.execute(
            "UPDATE message AS m SET claimed_by = NULL, lease_until = NULL"
            " WHERE m.id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM recipient AS r"
            " WHERE r.message_id = m.id AND r.state IN (%s, %s) AND r.next_attempt <= %s)",
            (touched, *PENDING, now),
        )
    lost = {qid: owner for qid, owner in owners.items() if qid not in ours}
    for qid, owner in lost.items():
        log.warning(
            "id=%s: this node's claim was lost (now %s): its outcome is not recorded",
            format_queue_id(qid), owner or "released",
        )  # fmt: skip
    return [frozenset(row[8] for row in item.rows if row[8] in lost) for item in items]


# -- single writes: each its own function of the transaction --------------------------

Single = Callable[[Transaction], Awaitable[Any]]


async def run_each(txn: Transaction, items: list[Single]) -> list[Any]:
    """The operation for writes that are not batched: each runs in turn, in the same commit."""
    return [await apply(txn) for apply in items]


async def append_events(txn: Transaction, events: Sequence[tuple[int | None, AdminAction]]) -> None:
    """Admin events, numbered in commit order, and a NOTIFY to every listening node.

    The advisory lock makes transactions that append events take their ids one
    after the other: a node reading up to id N never sees N + 1 commit before N.
    """
    if not events:
        return
    conn = txn.conn
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))
    at = time.time()
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO admin_event (message_id, action, at) VALUES (%s, %s, %s)",
            [(qid, action.value, at) for qid, action in events],
        )
    await conn.execute(f"NOTIFY {ADMIN_CHANNEL}")


async def mark_warned(txn: Transaction, qid: int) -> bool:
    cur = await txn.conn.execute("UPDATE message SET warned = true WHERE id = %s", (qid,))
    return cur.rowcount > 0


async def hold(txn: Transaction, qid: int, held: bool) -> bool:
    cur = await txn.conn.execute("UPDATE message SET held = %s WHERE id = %s", (held, qid))
    if cur.rowcount > 0:
        await append_events(txn, [(qid, AdminAction.HOLD if held else AdminAction.RELEASE)])
    return cur.rowcount > 0


async def delete(txn: Transaction, qid: int) -> bool:
    cur = await txn.conn.execute("DELETE FROM message WHERE id = %s", (qid,))
    if cur.rowcount > 0:
        await append_events(txn, [(qid, AdminAction.DELETE)])
    return cur.rowcount > 0


async def retry(txn: Transaction, qid: int | None, now: float) -> int:
    conn = txn.conn
    sql = "UPDATE recipient SET next_attempt = %s WHERE state IN (%s, %s) AND next_attempt > %s"
    params: tuple[Any, ...] = (now, *PENDING, now)
    if qid is not None:
        cur = await conn.execute("SELECT 1 FROM message WHERE id = %s", (qid,))
        if await cur.fetchone() is None:
            return 0
        sql += " AND message_id = %s"
        params += (qid,)
    moved = (await conn.execute(sql, params)).rowcount
    await append_events(txn, [(qid, AdminAction.RETRY)])
    return moved


async def leave_cluster(txn: Transaction) -> None:
    """This node stops, its deliveries over: its claims go to the others at once."""
    await txn.conn.execute("DELETE FROM node WHERE name = %s", (txn.node,))
    await txn.conn.execute(
        "UPDATE message SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = %s",
        (txn.node,),
    )


async def forget_pickups(txn: Transaction, names: tuple[str, ...]) -> None:
    await txn.conn.execute(
        "DELETE FROM pickup WHERE node = %s AND name = ANY(%s)", (txn.node, list(names))
    )
