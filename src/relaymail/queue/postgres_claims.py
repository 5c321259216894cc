"""Claims with leases: which node delivers a message, so that no two deliver it at once.

Theory of operation
-------------------
A message row carries `claimed_by` (a node's name) and `lease_until` (the
database server's clock, so the nodes' clocks need not agree). A node claims
a message when it accepts it (enqueue), when its scheduler's window takes it
in (`claim_due`: the due messages nobody else holds, `FOR UPDATE SKIP LOCKED`
so two nodes refilling at once take disjoint sets), and again just before each
delivery (`claim_messages`), which is the claim that counts: it fails when
another node holds a live lease, and the scheduler then drops the message.

While a node delivers, its store renews the leases of the messages in flight
(`renew_leases`, every third of the lease). Recording the outcome checks the
claim in the same transaction (postgres_writes.record_outcomes): a node whose
lease was lost records nothing, since the message is another node's now. The
record releases the claim when no recipient is due any more, so the next
attempt goes to whichever node is free when it is due.

A node that dies stops renewing; once its leases run out the others claim its
messages (`claim_due` takes expired claims, and tells the scheduler to look
again when the next foreign lease runs out, and at the latest a lease later).
The one duplicate left is the unavoidable one: a node that got the remote 250
and died (or lost the database for longer than the lease) before its record
committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .postgres_schema import SERVER_NOW
from .postgres_writer import Transaction

if TYPE_CHECKING:
    import psycopg

_CLAIMABLE = f"(m.claimed_by IS NULL OR m.claimed_by = %(node)s OR m.lease_until < {SERVER_NOW})"
# In due order through the partial index recipient_due; a message's first row is its earliest.
_DUE_SQL = (
    "SELECT r.message_id FROM recipient AS r JOIN message AS m ON m.id = r.message_id"
    " WHERE r.state IN ('queued', 'deferred') AND r.next_attempt <= %(now)s AND NOT m.held"
    f" AND {_CLAIMABLE} ORDER BY r.next_attempt, r.message_id"
)
_TAKE_SQL = (
    f"WITH free AS (SELECT m.id FROM message AS m WHERE m.id = ANY(%(ids)s) AND NOT m.held"
    f" AND {_CLAIMABLE} FOR UPDATE SKIP LOCKED)"
    f" UPDATE message AS m SET claimed_by = %(node)s, lease_until = {SERVER_NOW} + %(lease)s"
    " FROM free WHERE m.id = free.id RETURNING m.id"
)
# The earliest moment more mail may be due here: a later retry time, the end of another
# node's lease on mail due now (then that node is gone, and this one takes it), and at
# the latest one lease from now, since any node holding claims may die meanwhile.
_NEXT_DUE_SQL = (
    "SELECT least((SELECT min(next_attempt) FROM recipient"
    "  WHERE state IN ('queued', 'deferred') AND next_attempt > %(now)s),"
    f" %(now)s + (SELECT min(m.lease_until) - {SERVER_NOW} FROM message AS m"
    f"  WHERE m.claimed_by <> %(node)s AND m.lease_until >= {SERVER_NOW} AND NOT m.held"
    "  AND EXISTS (SELECT 1 FROM recipient AS r WHERE r.message_id = m.id"
    "   AND r.state IN ('queued', 'deferred') AND r.next_attempt <= %(now)s)),"
    " %(now)s + %(lease)s)"
)


def claim_due(
    conn: psycopg.Connection, node: str, lease: float, now: float, limit: int,
    exclude: set[int],
) -> tuple[list[int], bool, float | None]:  # fmt: skip
    """Claim up to `limit` due messages, earliest first: (their ids, more wait, next due).

    Runs in the transaction open on `conn`. The due index is read in order and
    its messages claimed a page at a time, skipping rows another node is
    claiming this moment: two nodes refilling at once go on to the next
    messages instead of waiting for each other or coming back short.
    """
    params = {"node": node, "lease": lease, "now": now}
    taken: list[int] = []
    page: list[int] = []
    seen: set[int] = set()
    more = False
    with conn.cursor(name="relaymail_due") as cur:
        cur.itersize = min(max(2 * limit, 100), 5000)
        cur.execute(_DUE_SQL, params)
        for (qid,) in cur:
            if qid in seen or qid in exclude:
                continue
            seen.add(qid)
            if len(taken) == limit:
                more = True  # one more due message than the batch takes
                break
            page.append(qid)
            if len(taken) + len(page) == limit:
                taken += _take(conn, page, params)
                page = []
        if page:
            taken += _take(conn, page, params)
    next_due = conn.execute(_NEXT_DUE_SQL, params).fetchone()
    return taken, more, next_due[0] if next_due else None


def _take(conn: psycopg.Connection, ids: list[int], params: dict[str, object]) -> list[int]:
    """Claim what of `ids` is still free, in their order."""
    rows = conn.execute(_TAKE_SQL, {**params, "ids": ids}).fetchall()
    won = {row[0] for row in rows}
    return [qid for qid in ids if qid in won]


async def claim_messages(txn: Transaction, items: list[int]) -> list[bool]:
    """Take or keep this node's claim before a delivery: False where another node holds one.

    A claim is free when nobody holds it, or its lease ran out (the node holding it
    died or lost the database); a held message is nobody's to deliver.
    """
    cur = await txn.conn.execute(
        f"UPDATE message SET claimed_by = %(node)s, lease_until = {SERVER_NOW} + %(lease)s"
        " WHERE id = ANY(%(ids)s) AND NOT held AND (claimed_by IS NULL"
        f" OR claimed_by = %(node)s OR lease_until < {SERVER_NOW}) RETURNING id",
        {"node": txn.node, "lease": txn.lease, "ids": sorted(set(items))},
    )
    won = {row[0] for row in await cur.fetchall()}
    return [qid in won for qid in items]


async def renew_leases(txn: Transaction, items: list[frozenset[int]]) -> list[RenewedLeases]:
    """Extend this node's leases on the messages it delivers; say it is alive."""
    held = sorted(set().union(*items))
    cur = await txn.conn.execute(
        f"WITH renewed AS (UPDATE message SET lease_until = {SERVER_NOW} + %(lease)s"
        " WHERE claimed_by = %(node)s AND id = ANY(%(ids)s) RETURNING id)"
        " SELECT id, true FROM renewed UNION ALL SELECT id, false FROM message"
        " WHERE id = ANY(%(ids)s) AND claimed_by <> %(node)s",
        {"lease": txn.lease, "node": txn.node, "ids": held},
    )
    rows = await cur.fetchall()
    await txn.conn.execute(
        "INSERT INTO node (name, started_at, seen_at) VALUES (%(n)s, %(t)s, %(t)s)"
        " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
        {"n": txn.node, "t": time.time()},
    )
    renewed = RenewedLeases(
        kept=frozenset(qid for qid, ours in rows if ours),
        lost=frozenset(qid for qid, ours in rows if not ours),
    )
    return [renewed] * len(items)


@dataclass(frozen=True, slots=True)
class RenewedLeases:
    kept: frozenset[int]  # still this node's, for another lease
    # Another node's now. In neither: gone, or released by this node's own record.
    lost: frozenset[int]
