"""Everything `serve` checks before it starts, as a list of problems; `relaymail check` too.

The configuration file itself is checked when it is read (load_config stops
at its first bad key); what is checked here is what only a server needs:
each listener (its certificate readable and matching its key), the [users]
hashes, the service user, root on a privileged port, the aliases file, and
the queue directory as the service user will find it. Each problem is one
line naming the key; `serve` refuses to start on any of them, `check`
lists them all.

A new kind of check (DKIM keys, say: readable, private, matching their DNS
record) is one more function in CHECKS.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .daemon_lock import FILENAME as LOCK_FILENAME
from .errors import AliasFileInvalid, AliasFileUnreadable, ConfigError
from .queue_problem import QueueProblem

QUEUE_KEY = "queue.directory"
_SQLITE_MAGIC = b"SQLite format 3\0"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason `serve` would not start. `queue` says the queue directory is the trouble."""

    key: str
    reason: str
    queue: QueueProblem | None = None

    @property
    def exit_code(self) -> int:
        return 78 if self.queue is None else self.queue.exit_code

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


class PreflightFailed(Exception):
    """`serve` found problems before starting; each is one line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems

    @property
    def exit_code(self) -> int:
        # A configuration mistake first: fixing the directory would not be enough.
        codes = [p.exit_code for p in self.problems]
        return 78 if 78 in codes else codes[0]


def preflight(config: Config) -> list[Problem]:
    """Every problem `serve` would stop on, in the order of CHECKS."""
    return [problem for check in CHECKS for problem in check(config)]


def check_server_config(config: Config) -> None:
    """The server's part of the configuration, for a reload: its first mistake, raised."""
    for problem in _server_settings(config):
        raise ConfigError(problem.key, problem.reason)


def _config_problem(error: ConfigError) -> Problem:
    return Problem(error.key, error.reason)


def _server_settings(config: Config) -> Iterator[Problem]:
    listeners = []  # (index in the file, settings): a broken one keeps its number
    for i, built in enumerate(config.each_listener()):
        if isinstance(built, ConfigError):
            yield _config_problem(built)
        else:
            listeners.append((i, built))
    try:
        users = config.users()
    except ConfigError as exc:
        yield _config_problem(exc)
        users = {}
    for n, (i, listener) in enumerate(listeners):
        for j, other in listeners[:n]:
            if (other.host, other.port) == (listener.host, listener.port):
                yield Problem(f"listener[{i}].address", f"the same as listener[{j}]'s")
        if listener.auth_required and not users:
            yield Problem(f"listener[{i}]", "requires AUTH but [users] is empty")
        if listener.mode != "relay" and listener.tls_cert_file is None:
            yield Problem(f"listener[{i}].tls_cert_file", f"a {listener.mode} listener needs one")
    if config.server.user is not None:
        from .service import lookup_user, switch_problem

        try:
            refusal = switch_problem(lookup_user(config.server.user))
        except ConfigError as exc:
            refusal = exc
        if refusal is not None:
            yield _config_problem(refusal)
    if config.admin is not None:
        from .admin.settings import load_token

        try:
            load_token(config.admin)  # read by serve alone: sendmail users need not read it
        except ConfigError as exc:
            yield _config_problem(exc)


def _root(config: Config) -> Iterator[Problem]:
    from .service import must_drop_root

    ports = [b.port for b in config.each_listener() if not isinstance(b, ConfigError)]
    if refusal := must_drop_root(os.geteuid(), config.server.user, ports):
        yield _config_problem(refusal)


def _aliases(config: Config) -> Iterator[Problem]:
    from .local import load_aliases

    if config.local.aliases is None:
        return
    try:
        load_aliases(config.local.aliases, config.local.domain)
    except AliasFileUnreadable as exc:
        yield Problem("local.aliases", str(exc))
    except AliasFileInvalid as exc:
        for problem in exc.problems:
            yield Problem("local.aliases", f"{config.local.aliases}: {problem}")


@dataclass(frozen=True, slots=True)
class _Account:
    """Who the queue must be writable by: the service user, else whoever runs serve."""

    name: str
    uid: int
    gids: frozenset[int]


