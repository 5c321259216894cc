"""What a private Exim test instance does, as data, and the Exim configuration it becomes.

Pure: no files, no processes (tests/peers/exim.py runs the instance). Also the reading of
Exim's main log into typed outcomes, so tests assert on `Outcome.DEFERRED`, not on log prose.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from tests.peers.certs import DEFAULT_CERT_NAMES


class StartTLS(enum.StrEnum):
    """Whether and how the instance offers STARTTLS as a server."""

    OFF = "off"  # not advertised
    OK = "ok"  # advertised, with a trustme certificate from peer_ca()
    # Advertised, but the certificate and key files do not exist: Exim reads them only when
    # a client asks, and answers `454 TLS currently unavailable` (and logs "TLS error").
    MISSING_KEYS = "missing_keys"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Relay:
    """Route every recipient, in clear SMTP, to host:port (manualroute), as a sending MTA."""

    host: str
    port: int


@dataclass(frozen=True)
class EximOptions:
    starttls: StartTLS = StartTLS.OFF
    eight_bit_mime: bool = True  # accept_8bitmime: advertise 8BITMIME or not
    # AUTH PLAIN and LOGIN with these credentials, advertised only once TLS is up (as a
    # submission server does); RCPT then requires an authenticated client.
    auth: Credentials | None = None
    # A second listening port with TLS from the first byte (RFC 8314, Exim's
    # tls_on_connect_ports), e.g. for 465-style submission. Uses the same certificate.
    implicit_tls: bool = False
    # None: the instance is a final destination that stores every message in a file.
    relay: Relay | None = None
    cert_names: tuple[str, ...] = DEFAULT_CERT_NAMES
    # Advertise DSN (RFC 3461) and keep RET/ENVID/NOTIFY/ORCPT, passing them on as a relay.
    dsn: bool = False

    @property
    def needs_certificate(self) -> bool:
        return self.starttls is StartTLS.OK or self.implicit_tls


@dataclass(frozen=True)
class Layout:
    """Where one instance keeps its files; every path is inside its private directory."""

    root: Path
    config: Path
    spool: Path
    log: Path
    maildir: Path
    certificate: Path
    private_key: Path

    @classmethod
    def under(cls, root: Path) -> Layout:
        tls = root / "tls"
        return cls(
            root=root,
            config=root / "exim.conf",
            spool=root / "spool",
            log=root / "log",
            maildir=root / "mail",
            certificate=tls / "cert.pem",
            private_key=tls / "key.pem",
        )


def _literal(value: str) -> str:
    # Inside an Exim expansion string: keep its metacharacters literal.
    return re.sub(r"([\\${}])", r"\\\1", value)


def _credentials_check(user: str, password: str, credentials: Credentials) -> str:
    """An expansion true when the variables `user` and `password` hold `credentials`."""
    username, secret = _literal(credentials.username), _literal(credentials.password)
    return "${if and {{eq{" + user + "}{" + username + "}}{eq{" + password + "}{" + secret + "}}}}"


def render(
    options: EximOptions,
    layout: Layout,
    *,
    binary: str,
    host: str,
    port: int,
    tls_port: int | None,
) -> str:
    """The whole configuration file for one instance."""
    ports = f"{port} : {tls_port}" if tls_port is not None else f"{port}"
    lines = [
        f"exim_path = {binary}",
        "primary_hostname = exim.example.test",
        f"spool_directory = {layout.spool}",
        f"log_file_path = {layout.log}/%slog",
        # `<;` makes ";" the list separator, so an IPv6 address needs no doubled colons.
        f"local_interfaces = <; {host}",
        f"daemon_smtp_ports = {ports}",
        # A port taken between our probe and Exim's bind must fail at once (the default
        # retries for minutes); the runner picks another port.
        "daemon_startup_retries = 0",
        "keep_environment =",
        "host_lookup =",
        "rfc1413_hosts =",
        # +smtp_connection: a session closed by QUIT and one that was lost read differently.
        "log_selector = +smtp_connection +smtp_protocol_error +smtp_syntax_error +tls_peerdn",
        # No Received header: the stored message is what the client sent, byte for byte
        # (up to line endings, see received_messages).
        "received_header_text =",
        f"accept_8bitmime = {'true' if options.eight_bit_mime else 'false'}",
        # Injected messages keep the -f sender whoever runs the test, with no Sender: added.
        "untrusted_set_sender = *",
        "local_from_check = false",
        "acl_smtp_rcpt = acl_check_rcpt",
    ]
    if options.dsn:
        lines.append("dsn_advertise_hosts = *")
    if options.starttls is StartTLS.OFF:
        lines.append("tls_advertise_hosts =")
    else:
        lines.append("tls_advertise_hosts = *")
    if options.starttls is not StartTLS.OFF or options.implicit_tls:
        missing = options.starttls is StartTLS.MISSING_KEYS
        suffix = ".missing" if missing else ""
        lines += [
            f"tls_certificate = {layout.certificate}{suffix}",
            f"tls_privatekey = {layout.private_key}{suffix}",
        ]
    if tls_port is not None:
        lines.append(f"tls_on_connect_ports = {tls_port}")
    if options.auth is not None:
        lines.append("auth_advertise_hosts = ${if def:tls_in_cipher {*}{}}")
    lines += ["", "begin acl", "acl_check_rcpt:"]
    if options.auth is not None:
        lines += ["  accept authenticated = *", "  deny message = authentication required"]
    else:
        lines.append("  accept")
    lines += ["", "begin routers"]
    if options.relay is None:
        lines += ["store:", "  driver = accept", "  transport = store"]
    else:
        # route_list is itself split at ";", so `<,` makes "," the host list's separator,
        # which keeps an IPv6 address whole. The port is the transport's.
        lines += [
            "relay:",
            "  driver = manualroute",
            f'  route_list = * "<, {options.relay.host}"',
            "  transport = relay",
            # A route to a loopback address is a route to this host: deliver anyway.
            "  self = send",
        ]
    lines += ["", "begin transports"]
    if options.relay is None:
        lines += [
            "store:",
            "  driver = appendfile",
            f"  directory = {layout.maildir}",
            # One file per delivery with a unique name; no From_ line, no ">From" escaping.
            "  maildir_format",
            "  message_prefix =",
            "  message_suffix =",
            "  check_string =",
            "  escape_string =",
            # Exim stores lines with LF; CRLF gives back the message as it crossed the wire.
            "  use_crlf",
        ]
    else:
        lines += [
            "relay:",
            "  driver = smtp",
            "  allow_localhost",
            "  hosts_avoid_tls = *",
            f"  port = {options.relay.port}",
        ]
    lines += ["", "begin retry", "*  *  F,1h,1s", ""]
    if options.auth is not None:
        lines += [
            "begin authenticators",
            "plain:",
            "  driver = plaintext",
            "  public_name = PLAIN",
            "  server_prompts = :",
            # PLAIN: $auth1 is the authorization id, $auth2 the user, $auth3 the password.
            f"  server_condition = {_credentials_check('$auth2', '$auth3', options.auth)}",
            "  server_set_id = $auth2",
            "login:",
            "  driver = plaintext",
            "  public_name = LOGIN",
            "  server_prompts = Username:: : Password::",
            f"  server_condition = {_credentials_check('$auth1', '$auth2', options.auth)}",
            "  server_set_id = $auth1",
            "",
        ]
    return "\n".join(lines)


class Outcome(enum.StrEnum):
    """What Exim's main log says became of one message."""

    PENDING = "pending"  # received, no delivery attempt logged yet
    DELIVERED = "delivered"  # every recipient delivered ("Completed" after "=>")
    DEFERRED = "deferred"  # last attempt deferred ("=="); still on the queue
    BOUNCED = "bounced"  # a recipient failed permanently ("**")


# Main log lines: "<date> <time> <id> <flag> ..." (Exim spec, chapter "Log files").
_FLAG = re.compile(r"^\S+ \S+ (?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2}) (?P<rest>.*)$")


def outcome(mainlog: str, message_id: str) -> Outcome:
    """The outcome of `message_id` according to `mainlog` (the latest attempt wins)."""
    state = Outcome.PENDING
    bounced = False
    for line in mainlog.splitlines():
        match = _FLAG.match(line)
        if match is None or match["id"] != message_id:
            continue
        rest = match["rest"]
        if rest.startswith("** "):
            bounced = True
        elif rest.startswith("== "):
            state = Outcome.DEFERRED
        elif rest == "Completed":
            state = Outcome.BOUNCED if bounced else Outcome.DELIVERED
    return state


def arrivals(mainlog: str) -> list[str]:
    """The ids of the messages received, in the order of their "<=" lines."""
    ids = []
    for line in mainlog.splitlines():
        match = _FLAG.match(line)
        if match is not None and match["rest"].startswith("<= "):
            ids.append(match["id"])
    return ids
