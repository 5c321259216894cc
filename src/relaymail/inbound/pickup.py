"""The pickup: messages from the maildrop into the queue (Postfix's pickup daemon).

`sendmail` leaves one file per message in `<queue.directory>/maildrop` (format
and permissions: relaymail.maildrop). The daemon scans it at start and then
every SCAN_INTERVAL. Per file: open without following links, check it is a
plain file with one link, parse it strictly, derive the sender from the
file's owner, queue it through the daemon's spool (the listeners' queue
entry), and only then unlink it. A file that cannot be a message goes to
`maildrop/corrupt/` with one log line; nothing in a file can stop the daemon.

No duplicates: the spool records the file's name in the transaction that
queues the message (Store.enqueue(pickup=...)). A crash after that commit and
before the unlink leaves the file, and the next scan finds its name queued
already, so it only unlinks it. Once the unlinks are on disk (directory
fsync), the names are forgotten.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import pwd
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import observe
from ..address import check_submission
from ..commands.input import size_limit
from ..config import Config
from ..dsn_request import (
    DsnRequest,
    RecipientDsn,
    parse_envid,
    parse_notify,
    parse_ret,
    xtext_encode,
)
from ..errors import MaildropCorrupt, QueueFull, QueueUnusable, RelaymailError
from ..headers import field, mailbox
from ..maildrop import (
    CORRUPT_NAME,
    DIRECTORY_NAME,
    MAX_HEADER,
    MODE,
    TEMP_PREFIX,
    Submission,
    decode_head,
    is_file_name,
    local_address,
)
from ..message import Envelope, Origin, message_id
from ..message_data import CHUNK, MessageData
from ..queue import Store
from ..queue.files import prepare_directory
from ..queue.store import TraceHeader
from ..queue_problem import QueueProblem
from .cleanup import local_received_header, missing_fields
from .intake import Intake, IntakeResult

log = logging.getLogger("relaymail.pickup")

FOLD_AT = 1000
"""Lines over 998 octets and CRLF (RFC 5322 2.1.1) are folded, as a listener's are by
default: left long, a next hop refuses them (500 Line too long) and the mail bounces."""

SCAN_INTERVAL = 0.5
# A temporary file this old was left by a sendmail killed while writing it.
STALE_TEMP = 24 * 3600.0
BATCH = 500  # files per scan before their names are forgotten


class Spool(Protocol):
    def __call__(
        self,
        envelope: Envelope,
        data: MessageData,
        trace: TraceHeader,
        *,
        origin: Origin,
        pickup: str,
        arrived: float,
    ) -> Awaitable[str]: ...


@dataclass(frozen=True, slots=True)
class Sender:
    """The envelope sender of a picked-up file and what was asked for, if it was refused."""

    address: str
    refused: str | None = None  # the -f of an untrusted user, not used


def envelope_sender(requested: str | None, user: str, trusted: bool, config: Config) -> Sender:
    """The file owner's own address, unless a trusted user (root, the daemon's) asked for -f."""
    own = local_address(user, config.local.domain)
    if requested is None or requested == own:
        return Sender(own)
    if trusted:
        return Sender(requested)
    return Sender(own, refused=requested)


def open_maildrop(queue_directory: Path) -> Path:
    """Create or repair the maildrop (mode 1733) and make the queue directory traversable.

    Other users must reach `maildrop/` through the queue directory, so that
    becomes 0711 and every file beside it private: existing ones are made 0600
    (SQLite's -wal and -shm copy the database's mode) and the daemon's umask
    is 077 for those it creates later.
    """
    prepare_directory(queue_directory)
    maildrop = queue_directory / DIRECTORY_NAME
    corrupt = maildrop / CORRUPT_NAME
    try:
        os.chmod(queue_directory, 0o711)
        for entry in os.scandir(queue_directory):
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mode & 0o077:
                os.chmod(entry.path, 0o600)
        for path, mode in ((maildrop, MODE), (corrupt, 0o700)):
            if not path.is_dir() or path.is_symlink():
                os.mkdir(path, 0o700)
            os.chmod(path, mode)  # the umask would have cut the mkdir's mode
    except FileExistsError:
        problem = QueueProblem.NOT_A_DIRECTORY
        raise QueueUnusable(maildrop, problem, "not a directory") from None
    except OSError as exc:
        detail = f"cannot prepare the maildrop: {exc.strerror or exc}"
        raise QueueUnusable(maildrop, QueueProblem.CANNOT_WRITE, detail) from None
    return maildrop


@dataclass
class Pickup:
    maildrop: Path
    spool: Spool
    store: Store
    settings: Callable[[], Config]  # the running configuration (it changes on SIGHUP)
    trusted: frozenset[int]  # root and the daemon's own user
    _waiting: bool = False  # the queue refused: said once until it takes mail again

    async def run(self) -> None:
        while True:
            await self.scan()
            await asyncio.sleep(SCAN_INTERVAL)

    async def scan(self) -> None:
        """Queue what the maildrop holds now."""
        try:
            names = sorted(os.listdir(self.maildrop))
        except OSError as exc:
            log.error("maildrop %s: cannot list it: %s", self.maildrop, exc.strerror or exc)
            return
        ready = []
        for name in names:
            if name == CORRUPT_NAME:
                continue
            if name.startswith(TEMP_PREFIX):
                self._drop_stale(name)
            elif is_file_name(name):
                ready.append(name)
            else:
                self._set_aside(name, "not a maildrop file name")
        for start in range(0, len(ready), BATCH):
            if not await self._take_batch(ready[start : start + BATCH]):
                return

    async def _take_batch(self, names: list[str]) -> bool:
        done = []
        queued = self.store.queued_pickups(names)
        try:
            for name in names:
                if name in queued:
                    log.info("maildrop %s: queued already as id=%s; removed", name, queued[name])
                elif not await self._take(name):
                    continue
                (self.maildrop / name).unlink(missing_ok=True)
                done.append(name)
        except QueueFull as exc:
            if not self._waiting:
                log.warning("maildrop: cannot queue now (%s); files wait", exc)
            self._waiting = True
            return False
        finally:
            if done:
                await self._forget(done)
        self._waiting = False
        return True

    async def _take(self, name: str) -> bool:
        """Queue one file; False if it is gone or was set aside. QueueFull: try later."""
        config = self.settings()
        limit = size_limit(config)
        data = MessageData(self.maildrop.parent)
        try:
            info, submission, received = await asyncio.to_thread(
                _read, self.maildrop / name, limit, data
            )
            owner = info.st_uid
            user = _user_name(owner)
            sender = envelope_sender(submission.sender, user, owner in self.trusted, config)
            if received.failure is not None:
                raise QueueFull(f"cannot hold the message: {received.failure}")
            if data.size > limit:
                raise MaildropCorrupt(f"message larger than the limit of {limit} octets")
            if sender.refused is not None:
                # As Postfix and sendmail do: the recipient sees who tried what.
                host = config.delivery.helo_name
                asked = sender.refused or "<>"
                warning = f"{host}: {user} set sender to {asked} using -f"
                data.prepend(field("X-Authentication-Warning", warning).encode() + b"\r\n")
                log.warning(
                    "maildrop %s: uid %d (%s) may not set the sender: %s ignored, from=<%s>",
                    name, owner, user, asked, sender.address,
                )  # fmt: skip
            # Postfix's cleanup for local mail: From (the -F name encoded, never pasted
            # in), Date and Message-ID where the message lacks them.
            author = sender.address or f"MAILER-DAEMON@{config.delivery.helo_name}"
            added = missing_fields(
                received.headers,
                hostname=config.delivery.helo_name,
                add_from=mailbox(author, submission.full_name),
            )
            data.prepend(added)
            mid = message_id(data.head())
            # What sendmail checked, again: the file is anyone's to write.
            check_submission(sender.address, submission.recipients)
            envelope = Envelope(
                sender.address, submission.recipients, dsn=dsn_request(submission)
            )
            # Postfix's pickup trace: no remote host, the submitting uid, and the queue id.
            trace = functools.partial(
                local_received_header,
                hostname=config.delivery.helo_name,
                uid=owner,
                recipients=envelope.recipients,
            )
            # The file's mtime: when sendmail finished writing it (delays=a).
            queue_id = await self.spool(
                envelope, data, trace, origin=Origin.LOCAL, pickup=name, arrived=info.st_mtime
            )
        except FileNotFoundError:
            return False
        except QueueFull:
            raise
        except (MaildropCorrupt, RelaymailError, OSError, ValueError) as exc:
            self._set_aside(name, str(exc) if not isinstance(exc, OSError) else exc.strerror)
            return False
        finally:
            data.close()  # a cancelled write that still reads it fails whole, not in part
        observe.emit(observe.PickedUp(queue_id, owner, user, envelope.sender, data.size, mid))
        return True

    async def _forget(self, names: list[str]) -> None:
        try:
            _fsync_directory(self.maildrop)
            await self.store.forget_pickups(names)
        except (OSError, QueueFull) as exc:
            # Kept names are harmless (never reused) and pruned when the queue opens.
            log.warning("maildrop: picked-up names kept for now: %s", exc)

    def _set_aside(self, name: str, reason: str | None) -> None:
        try:
            os.rename(self.maildrop / name, self.maildrop / CORRUPT_NAME / name)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("maildrop %s: cannot move it to %s/: %s", name, CORRUPT_NAME, exc.strerror)
            return
        log.warning("maildrop %s: moved to %s/: %s", name, CORRUPT_NAME, reason)

    def _drop_stale(self, name: str) -> None:
        path = self.maildrop / name
        try:
            if time.time() - path.lstat().st_mtime > STALE_TEMP:
                path.unlink()
                log.info("maildrop %s: removed, left unfinished by a sendmail", name)
        except OSError:
            pass  # renamed or removed by its sendmail meanwhile


def _read(
    path: Path, limit: int, data: MessageData
) -> tuple[os.stat_result, Submission, IntakeResult]:
    """The status (owner, mtime), the envelope and the message of a maildrop file of its own.

    The message goes through the intake into ``data`` in chunks: a file of the
    largest size allowed is never in memory whole.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MaildropCorrupt("a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as stream:
        # fstat of the open file, not the name: what is read is what was checked.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MaildropCorrupt("not a regular file")
        if info.st_nlink != 1:
            raise MaildropCorrupt("a file with other links (not written by sendmail)")
        first = stream.read(MAX_HEADER)
        head = decode_head(first)
        if head.size > limit:
            raise MaildropCorrupt("larger than the message size limit")
        intake = Intake(data, fold_at=FOLD_AT, unstuff=False)
        piece = first[head.start :]
        seen = 0
        # The owner may still write to the file: what counts is what is read.
        while piece and seen <= head.size:
            seen += len(piece)
            intake.feed(piece)
            piece = stream.read(CHUNK)
    if seen != head.size:
        raise MaildropCorrupt(f"size is not the {seen} octets that follow")
    return info, head.submission, intake.finish()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise MaildropCorrupt(f"uid {uid} has no user name") from None


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dsn_request(submission: Submission) -> DsnRequest:
    """sendmail's -N, -R and -V as the RFC 3461 parameters SMTP would have carried: -N
    for every recipient, -V (plain text) in xtext. ValueError for a value sendmail
    would not have written (the file is set aside)."""
    flags = dict(submission.flags)
    notify = parse_notify(flags["N"]) if "N" in flags else None
    dsn = DsnRequest(
        parse_ret(flags["R"]) if "R" in flags else None,
        parse_envid(xtext_encode(flags["V"])) if "V" in flags else None,
    )
    if notify is None:
        return dsn
    return dsn.with_recipients((r, RecipientDsn(notify)) for r in submission.recipients)
