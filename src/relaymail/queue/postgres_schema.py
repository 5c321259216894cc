"""The queue's tables in PostgreSQL: the schema, its version, and its migrations, in one place.

The tables mirror the SQLite queue's (schema.py), with what a cluster adds:
`message.claimed_by` / `lease_until` (which node delivers it, until when: see
postgres.py), `pickup.node` (each node has its own maildrop), and `node` (who
is alive, for `queue stats` and `retry`). Times are float8 POSIX seconds, as
the Store's values are; lease times are the server's clock, so the nodes'
clocks need not agree on them.

A column added later is one more entry in `_MIGRATIONS` (and the matching
line in the CREATE TABLE below): `prepare` runs what a database lacks, under
an advisory lock, so nodes starting together migrate once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..queue_problem import QueueProblem
from .store import RecipientState

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
ADMIN_EVENT_RETENTION = 7 * 24 * 3600.0
# pg_advisory_xact_lock keys: one for schema changes, one that orders admin events.
SCHEMA_LOCK = 0x72656C61_79000001
EVENT_LOCK = 0x72656C61_79000002
# The admin events' channel (LISTEN/NOTIFY); the payload is empty: the table has the rest.
ADMIN_CHANNEL = "relaymail_admin"
# In SQL, the server's clock: lease times are compared on one clock for every node.
SERVER_NOW = "extract(epoch FROM clock_timestamp())"

PENDING = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)

# Bodies: rows of BODY_ROW octets, stored out of line and uncompressed (EXTERNAL), so a
# chunk read is a substring of one row (PostgreSQL fetches only its TOAST pages) and no
# CPU goes into compressing mail that is mostly compressed already.
BODY_ROW = 256 * 1024


def _schema_v1(first_id: int) -> str:
    return f"""
CREATE TABLE queue_schema (
    version    integer NOT NULL,
    applied_at float8 NOT NULL
);
-- Queue ids: a sequence is lock-free across nodes (a high-water row would serialize
-- every node's commits). It starts at the creation time in microseconds, so its ids
-- look like the SQLite queue's and sort in allocation order.
CREATE SEQUENCE queue_id START WITH {first_id};
CREATE TABLE message (
    id          bigint PRIMARY KEY,
    sender      text NOT NULL,
    received_at float8 NOT NULL,
    size        bigint NOT NULL,
    held        boolean NOT NULL DEFAULT false,
    warned      boolean NOT NULL DEFAULT false,
    requiretls  boolean NOT NULL DEFAULT false,
    -- RFC 3461's RET and ENVID, and each recipient's NOTIFY and ORCPT, in their wire
    -- forms (NULL when not given), as the SQLite queue keeps them.
    ret         text,
    envid       text,
    claimed_by  text,
    lease_until float8
);
CREATE TABLE body (
    message_id bigint NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);
ALTER TABLE body ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE recipient (
    message_id   bigint NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    idx          integer NOT NULL,
    address      text NOT NULL,
    state        text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    next_attempt float8 NOT NULL,
    last_attempt float8,
    last_reply   text,
    last_error   text,
    tls          text,
    host         text,
    notify       text,
    orcpt        text,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX recipient_by_state ON recipient (state, message_id);
CREATE INDEX recipient_due ON recipient (next_attempt, message_id)
    WHERE state IN ('queued', 'deferred');
CREATE TABLE admin_event (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id bigint,
    action     text NOT NULL,
    at         float8 NOT NULL
);
CREATE TABLE pickup (
    node       text NOT NULL,
    name       text NOT NULL,
    message_id bigint NOT NULL,
    at         float8 NOT NULL,
    PRIMARY KEY (node, name)
);
CREATE TABLE node (
    name       text PRIMARY KEY,
    started_at float8 NOT NULL,
    seen_at    float8 NOT NULL
);
"""


_MIGRATIONS: dict[int, str] = {}  # from version n to n + 1


class SchemaProblem(Exception):
    """The database cannot be this queue: `problem` for the exit code."""

    def __init__(self, problem: QueueProblem, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


def prepare(conn: psycopg.Connection) -> None:
    """Create the tables, or bring them to SCHEMA_VERSION; drop old events and pickups.

    SchemaProblem when a newer relaymail wrote them.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        exists = conn.execute("SELECT to_regclass('queue_schema') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            _run(conn, _schema_v1(time.time_ns() // 1000), SCHEMA_VERSION)
        else:
            row = conn.execute("SELECT max(version) FROM queue_schema").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            while version in _MIGRATIONS:
                _run(conn, _MIGRATIONS[version], version + 1)
                version += 1
            if version != SCHEMA_VERSION:
                raise SchemaProblem(
                    QueueProblem.NEWER_SCHEMA,
                    f"queue schema version {version}, this relaymail knows {SCHEMA_VERSION};"
                    " refusing to touch it",
                )
        cutoff = time.time() - ADMIN_EVENT_RETENTION
        conn.execute("DELETE FROM admin_event WHERE at < %s", (cutoff,))
        conn.execute("DELETE FROM pickup WHERE at < %s", (cutoff,))


def _run(conn: psycopg.Connection, script: str, version: int) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement.encode())
    conn.execute(
        "INSERT INTO queue_schema (version, applied_at) VALUES (%s, %s)", (version, time.time())
    )
