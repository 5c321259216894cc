"""[admin]: where the metrics and the status page listen, and the token that guards them.

The listener is off unless `address` is set. On a loopback address anyone on the machine
may read it, as with Postfix's `mailq`; anywhere else a token is required, since the page
shows who mails whom. The token travels in the Authorization header only (Bearer for
Prometheus, Basic for a browser's own login prompt): a token in the URL would end up in
proxy logs and browser history.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config_fields import only, path, read_secret, secret_file
from ..config_values import text
from ..errors import ConfigError

# Shorter tokens can be guessed over the network (no lockout: it is a read-only page).
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True, slots=True)
class AdminSettings:
    host: str  # an IP address
    port: int
    token_file: Path | None = None

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def read_admin(raw: Mapping[str, Any]) -> AdminSettings | None:
    """The [admin] table; None when it sets no address (no listener)."""
    from ..config import parse_host_port

    only(raw, "admin", {"address", "token_file"})
    token_file = path(raw["token_file"], "admin.token_file") if "token_file" in raw else None
    if "address" not in raw:
        if token_file is not None:
            raise ConfigError("admin.token_file", "set, but admin.address is not")
        return None
    address = parse_host_port(text(raw["address"], "admin.address"), "admin.address", None)
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        # A name could resolve to anything, loopback today and public tomorrow.
        raise ConfigError(
            "admin.address", f'{address.host!r} is not an IP address (e.g. "127.0.0.1:8025")'
        ) from None
    settings = AdminSettings(address.host, address.port, token_file)
    if not settings.loopback and token_file is None:
        raise ConfigError(
            "admin.token_file",
            f"required when admin.address ({settings}) is not a loopback address",
        )
    return settings


def load_token(settings: AdminSettings) -> str | None:
    """The token from `token_file` (mode 0600, at least MIN_TOKEN_LENGTH characters)."""
    if settings.token_file is None:
        return None
    key = "admin.token_file"
    token = read_secret(secret_file(str(settings.token_file), key), key)
    if len(token) < MIN_TOKEN_LENGTH:
        short = f"holds fewer than {MIN_TOKEN_LENGTH} characters"
        raise ConfigError(key, f"{settings.token_file} {short}")
    if any(c.isspace() for c in token):
        raise ConfigError(key, f"{settings.token_file} holds whitespace inside the token")
    return token
