"""The aliases file (Sendmail's and Postfix's aliases(5) format), parsed without I/O.

    # comment
    root: admin@example.org, ops
    ops:  alice@example.net,
          bob@example.net          (a line starting with whitespace continues the one before)
    "help desk": \\helpdesk        (\\name: this name, not expanded again)

relaymail does no local delivery, so the targets Sendmail hands to its local
mailer (`:include:` lists, `|command` pipes, `/file` appends) are refused with
the line that holds them, never skipped: a skipped pipe is mail silently lost.
The alias graph is checked here too, for the domain the aliases serve: a loop
through two or more names is refused with the cycle named, while a name that
lists itself (`user: user, backup@x`) keeps that address, as in Sendmail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from ..errors import AddressError
from ..message import check_address, domain_of

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANSION",
    "Alias",
    "AliasProblem",
    "Aliases",
    "Target",
    "alias_key",
    "parse_aliases",
]

MAX_EXPANSION: Final = 1000
"""Addresses one alias may stand for, counted before duplicates are removed:
a hostile file of aliases listing each other twice would double at each level."""
MAX_DEPTH: Final = 20
"""Nesting levels (Sendmail's MaxAliasRecursion is 10)."""

# RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
_MAX_LOCAL_PART: Final = 64
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_UNQUOTED_NAME: Final = re.compile(r"[^\s\"@:,<>()\[\]\\;]+")


@dataclass(frozen=True, slots=True)
class AliasProblem:
    """One mistake in the file, where it is."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Target:
    """One address an alias stands for, as written: a bare name or local@domain."""

    address: str
    expand: bool = True
    """False for `\\name`: delivered as name@domain without looking it up again."""


@dataclass(frozen=True, slots=True)
class Alias:
    name: str
    """The key: the local part, unquoted and lower-case (names match case-insensitively)."""
    targets: tuple[Target, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Aliases:
    """The checked aliases of one file, by key; empty when no file is configured."""

    entries: Mapping[str, Alias] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str | None) -> Alias | None:
        return None if key is None else self.entries.get(key)


def alias_key(address: str, domain: str) -> str | None:
    """The alias name `address` would be found under, or None if it is not a local name.

    A bare name is local; so is name@domain for our own domain (any case).
    """
    local, at, address_domain = address.rpartition("@")
    if not at:
        return _unquote(address).lower()
    try:
        ours = domain_of(address) == domain.lower()
    except AddressError:
        return None
    return _unquote(local).lower() if ours and address_domain else None


def _unquote(local_part: str) -> str:
    if len(local_part) >= 2 and local_part.startswith('"') and local_part.endswith('"'):
        return re.sub(r"\\(.)", r"\1", local_part[1:-1])
    return local_part


def parse_aliases(text: str, domain: str) -> tuple[Aliases, tuple[AliasProblem, ...]]:
    """The aliases `text` defines for `domain`, and every problem found (by line).

    Aliases are only usable when there are no problems; all of them are
    returned so that `newaliases` can list them in one run.
    """
    entries: dict[str, Alias] = {}
    problems: list[AliasProblem] = []
    for number, line in _logical_lines(text, problems):
        try:
            alias = _parse_entry(line, number)
        except _Refused as refused:
            problems.append(AliasProblem(number, str(refused)))
            continue
        if (earlier := entries.get(alias.name)) is not None:
            problems.append(
                AliasProblem(number, f"alias {alias.name!r} already defined on line {earlier.line}")
            )
            continue
        entries[alias.name] = alias
    aliases = Aliases(entries)
    # Over the entries that parsed, so that one run lists loops beside syntax errors.
    problems += _GraphCheck(aliases, domain).problems()
    return aliases, tuple(sorted(problems, key=lambda p: p.line))


class _Refused(Exception):
    """One entry's problem; becomes an AliasProblem with the entry's line."""


def _logical_lines(text: str, problems: list[AliasProblem]) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each entry, continuation lines joined.

    A comment line (first non-blank character `#`) and a blank line are
    skipped without ending the entry, as Postfix reads them.
    """
    start, parts = 0, list[str]()
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if _CONTROL.search(line.replace("\t", " ")):
            problems.append(AliasProblem(number, "contains control characters"))
            continue
        if line[0] in " \t":
            if not parts:
                problems.append(AliasProblem(number, "continuation line with no alias before it"))
                continue
            parts.append(stripped)
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = number, [stripped]
    if parts:
        yield start, " ".join(parts)


def _parse_entry(line: str, number: int) -> Alias:
    name, rest = _split_name(line)
    items = [item.strip() for item in _split_targets(rest)]
    targets = tuple(_target(item) for item in items if item)
    if not targets:
        raise _Refused(f"alias {name!r} has no addresses after the colon")
    return Alias(name, targets, number)


def _split_name(line: str) -> tuple[str, str]:
    if line.startswith('"'):
        match = re.match(r'"((?:[^"\\]|\\.)*)"\s*:', line)
        if match is None:
            raise _Refused('a quoted alias name needs its closing quote, then ":"')
        name, rest = _unquote(f'"{match[1]}"'), line[match.end() :]
    else:
        name, colon, rest = line.partition(":")
        name = name.strip()
        if not colon:
            raise _Refused(f'expected "name: address, ..." (no ":" after {name[:40]!r})')
        if not _UNQUOTED_NAME.fullmatch(name):
            if "@" in name:
                raise _Refused(f"alias name {name!r} is an address: names are local parts only")
            raise _Refused(f"{name[:40]!r} is not an alias name (quote it if it must be)")
    if not name:
        raise _Refused("empty alias name")
    if len(name.encode()) > _MAX_LOCAL_PART:
        raise _Refused(f"alias name {name[:40]!r}... longer than {_MAX_LOCAL_PART} octets")
    return name.lower(), rest


def _split_targets(rest: str) -> Iterator[str]:
    """The comma-separated items, commas inside quotes or <...> not counted."""
    item: list[str] = []
    quoted = bracketed = escaped = False
    for char in rest:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char in "<>" and not quoted:
            bracketed = char == "<"
        elif char == "," and not (quoted or bracketed):
            yield "".join(item)
            item = []
            continue
        item.append(char)
    if quoted:
        raise _Refused("a quote is not closed")
    yield "".join(item)


def _target(item: str) -> Target:
    plain = item.removeprefix('"')
    if item.lower().startswith(":include:"):
        raise _Refused(
            f"{item[:60]!r}: :include: lists are not supported (relaymail does no local "
            "delivery); list the addresses here"
        )
    if plain.startswith("|"):
        raise _Refused(
            f"{item[:60]!r}: pipes to commands are not supported (relaymail does no local delivery)"
        )
    if plain.startswith("/"):
        raise _Refused(
            f"{item[:60]!r}: delivery to files is not supported (relaymail does no local delivery)"
        )
    if item.startswith("<") and item.endswith(">"):
        item = item[1:-1].strip()
    expand = not item.startswith("\\")
    address = item if expand else item[1:]
    local = address.rpartition("@")[0] if "@" in address else address
    try:
        # A bare name is checked as it will be used: qualified with some domain.
        check_address(address if "@" in address else f"{address}@localhost")
        domain_of(address)
    except AddressError as exc:
        raise _Refused(str(exc)) from None
    if len(local.encode()) > _MAX_LOCAL_PART:
        raise _Refused(f"{address[:40]!r}...: local part longer than {_MAX_LOCAL_PART} octets")
    return Target(address, expand)


@dataclass(slots=True)
class _Walk:
    """One alias being counted: addresses so far, nesting below it, a failure under it."""

    name: str
    next_target: int = 0
    count: int = 0
    height: int = 1
    failed: bool = False


class _GraphCheck:
    """Loops, depth and size of every alias's expansion, in time linear in the file.

    Iterative (a chain of thousands of names must not exhaust Python's stack);
    each alias is counted once, and each failure reported once, at the alias
    where it shows: the aliases that lead there fail silently.
    """

    def __init__(self, aliases: Aliases, domain: str) -> None:
        self.entries = aliases.entries
        self.domain = domain
        self.done: dict[str, tuple[int, int] | None] = {}  # name -> (count, height)
        self.found: list[AliasProblem] = []

    def problems(self) -> list[AliasProblem]:
        for name in self.entries:
            if name not in self.done:
                self._walk(name)
        return self.found

    def _walk(self, root: str) -> None:
        stack = [_Walk(root)]
        depth_of = {root: 0}
        while stack:
            walk = stack[-1]
            targets = self.entries[walk.name].targets
            if walk.next_target == len(targets):
                stack.pop()
                del depth_of[walk.name]
                result = self._finish(walk)
                if stack:
                    _merge(stack[-1], result)
                continue
            target = targets[walk.next_target]
            walk.next_target += 1
            key = alias_key(target.address, self.domain) if target.expand else None
            if key is None or key == walk.name or key not in self.entries:
                walk.count += 1  # a name that lists itself keeps that address (Sendmail)
            elif key in depth_of:
                looped = stack[depth_of[key] :]
                cycle = " -> ".join([*(w.name for w in looped), key])
                self.found.append(AliasProblem(self.entries[key].line, f"alias loop: {cycle}"))
                for member in looped:
                    member.failed = True
            elif key in self.done:
                _merge(walk, self.done[key])
            else:
                depth_of[key] = len(stack)
                stack.append(_Walk(key))

    def _finish(self, walk: _Walk) -> tuple[int, int] | None:
        line = self.entries[walk.name].line
        result: tuple[int, int] | None = None
        if walk.failed:
            pass
        elif walk.count > MAX_EXPANSION:
            reason = f"alias {walk.name!r} expands to more than {MAX_EXPANSION} addresses"
            self.found.append(AliasProblem(line, reason))
        elif walk.height > MAX_DEPTH:
            reason = f"aliases nested more than {MAX_DEPTH} levels deep below {walk.name!r}"
            self.found.append(AliasProblem(line, reason))
        else:
            result = (walk.count, walk.height)
        self.done[walk.name] = result
        return result


def _merge(parent: _Walk, child: tuple[int, int] | None) -> None:
    if child is None:
        parent.failed = True
    else:
        parent.count += child[0]
        parent.height = max(parent.height, child[1] + 1)
