"""Connections to the cluster's PostgreSQL: how they are made, and what their errors mean.

Every connection relaymail makes to the shared database comes from here (the queue's
writer, its readers, its LISTEN, and any other state kept beside the queue), so they
all carry the node's name as `application_name` (visible in `pg_stat_activity`), the
same time limits, and the same translation of server errors into `QueueFull`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import QueueFull

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT = 10  # seconds: libpq's connect_timeout
# A write waiting this long for another transaction's row lock gives up (452), as SQLite's
# busy timeout does: a CLI deleting 100,000 messages must not stall the inbound server.
LOCK_TIMEOUT_MS = 5000
# A transaction left open by a stuck client is cut by the server, so its locks go.
IDLE_IN_TRANSACTION_MS = 60_000


def describe(dsn: str) -> str:
    """The DSN as an error message may show it: where, as whom, never the password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError; shown as given would leak a password
        return "(an unparsable dsn)"
    host = parts.get("host") or "(local socket)"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql {user}{host}{port}/{parts.get('dbname') or '(default database)'}"


def connect_options(dsn: str, node: str, role: str) -> dict[str, Any]:
    """libpq keywords added to `dsn`; its own `options` (a search_path, say) are kept."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn).get("options")
    ours = f"-c lock_timeout={LOCK_TIMEOUT_MS}"
    ours += f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
    return {
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": f"relaymail {node} {role}"[:63],
        "options": f"{ours} {given}" if given else ours,
    }


def connect(dsn: str, node: str, role: str, *, autocommit: bool = True) -> psycopg.Connection:
    """A sync connection (the CLI, the readers); raises QueueFull when it cannot be made."""
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=autocommit, **connect_options(dsn, node, role))
    except psycopg.Error as exc:
        raise storage_error(exc) from None


async def connect_async(
    dsn: str, node: str, role: str, *, autocommit: bool = False
) -> psycopg.AsyncConnection:
    """An async connection (the daemon's writer and listener); QueueFull when it cannot be made."""
    import psycopg

    try:
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, **connect_options(dsn, node, role)
        )
    except psycopg.Error as exc:
        raise storage_error(exc) from None


# SQLSTATEs (whole classes, or single codes) that are the server's condition, not a
# fault of the statement: the same statement works once the condition clears.
_CONDITIONS = (
    ("08", "connection lost"),
    ("53", "out of resources (disk full, memory, connections)"),
    ("57", "unavailable (shut down, restarting, cancelled)"),
    ("58", "I/O error"),
    ("25006", "read-only (a standby?)"),
    ("40", "conflict with another node's transaction"),
    ("55P03", "locked by another transaction"),
)


def _reason(state: str | None) -> str | None:
    return next((why for code, why in _CONDITIONS if state and state.startswith(code)), None)


def is_condition(exc: BaseException) -> bool:
    """Whether `exc` is a storage condition (QueueFull), as opposed to a bug."""
    import psycopg

    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True  # no SQLSTATE at all when the server went away mid-statement
    return _reason(getattr(exc, "sqlstate", None)) is not None


def is_conflict(exc: BaseException) -> bool:
    """Serialization failure or deadlock: the transaction may simply be run again."""
    return getattr(exc, "sqlstate", None) in ("40001", "40P01")


def storage_error(exc: BaseException, dsn: str | None = None) -> BaseException:
    """The exception a caller sees for a failed database operation: QueueFull for conditions."""
    if not is_condition(exc):
        return exc
    reason = _reason(getattr(exc, "sqlstate", None)) or "unreachable"
    where = f" ({describe(dsn)})" if dsn else ""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    error = QueueFull(f"queue database {reason}{where}: {first_line}")
    error.__cause__ = exc
    return error
