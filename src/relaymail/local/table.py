"""The aliases file on disk: read, checked, and re-read when it changes.

The daemon looks at the file's stat before each message it queues (one
stat call): an edited file takes effect without a SIGHUP, as Postfix's
`newaliases` needs none either. A file that turns bad keeps the last good
aliases in force and says so once per change.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..errors import AliasFileInvalid, AliasFileUnreadable, ConfigError
from .aliases import Aliases, AliasProblem, alias_key, parse_aliases
from .expand import Expansion, expansions, merged

if TYPE_CHECKING:
    from ..config import LocalSettings

__all__ = ["AliasTable", "load_aliases"]

log = logging.getLogger("relaymail.aliases")

# Far beyond any real aliases file; a bigger one is a mistake, read in full at every change.
MAX_FILE_SIZE: Final = 16 * 1024 * 1024

_Stamp = tuple[int, int, int, int]
_GONE: Final[_Stamp] = (0, 0, 0, 0)


def load_aliases(path: Path, domain: str) -> Aliases:
    """The checked aliases of `path` for `domain`.

    Raises AliasFileUnreadable or AliasFileInvalid (every problem, by line).
    """
    return _read(path, domain)[0]


def _read(path: Path, domain: str) -> tuple[Aliases, _Stamp]:
    try:
        with path.open("rb") as file:
            stamp = _stamp(os.fstat(file.fileno()))
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise AliasFileUnreadable(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_SIZE:
        raise AliasFileUnreadable(path, f"larger than {MAX_FILE_SIZE // 1024 // 1024} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AliasFileInvalid(path, (AliasProblem(line, "not UTF-8 text"),)) from None
    aliases, problems = parse_aliases(text, domain)
    if problems:
        raise AliasFileInvalid(path, problems)
    return aliases, stamp


def _stamp(st: os.stat_result) -> _Stamp:
    # The inode too: an editor that saves by rename can keep mtime and size.
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class AliasTable:
    """The local domain and the aliases in force; shared by the daemon's front doors."""

    def __init__(self, domain: str, path: Path | None, aliases: Aliases, stamp: _Stamp) -> None:
        self.domain = domain
        self.path = path
        self._aliases = aliases
        self._stamp = stamp

    @classmethod
    def open(cls, settings: LocalSettings) -> AliasTable:
        """Read [local] aliases; a problem is a ConfigError naming the line (serve exits 78)."""
        if settings.aliases is None:
            return cls(settings.domain, None, Aliases(), _GONE)
        try:
            aliases, stamp = _read(settings.aliases, settings.domain)
        except (AliasFileInvalid, AliasFileUnreadable) as exc:
            raise ConfigError("local.aliases", str(exc)) from None
        log.info("aliases %s: %d alias(es) for %s", settings.aliases, len(aliases), settings.domain)
        return cls(settings.domain, settings.aliases, aliases, stamp)

    def adopt(self, other: AliasTable) -> None:
        """Take a reloaded configuration's table; holders of this one see it at once."""
        self.domain, self.path = other.domain, other.path
        self._aliases, self._stamp = other._aliases, other._stamp

    def current(self) -> Aliases:
        """The aliases, re-read first if the file changed since it was last read."""
        if self.path is None:
            return self._aliases
        try:
            stamp = _stamp(os.stat(self.path))
        except OSError as exc:
            if self._stamp != _GONE:
                log.error("aliases %s: %s; the last good aliases stay", self.path, exc.strerror)
            self._stamp = _GONE
            return self._aliases
        if stamp != self._stamp:
            self._stamp = stamp  # a bad file is reported once, not at every message
            try:
                self._aliases, self._stamp = _read(self.path, self.domain)
                log.info("aliases %s re-read: %d alias(es)", self.path, len(self._aliases))
            except (AliasFileInvalid, AliasFileUnreadable) as exc:
                log.error("aliases not re-read, the last good ones stay: %s", exc)
        return self._aliases

    def expansions(self, recipients: Sequence[str]) -> tuple[Expansion, ...]:
        return expansions(recipients, self.current(), self.domain)

    def expand(self, recipients: Sequence[str]) -> tuple[str, ...]:
        return merged(self.expansions(recipients))

    def has_alias(self, address: str) -> bool:
        """Whether `address` (bare or local@domain) is one of our aliases."""
        return self.current().get(alias_key(address, self.domain)) is not None
