"""Finding and reading the configuration file, and the part of it `sendmail` uses.

Every command finds its file the same way (`find_config_file`) and reads it with
the same TOML parser (`read_toml`). `sendmail` then takes only what it needs —
where the queue is, the local domain, the size limit — through the same value
readers as the daemon (config_values.py), and leaves the rest of the file alone:
it runs once per cron job and per PHP mail(), and building the daemon's whole
configuration (config.py: dataclasses, pathlib, the policy tables) would cost
more than everything else it does. A mistake elsewhere in the file is named by
`serve` and `relaymail check`; the message waits in the maildrop meanwhile.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .config_values import host_name, size, table, text
from .errors import ConfigError
from .message import DEFAULT_MAX_MESSAGE_SIZE

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
    try:
        with open(path, encoding="utf-8") as file:
            return tomllib.loads(file.read())
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "not UTF-8 text") from None


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


def local_domain(raw: Mapping[str, Any]) -> str:
    """[local] domain, else [delivery] helo_name, else the host's FQDN (Postfix's myorigin)."""
    local, delivery = table(raw, "local"), table(raw, "delivery")
    if "domain" in local:
        return host_name(local["domain"], "local.domain")
    if "helo_name" in delivery:
        return host_name(delivery["helo_name"], "delivery.helo_name")
    import socket  # only an unconfigured host pays for the socket module

    return socket.getfqdn()


class SubmitSettings(NamedTuple):
    """What `sendmail` needs to drop a message: where, under which domain, how large."""

    queue_directory: str
    local_domain: str
    max_message_size: int


def submit_settings(path: str | None) -> SubmitSettings:
    """`sendmail`'s settings from the file at `path` (None: the embedded defaults)."""
    raw = read_toml(path) if path is not None else {}
    queue = table(raw, "queue")
    listeners = raw.get("listener", [])
    if not isinstance(listeners, list) or not all(isinstance(t, dict) for t in listeners):
        raise ConfigError("listener", "must be an array of tables ([[listener]])")
    return SubmitSettings(
        text(queue["directory"], "queue.directory")
        if "directory" in queue
        else DEFAULT_QUEUE_DIRECTORY,
        local_domain(raw),
        message_size_limit(listeners),
    )
