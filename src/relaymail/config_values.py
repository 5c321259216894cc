"""The value readers that `sendmail` shares with the daemon's configuration.

Each reader takes a raw TOML value and its dotted key and returns the checked
value, or raises ConfigError(key, reason). These are the few that `sendmail`
needs (config_file.py); they import nothing beyond `re`, which the TOML parser
loads anyway, so a cron job's `sendmail` does not pay for the daemon's readers
(config_fields.py: paths, networks, enums, international names).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

# SQLite stores integers in 64 bits; a larger count or size would fail there, late.
INT_MAX = 2**63 - 1


def table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The top-level table `name` ([name]); empty when absent."""
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    return value


_SIZE = re.compile(r"\s*(\d+)\s*([KMG]?)B?\s*", re.I)


def size(value: Any, key: str) -> int:
    """Octets from a whole number or a string such as '10M', '512K', '1G'."""
    if isinstance(value, int) and not isinstance(value, bool):
        octets = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        octets = (
            int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
        )
    else:
        raise ConfigError(key, f'expected a size like "35M", not {value!r}')
    if not 0 < octets <= INT_MAX:
        raise ConfigError(key, f'expected a size like "35M" above zero, not {value!r}')
    return octets


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text(value: Any, key: str) -> str:
    """A non-empty string without control characters (they would end a header or a line)."""
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    if has_control(value):
        raise ConfigError(key, f"{value!r} contains control characters")
    return value


def has_control(value: str) -> bool:
    """Whether `value` holds a control character (a line break among them)."""
    return _CONTROL.search(value) is not None


# RFC 5321 4.1.2 Domain: letters, digits and hyphens only; this name reaches the
# wire in EHLO, the banner and Received: headers.
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host_name(value: Any, key: str) -> str:
    """Our own name as sent in EHLO, the banner and Received: (RFC 5321 4.1.2 Domain)."""
    name = text(value, key).rstrip(".")
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise ConfigError(key, f"{value!r} is not a host name (ASCII letters, digits, '-' and '.')")
    return name.lower()