def _account(config: Config) -> _Account | None:
    if config.server.user is None:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = f"uid {uid}"
        return _Account(name, uid, frozenset({os.getegid(), *os.getgroups()}))
    from .service import lookup_user, switch_problem

    try:
        user = lookup_user(config.server.user)
    except ConfigError:
        return None  # said by _server_settings
    if switch_problem(user) is not None:
        return None  # said too; the queue would not be opened as that user at all
    return _Account(user.name, user.uid, frozenset(os.getgrouplist(user.name, user.gid)))


def _bits(path: Path, account: _Account) -> int:
    """The rwx bits of `path` that apply to `account` (owner, group or others)."""
    st = path.stat()
    if st.st_uid == account.uid:
        return (st.st_mode >> 6) & 7
    if st.st_gid in account.gids:
        return (st.st_mode >> 3) & 7
    return st.st_mode & 7


def _may_write(path: Path, account: _Account, *, directory: bool) -> bool:
    wanted = os.W_OK | (os.X_OK if directory else 0)
    if account.uid == os.geteuid():
        # The kernel's own answer: ACLs, read-only mounts, immutable files, the path's
        # directories included.
        return os.access(path, wanted)
    # Another account (we are root, about to become it): the mode bits on the way and
    # at the end, and what stops even root (a read-only mount, the immutable attribute).
    if not all(_bits(parent, account) & os.X_OK for parent in path.absolute().parents):
        return False
    return _bits(path, account) & wanted == wanted and os.access(path, os.W_OK)


def _queue_directory(config: Config) -> Iterator[Problem]:
    account = _account(config)
    if account is None:
        return
    directory = config.queue.directory
    existing = directory
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    who = f"{account.name} (uid {account.uid})"
    try:
        if not existing.is_dir():
            yield Problem(QUEUE_KEY, f"{directory}: not a directory", QueueProblem.NOT_A_DIRECTORY)
            return
        if not _may_write(existing, account, directory=True):
            creates = "" if existing == directory else f" (to create {directory})"
            reason = f"{existing}: not writable by {who}{creates}"
            yield Problem(QUEUE_KEY, reason, QueueProblem.CANNOT_WRITE)
            return
        lock = directory / LOCK_FILENAME
        if os.path.lexists(lock) and not stat.S_ISREG(lock.lstat().st_mode):
            # Opened without following links: a link there is a trap, not a lock.
            yield Problem(QUEUE_KEY, f"{lock}: not a regular file", QueueProblem.CANNOT_WRITE)
            return
        for name in ("queue.db", "queue.db-wal", "queue.db-shm", LOCK_FILENAME):
            path = directory / name
            if path.exists() and not _may_write(path, account, directory=False):
                reason = f"{path}: not writable by {who}"
                yield Problem(QUEUE_KEY, reason, QueueProblem.CANNOT_WRITE)
    except OSError as exc:
        yield Problem(QUEUE_KEY, f"{directory}: {exc.strerror or exc}", QueueProblem.CANNOT_WRITE)
        return
    yield from _database(directory / "queue.db")


def _database(path: Path) -> Iterator[Problem]:
    """A database that is no queue, or a newer one's; read without locks or new files."""
    from .queue.schema import SCHEMA_VERSION

    try:
        with path.open("rb") as file:
            magic = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        yield Problem(QUEUE_KEY, f"{path}: {exc.strerror or exc}", QueueProblem.CANNOT_WRITE)
        return
    if magic and magic != _SQLITE_MAGIC:
        yield Problem(QUEUE_KEY, f"{path}: not an SQLite database", QueueProblem.NOT_A_QUEUE)
        return
    # immutable=1: no lock, no -wal or -shm created (as root they would be root's).
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return  # a fresh queue's schema may sit in the WAL still: the open will judge
    if row and row[0] is not None and row[0] > SCHEMA_VERSION:
        reason = f"queue schema version {row[0]}, this relaymail knows {SCHEMA_VERSION}"
        yield Problem(QUEUE_KEY, f"{path}: {reason}", QueueProblem.NEWER_SCHEMA)


Check = Callable[[Config], Iterable[Problem]]


def _dkim_keys(config: Config) -> Iterator[Problem]:
    if not config.dkim:
        return  # no [dkim]: its code is not even imported
    from .dkim.keys import check_dkim_keys

    for error in check_dkim_keys(config):
        yield _config_problem(error)


CHECKS: tuple[Check, ...] = (_server_settings, _root, _aliases, _queue_directory, _dkim_keys)

__all__ = ["CHECKS", "PreflightFailed", "Problem", "check_server_config", "preflight"]
