"""What running as a system service takes: the user to become, dropping root, telling systemd.

`relaymail serve` started as root binds its listeners first (port 25 needs
root or CAP_NET_BIND_SERVICE), then becomes `[server] user` before it opens
the queue, so every queue file is created by, and owned by, that user; a
bug in the SMTP or TLS code then runs with no more rights than the mail.
The order of the calls is the classic one (Postfix's set_ugid): groups
first, because once the uid is not 0 the process may no longer change them.

Started by systemd as `Type=notify`, the daemon says READY=1 once its
listeners accept connections: one datagram to $NOTIFY_SOCKET (sd_notify(3)),
no library needed.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "ServiceUser",
    "become",
    "host_name_problem",
    "lookup_user",
    "must_drop_root",
    "notify_systemd",
    "switch_problem",
]

log = logging.getLogger("relaymail.daemon")

USER_KEY = "server.user"


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """An account from the password database, resolved once at start-up."""

    name: str
    uid: int
    gid: int


def lookup_user(name: str) -> ServiceUser:
    """The account `name`; ConfigError when the system has none (a typo stops the start)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        reason = f"no such user {name!r} (relaymail install-system creates one)"
        raise ConfigError(USER_KEY, reason) from None
    if entry.pw_uid == 0:
        raise ConfigError(USER_KEY, f"{name!r} is root; name an unprivileged user")
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def must_drop_root(uid: int, user: str | None, ports: Sequence[int]) -> ConfigError | None:
    """Why the daemon refuses to start as it is, or None.

    Root on a privileged port is a production set-up; running the whole MTA
    as root there is the mistake a service user exists to prevent, so it is
    refused. Root on high ports (development, containers, the tests) is allowed.
    """
    privileged = sorted(p for p in ports if p < 1024)
    if uid == 0 and user is None and privileged:
        return ConfigError(
            USER_KEY,
            f"running as root on port {privileged[0]} needs a user to become after binding"
            ' (e.g. user = "relaymail")',
        )
    return None


def become(user: ServiceUser) -> bool:
    """Switch this process to `user` for good; False if it already runs as that user.

    ConfigError when it runs as someone else who may not switch (not root).
    """
    if (os.getuid(), os.geteuid()) == (user.uid, user.uid):
        return False
    if refusal := switch_problem(user):
        raise refusal
    os.initgroups(user.name, user.gid)
    os.setgid(user.gid)
    os.setuid(user.uid)  # sets real, effective and saved uid: no way back
    # Queued mail is private: files the daemon creates from now on (queue.db,
    # its WAL) are the service user's alone, as under systemd's UMask=0077.
    os.umask(0o077)
    # Proof, not trust: a setuid that left any id at 0 would be a silent failure.
    if 0 in (*os.getresuid(), *os.getresgid()):
        raise ConfigError(USER_KEY, f"could not drop root for {user.name!r}")
    log.info("running as %s (uid %d, gid %d)", user.name, user.uid, user.gid)
    return True


def switch_problem(user: ServiceUser) -> ConfigError | None:
    """Why this process cannot become `user` (only root can switch), or None."""
    if os.geteuid() == 0 or (os.getuid(), os.geteuid()) == (user.uid, user.uid):
        return None
    return ConfigError(
        USER_KEY,
        f"started as uid {os.geteuid()}, which cannot become {user.name!r}:"
        " start relaymail as root or as that user",
    )


def host_name_problem(name: str) -> str | None:
    """Why `name` is a poor name to greet other servers with, or None.

    Receivers check the HELO name (Postfix's reject_non_fqdn_helo_hostname,
    spam scores); a machine whose FQDN is `localhost` or a bare host name
    gives exactly that as the default.
    """
    lowered = name.lower().rstrip(".")
    if lowered == "localhost" or lowered.startswith("localhost."):
        return "is localhost"
    if "." not in lowered:
        return "has no dot"
    return None


def notify_systemd(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd's notification socket; False if there is none.

    A failure to send is logged, never raised: the service works without it
    (systemd then times out the start and says so).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket (sd_notify(3))
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True
