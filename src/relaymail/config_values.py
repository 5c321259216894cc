"""The value readers that `sendmail` shares with the daemon's configuration.

Each reader takes a raw TOML value and its dotted key and returns the checked
value, or raises ConfigError(key, reason). These are the few that `sendmail`
needs (config_file.py). They import nothing, `re` included (it loads enum):
sendmail's start-up is most of its cost, and a cron job's `sendmail` must not
pay for the daemon's readers (config_fields.py: paths, networks, enums,
international names) either.
"""

from __future__ import annotations

from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# SQLite stores integers in 64 bits; a larger count or size would fail there, late.
INT_MAX = 2**63 - 1
# The default of every listener's max_message_size, and so of sendmail's limit.
DEFAULT_MAX_MESSAGE_SIZE = 35 * 1024 * 1024


def table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The top-level table `name` ([name]); empty when absent."""
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    return value


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def size(value: Any, key: str) -> int:
    """Octets from a whole number or a string such as '10M', '512K', '1G', '2 MB'."""
    if isinstance(value, int) and not isinstance(value, bool):
        octets = value
    elif isinstance(value, str) and (number := _size_text(value)) is not None:
        octets = number
    else:
        raise ConfigError(key, f'expected a size like "35M", not {value!r}')
    if not 0 < octets <= INT_MAX:
        raise ConfigError(key, f'expected a size like "35M" above zero, not {value!r}')
    return octets


def _size_text(value: str) -> int | None:
    """Digits, spaces, a unit K, M or G and a B, both optional and in any case; else None."""
    rest = value.strip()
    if rest[-1:] in ("B", "b"):
        rest = rest[:-1]
    unit = rest[-1:].upper() if rest[-1:] in ("K", "M", "G", "k", "m", "g") else ""
    digits = rest[: len(rest) - len(unit)].rstrip()
    # isdecimal, not isdigit: what int() reads (any script's digits), not superscripts.
    return int(digits) * _UNITS[unit] if digits.isdecimal() else None


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
    """Whether `value` holds an ASCII control character (a line break among them) or DEL."""
    return not value.isprintable() and any(c < " " or c == "\x7f" for c in value)


# RFC 5321 4.1.2 Domain: letters, digits and hyphens only; this name reaches the
# wire in EHLO, the banner and Received: headers.
_LETTERS_DIGITS_HYPHEN = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
)


def host_name(value: Any, key: str) -> str:
    """Our own name as sent in EHLO, the banner and Received: (RFC 5321 4.1.2 Domain)."""
    name = text(value, key).rstrip(".")
    if len(name) > 253 or not all(map(_is_label, name.split("."))):
        raise ConfigError(key, f"{value!r} is not a host name (ASCII letters, digits, '-' and '.')")
    return name.lower()


def _is_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and _LETTERS_DIGITS_HYPHEN.issuperset(label)
    )
