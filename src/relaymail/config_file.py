"""Finding and reading the configuration file, and the readers of what `sendmail` uses.

Every command finds its file the same way (`find_config_file`) and reads it with
the same TOML parser (`read_toml`). `sendmail` takes only what it needs — where
the queue is, the local domain, the size limit (sendmail_settings.py) — through
the same value readers as the daemon (config_values.py), and leaves the rest of
the file alone: it runs once per cron job and per PHP mail(), and building the
daemon's whole configuration (config.py: dataclasses, pathlib, the policy
tables) would cost more than everything else it does. A mistake elsewhere in
the file is named by `serve` and `relaymail check`; the message waits in the
maildrop meanwhile.
"""

from __future__ import annotations

import os

from .config_values import DEFAULT_MAX_MESSAGE_SIZE, host_name, size, table
from .errors import ConfigError

TYPE_CHECKING = False  # typing and collections.abc load re and enum: annotations only
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

SYSTEM_CONFIG = "/etc/relaymail/relaymail.toml"
# The queue directory when the configuration sets none, relative to the working directory.
DEFAULT_QUEUE_DIRECTORY = "relaymail-data"


def find_config_file(explicit: str | None) -> str | None:
    """The file to use: the one named, else $RELAYMAIL_CONFIG, else the system one if present.

    None means the embedded defaults. Every command (serve, sendmail, queue)
    looks in the same places, so they agree on where the queue is.
    """
    if explicit is not None:
        return explicit
    if env := os.environ.get("RELAYMAIL_CONFIG"):
        return env
    return SYSTEM_CONFIG if os.path.isfile(SYSTEM_CONFIG) else None


def read_toml(path: str) -> dict[str, Any]:
    """The file's TOML as a dict; ConfigError names the file and what is wrong with it."""
    return parse_toml(read_file(path)[0], path)


def read_file(path: str) -> tuple[bytes, int]:
    """The file's content and its owner's uid; ConfigError when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(), os.fstat(file.fileno()).st_uid
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None


def parse_toml(content: bytes, path: str) -> dict[str, Any]:
    """The TOML in `content` (read from `path`) as a dict; ConfigError says what is wrong."""
    import tomllib  # its patterns cost a fifth of sendmail's start-up: only a parse pays

    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "not UTF-8 text") from None
    try:
        # Line ends as a file opened in text mode reads them (a lone CR is one too).
        return tomllib.loads(text.replace("\r\n", "\n").replace("\r", "\n"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None


def message_size_limit(listener_tables: Sequence[Mapping[str, Any]]) -> int:
    """The largest max_message_size among the listeners, in octets.

    A message the daemon would take over SMTP on one of its listeners is taken
    from the command line too (sendmail, deliver), and nothing larger.
    """
    return max(
        size(listener["max_message_size"], f"listener[{i}].max_message_size")
        if "max_message_size" in listener
        else DEFAULT_MAX_MESSAGE_SIZE
        for i, listener in enumerate(listener_tables or ({},))
    )


def configured_domain(raw: Mapping[str, Any]) -> str | None:
    """[local] domain, else [delivery] helo_name; None when neither is set (then the
    local domain is the host's FQDN, Postfix's myorigin)."""
    local, delivery = table(raw, "local"), table(raw, "delivery")
    if "domain" in local:
        return host_name(local["domain"], "local.domain")
    if "helo_name" in delivery:
        return host_name(delivery["helo_name"], "delivery.helo_name")
    return None

