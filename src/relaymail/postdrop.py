"""Writing one maildrop file, as Postfix's postdrop does: `sendmail`'s half of the maildrop.

The format and the daemon's strict reading of it are in maildrop.py, which
re-exports what is here. This half imports nothing but `os` and `time`: it is what
`sendmail` runs for every cron job and PHP mail(), and its start-up is most of
its cost (config_file.py).
"""

from __future__ import annotations

import os
import time

DIRECTORY_NAME = "maildrop"
FILE_MODE = 0o644  # readable by the daemon's user; the name is the secret (maildrop.py)
# Where an installed relaymail keeps its queue (install-system, the service unit).
SYSTEM_QUEUE = "/var/spool/relaymail"
TEMP_PREFIX = "t."  # being written: not taken until renamed to its final name
MAGIC = b"relaymail-maildrop 1\n"


def local_address(user: str, domain: str) -> str:
    """A local user's address: `user@` the local domain ([local] domain, default helo_name)."""
    return f"{user}@{domain}"


def file_name(time_ns: int, pid: int, token: bytes) -> str:
    """The final name of a file: time-ordered, unique by pid and 16 random octets."""
    return f"{time_ns:016x}.{pid}.{token.hex()}"


def file_content(
    recipients: tuple[str, ...],
    data: bytes,
    submitted_at: float,
    sender: str | None = None,
    full_name: str | None = None,
    flags: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A maildrop file (version 1, maildrop.py) for these fields: maildrop.Submission's."""
    lines = [f"submitted-at {submitted_at:.6f}"]
    if sender is not None:
        lines.append(f"sender {sender or '<>'}")
    if full_name is not None:
        lines.append(f"full-name {full_name}")
    lines += [f"recipient {r}" for r in recipients]
    lines += [f"flag {name} {value}" for name, value in flags]
    lines.append(f"size {len(data)}")
    return MAGIC + "\n".join(lines).encode() + b"\n\n" + data


def drop(maildrop: str, content: bytes) -> str:
    """Write one file into `maildrop` durably (a temporary name, fsync, rename); its name.

    OSError (a full disk, a quota, a maildrop made read-only) leaves no file behind.
    """
    name = file_name(time.time_ns(), os.getpid(), os.urandom(16))
    temp = os.path.join(maildrop, TEMP_PREFIX + name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask: the daemon's user reads it
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.rename(temp, os.path.join(maildrop, name))
        except BaseException:
            # Not contextlib.suppress: contextlib (with collections) would double the imports.
            try:  # noqa: SIM105
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        try:
            directory = os.open(maildrop, os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:
            # Other users cannot open a 1733 directory to fsync it. On a journaling
            # filesystem (ext4, xfs) fsync of the file commits the journal that
            # holds the rename, which is what Postfix's postdrop relies on too.
            os.fsync(fd)
        else:
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    finally:
        os.close(fd)
    return name
