"""[shaping]: traffic limits per destination and per MX group, and the back-off of throttling.

An entry is a destination (`[shaping."gmail.com"]`: a recipient domain, or
the key of the [routes] entry that carries it), an MX group
(`[shaping."mx:.google.com"]`: every destination whose MX hosts are under
google.com counts against one set of the group's limits, so all Google-hosted
domains share Google's), or `*`, the defaults of every destination. A key an
entry leaves out comes from the entries below it: domain > MX group > `*` >
the built-in defaults. Pure data: the counting is the slot table's
(slot_table.py), the suspensions are suspension.py's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .config_fields import host, read_table, seconds, whole
from .errors import ConfigError
from .resolver import governing_key, is_ip

GROUP_PREFIX: Final = "mx:"


@dataclass(frozen=True, slots=True)
class MxGroup:
    """Destinations whose most preferred MX hosts are under `suffix` (one set of counters)."""

    suffix: str  # "google.com": matches google.com and every name below it

    @property
    def label(self) -> str:
        return f"{GROUP_PREFIX}.{self.suffix}"

    def holds(self, mx_host: str) -> bool:
        return mx_host == self.suffix or mx_host.endswith("." + self.suffix)


@dataclass(frozen=True, slots=True)
class Shape:
    """The limits of one destination or one MX group, every key decided."""

    max_connections: int | None = None  # None: delivery.destination_concurrency
    max_messages_per_minute: int | None = None  # None: no rate limit
    max_messages_per_connection: int = 100  # then the session is closed, not reused
    # A throttling reply suspends for backoff_min, doubling with each one that follows
    # while it is suspended or just after, up to backoff_max.
    backoff_min: float = 60.0
    backoff_max: float = 3600.0


@dataclass(frozen=True, slots=True)
class ShapeEntry:
    """What one [shaping."..."] table sets; None: the entry below decides."""

    max_connections: int | None = None
    max_messages_per_minute: int | None = None
    max_messages_per_connection: int | None = None
    backoff_min: float | None = None
    backoff_max: float | None = None

    def over(self, base: Shape) -> Shape:
        chosen = {
            f.name: value
            for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) is not None
        }
        shape = dataclasses.replace(base, **chosen)
        # An entry that raises only backoff_min above the backoff_max it inherits moves both.
        return dataclasses.replace(shape, backoff_max=max(shape.backoff_max, shape.backoff_min))


@dataclass(frozen=True, slots=True)
class ShapingSettings:
    default: Shape = field(default_factory=Shape)  # the built-in defaults with `*` over them
    domains: Mapping[str, ShapeEntry] = field(default_factory=dict)  # "d.example", ".d.example"
    groups: tuple[tuple[MxGroup, ShapeEntry], ...] = ()  # the longest suffix first

    def group_of(self, mx_hosts: Iterable[str]) -> MxGroup | None:
        """The group of a destination whose most preferred MX hosts are `mx_hosts`."""
        hosts = tuple(mx_hosts)
        for group, _entry in self.groups:
            if any(group.holds(h) for h in hosts):
                return group
        return None

    def shape(self, destination: str, group: MxGroup | None) -> Shape:
        """The limits of one destination: a recipient domain or a [routes] key."""
        shape = self.default
        if group is not None:
            shape = self._group_entry(group).over(shape)
        key = governing_key(self.domains, destination)
        return self.domains[key].over(shape) if key is not None else shape

    def group_shape(self, group: MxGroup) -> Shape:
        """The limits all of `group`'s destinations share."""
        return self._group_entry(group).over(self.default)

    def _group_entry(self, group: MxGroup) -> ShapeEntry:
        return next((e for g, e in self.groups if g == group), ShapeEntry())


_FIELDS: Final = {
    "max_connections": whole(1, 10_000),
    "max_messages_per_minute": whole(1, 10_000_000),
    "max_messages_per_connection": whole(1, 10_000_000),
    "backoff_min": seconds,
    "backoff_max": seconds,
}


def _entry(raw: Any, where: str) -> ShapeEntry:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    entry = ShapeEntry(**read_table(raw, where, _FIELDS))
    low, high = entry.backoff_min, entry.backoff_max
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}.backoff_min", f"is above backoff_max ({low:g}s > {high:g}s)")
    return entry


def parse_shaping(raw: Mapping[str, Any]) -> ShapingSettings:
    """The [shaping] section: `*`, domains (".example.com": every name below) and mx: groups."""
    default = Shape()
    domains: dict[str, ShapeEntry] = {}
    groups: dict[MxGroup, ShapeEntry] = {}
    for name, table in raw.items():
        where = f'shaping."{name}"'
        entry = _entry(table, where)
        if name == "*":
            default = entry.over(default)
        elif name.startswith(GROUP_PREFIX):
            suffix = name[len(GROUP_PREFIX) :].removeprefix(".")
            group = MxGroup(host(suffix, where)) if suffix else None
            if group is None or is_ip(group.suffix):
                raise ConfigError(where, 'an MX group is "mx:" and a host suffix (mx:.google.com)')
            if group in groups:
                raise ConfigError(where, f"the same MX group as another entry: {group.label}")
            groups[group] = entry
        else:
            dot = "." if name.startswith(".") else ""
            domain = host(name[len(dot) :], where) if name.strip(".") else ""
            if not domain or is_ip(domain):
                raise ConfigError(where, 'must be a domain, ".domain", "mx:.suffix" or "*"')
            if dot + domain in domains:
                raise ConfigError(where, f"the same domain as another entry: {dot}{domain}")
            domains[dot + domain] = entry
    ordered = sorted(groups.items(), key=lambda item: -len(item[0].suffix))
    return ShapingSettings(default, domains, tuple(ordered))
