"""Typed values from TOML: one reader per kind of value, each naming its full key.

TOML hands over values that are nearly the right type, and Python lets the
near misses through: `true` is an int (`max_recipients = true` means 1), `nan`
and `inf` are floats that pass every `<= 0` check and break timers at run
time, and "" is a string and a Path (the working directory). Every key of
every section, [[listener]] tables included, is read by `read_table` through
one of these readers, so each gets the same checks and its error names the
full dotted key (`listener[0].max_recipients`).

A reader is any `(value, key) -> typed value` callable; a new section is a
table of key -> reader.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .config_values import INT_MAX, has_control, text
from .errors import AddressError, ConfigError
from .message import domain_of
from .resolver import is_ip

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
Reader = Callable[[Any, str], Any]

# Ten years: durations feed datetime arithmetic (queue lifetimes, TLS memory),
# which overflows long before a float does.
_SECONDS_MAX = 3650 * 86400.0


def read_table(raw: Mapping[str, Any], where: str, fields: Mapping[str, Reader]) -> dict[str, Any]:
    """The keys set in `raw`, each through its reader; an unknown key is an error."""
    only(raw, where, set(fields))
    return {name: fields[name](value, f"{where}.{name}") for name, value in raw.items()}


def only(raw: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for name in raw:
        if name not in allowed:
            key = f"{where}.{name}" if where else name
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(allowed))})")


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, not {value!r}")
    return value


def whole(minimum: int = 1, maximum: int = INT_MAX) -> Reader:
    """A reader for a whole number in [minimum, maximum]; a bool or a float is refused."""

    def read(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be a whole number, not {value!r}")
        if not minimum <= value <= maximum:
            raise ConfigError(key, f"must be between {minimum} and {maximum}, not {value}")
        return value

    return read


count = whole()
port = whole(1, 65535)

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(value: Any, key: str) -> float:
    """Seconds from a number or a string such as '30s', '15m', '4h', '5d'; finite, above 0."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        result = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(key, f'expected a duration like "30s", "4h" or "5d", not {value!r}')
    if not math.isfinite(result) or result <= 0:
        raise ConfigError(key, f"must be a finite duration above zero, not {value!r}")
    if result > _SECONDS_MAX:
        raise ConfigError(key, f"must be at most {_SECONDS_MAX / 86400:.0f}d, not {value!r}")
    return result


def path(value: Any, key: str) -> Path:
    # Path("") is ".", the working directory: never what an empty value meant.
    return Path(text(value, key))


def readable_file(value: Any, key: str) -> Path:
    file = path(value, key)
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot read {file}: {exc.strerror or exc}") from None
    if not file.is_file():
        raise ConfigError(key, f"{file} is not a regular file")
    return file


def secret_file(value: Any, key: str) -> Path:
    """A file holding a secret: a regular file that only its owner may read or write.

    ssh refuses a private key others can read for the same reason: a secret in a
    group- or world-readable file is already shared.
    """
    file = path(value, key)
    try:
        info = file.stat()
    except OSError as exc:
        raise ConfigError(key, f"cannot use {file}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(key, f"{file} is not a regular file")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise ConfigError(
            key, f"{file} is readable or writable by others (mode {mode:04o}; chmod 600 it)"
        )
    return file


def read_secret(file: Path, key: str) -> str:
    """The secret in `file` without one trailing newline; the errors never quote it."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        secret = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(key, f"{file} is not UTF-8 text") from None
    # `echo secret > file` adds one newline; anything more is part of the file's mistake.
    secret = secret.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigError(key, f"{file} is empty")
    if has_control(secret):
        raise ConfigError(key, f"{file} holds a line break or another control character")
    return secret


def choice(kind: type[E]) -> Reader:
    """A reader for one of an enum's string values."""

    def read(value: Any, key: str) -> E:
        try:
            return kind(value)
        except ValueError:
            names = ", ".join(str(member.value) for member in kind)
            raise ConfigError(key, f"{value!r} is not one of {names}") from None

    return read


def list_of(
    item: Callable[[Any, str], T], *, empty: bool = True
) -> Callable[[Any, str], tuple[T, ...]]:
    """A reader for a TOML array whose items all go through `item` (errors name the list)."""

    def read(value: Any, key: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, not {type(value).__name__}")
        if not value and not empty:
            raise ConfigError(key, "must not be an empty list")
        return tuple(item(v, key) for v in value)

    return read


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def host(value: Any, key: str) -> str:
    """A host or domain name to look up (`_` allowed, as in DNS; an international
    name becomes its A-labels), or an IP address."""
    name = text(value, key).rstrip(".")
    if is_ip(name):
        return name
    if not name.isascii():
        try:
            name = domain_of(f"postmaster@{name}")
        except AddressError as exc:
            raise ConfigError(key, str(exc)) from None
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ConfigError(key, f"{value!r} is not a valid host name")
    return name.lower()


def domain_key(value: Any, key: str) -> str:
    """A domain as a table key; a leading dot means 'every subdomain of'."""
    domain = text(value, key)
    if domain.startswith("."):
        return "." + host(domain[1:], key)
    return host(domain, key)


def network(value: Any, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text(value, key), strict=False)
    except ValueError:
        raise ConfigError(key, f'{value!r} is not a network like "127.0.0.0/8"') from None
