"""The files `relaymail install-system` writes: the systemd unit and the example configuration.

Kept as text in the package (not only in the README) so that what is
installed is what the tests check with `systemd-analyze verify`.
"""

from __future__ import annotations

from pathlib import PurePosixPath

SERVICE_USER = "relaymail"
SPOOL = PurePosixPath("/var/spool/relaymail")
CONFIG = PurePosixPath("/etc/relaymail/relaymail.toml")
UNIT = PurePosixPath("/etc/systemd/system/relaymail.service")

# Type=notify: the daemon sends READY=1 once its listeners accept mail
# (relaymail.service.notify_systemd). It starts as the service user and binds
# port 25 through the ambient capability, so `[server] user` is a no-op here.
# No MemoryDenyWriteExecute: libffi closures (cffi, ctypes) need W+X pages.
UNIT_TEMPLATE = """\
[Unit]
Description=relaymail mail transfer agent
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={relaymail} serve --config {config}
ExecReload=/bin/kill -HUP $MAINPID
User={user}
Group={user}
Environment=PYTHONUNBUFFERED=1
# SIGTERM lets deliveries finish for 20 s.
TimeoutStopSec=40
Restart=on-failure
# 78 is a configuration error: restarting would only repeat it.
RestartPreventExitStatus=78
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
UMask=0077
ProtectSystem=strict
ReadWritePaths={spool}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""

EXAMPLE_CONFIG = """\
# relaymail: the machine's mailer. README, "Running it in production".
# Every key and its default: README, "Configuration (TOML)".

[server]
user = "{user}"                     # started as root: become this user after binding

[delivery]
# helo_name = "mail.example.org"    # default: this machine's FQDN; must have a dot

[queue]
directory = "{spool}"

[[listener]]                        # local programs and this host's applications
address = "127.0.0.1:25"
mode = "relay"
relay_networks = ["127.0.0.0/8", "::1/128"]

# [routes]
# "*" = ["smarthost.example:587"]   # everything through a smarthost instead of MX
"""


def unit_text(relaymail: str) -> str:
    """The unit for the `relaymail` entry point at this absolute path."""
    return UNIT_TEMPLATE.format(relaymail=relaymail, config=CONFIG, user=SERVICE_USER, spool=SPOOL)


def example_config() -> str:
    return EXAMPLE_CONFIG.format(user=SERVICE_USER, spool=SPOOL)
