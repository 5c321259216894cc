"""What `sendmail` reads from the configuration, and the copy of it kept beside the file.

`sendmail` needs three settings: where the queue is, the local domain and the
size limit. Parsing TOML for them (tomllib loads re, typing and enum, and
compiles its patterns) would be more than half of sendmail's instructions, so
`relaymail check` and `serve` write them beside the configuration file, in
`<file>.cache`, together with the exact content they were read from:

    relaymail sendmail settings 1
    queue.directory /var/spool/relaymail
    local.domain example.org            (empty: the host's FQDN, looked up at run time)
    max_message_size 36700160
    <the configuration file's content, octet for octet>

`sendmail` uses the copy only when the content it holds is the file's content
now (compared, not a time stamp: it can never be stale), and only when the
copy's owner is root or the file's owner and nobody else may write it (a user
cannot plant settings for another). Anything else, a missing, foreign, torn
or outdated copy among them, and it parses the file itself, as before: the
copy changes how fast sendmail starts, never what it does.
"""

from __future__ import annotations

import os
import stat

from .config_file import (
    DEFAULT_QUEUE_DIRECTORY,
    configured_domain,
    message_size_limit,
    parse_toml,
    read_file,
)
from .config_values import table, text
from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# Bumped with any change to what the settings are read from or how.
_MAGIC = b"relaymail sendmail settings 1"
# The settings' lines are far shorter (a path, a host name, a number).
_MAX_SETTINGS = 8192


class SubmitSettings:
    """What `sendmail` needs to drop a message: where, under which domain, how large.

    A function of the file's content alone (the host's FQDN is looked up when
    asked for), so it can be kept beside the file. A class, not a NamedTuple:
    sendmail does not load typing.
    """

    __slots__ = ("domain", "max_message_size", "queue_directory")

    def __init__(self, queue_directory: str, domain: str | None, max_message_size: int) -> None:
        self.queue_directory = queue_directory
        self.domain = domain  # [local] domain or [delivery] helo_name; None: the host's FQDN
        self.max_message_size = max_message_size

    @property
    def local_domain(self) -> str:
        if self.domain is not None:
            return self.domain
        import socket  # only an unconfigured host pays for the socket module

        return socket.getfqdn()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubmitSettings) and self._values() == other._values()

    def __repr__(self) -> str:
        return f"SubmitSettings{self._values()!r}"

    def _values(self) -> tuple[str, str | None, int]:
        return self.queue_directory, self.domain, self.max_message_size


def submit_settings(path: str | None) -> SubmitSettings:
    """`sendmail`'s settings from the file at `path` (None: the embedded defaults)."""
    if path is None:
        return settings_of({})
    content, owner = read_file(path)
    return _cached(path, content, owner) or settings_of(parse_toml(content, path))


def settings_of(raw: Mapping[str, Any]) -> SubmitSettings:
    """The settings in a parsed configuration; ConfigError names a bad key."""
    queue = table(raw, "queue")
    listeners = raw.get("listener", [])
    if not isinstance(listeners, list) or not all(isinstance(t, dict) for t in listeners):
        raise ConfigError("listener", "must be an array of tables ([[listener]])")
    return SubmitSettings(
        text(queue["directory"], "queue.directory")
        if "directory" in queue
        else DEFAULT_QUEUE_DIRECTORY,
        configured_domain(raw),
        message_size_limit(listeners),
    )


def cache_path(path: str) -> str:
    return path + ".cache"


def write_cache(path: str) -> bool:
    """Write the settings of the file at `path` beside it, for `sendmail`; whether it did.

    Best effort: nothing is written by a user whose copy sendmail would not trust,
    or where this user may not write, or when what sendmail reads is broken (it
    names the key itself). An unchanged copy is not rewritten.
    """
    try:
        content, owner = read_file(path)
        settings = settings_of(parse_toml(content, path))
    except ConfigError:
        return False
    if os.geteuid() not in (0, owner):
        return False
    kept = _encode(settings, content)
    target = cache_path(path)
    try:
        with open(target, "rb") as current:
            if current.read(len(kept) + 1) == kept:
                return True
    except OSError:
        pass
    temp = f"{target}.{os.getpid()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o644)  # whatever the umask: every user's sendmail reads it
            file.write(kept)
        # No fsync: a copy torn by a crash does not match the file, and is not used.
        os.rename(temp, target)
    except OSError:
        try:  # noqa: SIM105 (no contextlib: see the module's docstring)
            os.unlink(temp)
        except OSError:
            pass
        return False
    return True


def _encode(settings: SubmitSettings, content: bytes) -> bytes:
    lines = [
        _MAGIC.decode(),
        f"queue.directory {settings.queue_directory}",
        f"local.domain {settings.domain or ''}",
        f"max_message_size {settings.max_message_size}",
    ]
    return "\n".join(lines).encode() + b"\n" + content


def _cached(path: str, content: bytes, owner: int) -> SubmitSettings | None:
    """The copy beside `path` if it holds `content` and is trusted; else None."""
    try:
        fd = os.open(cache_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        found = os.fstat(fd)
        trusted = found.st_uid in (0, owner) and not found.st_mode & 0o022
        if not trusted or not stat.S_ISREG(found.st_mode):
            return None
        limit = len(content) + _MAX_SETTINGS
        kept = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    parts = kept.split(b"\n", 4)
    if len(kept) > limit or len(parts) != 5 or parts[0] != _MAGIC or parts[4] != content:
        return None
    try:
        values = [line.decode().partition(" ") for line in parts[1:4]]
    except UnicodeDecodeError:
        return None
    keys = tuple(key for key, _, _ in values)
    if keys != ("queue.directory", "local.domain", "max_message_size"):
        return None
    queue, domain, limit_text = (value for _, _, value in values)
    if not limit_text.isdecimal():
        return None
    return SubmitSettings(queue, domain or None, int(limit_text))
