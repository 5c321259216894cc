"""A real Exim 4.96 (Debian's exim4-daemon-light) on loopback, as a private instance.

Theory of operation. scripts/install-exim unpacks the Debian package into .peers/exim at the
repository root (the package conflicts with postfix, so it is never installed). Each
instance gets a private directory with its own configuration (tests/peers/exim_config.py),
spool, logs and, as a final destination, a maildir; `exim -C CONFIG -bdf` runs the daemon
in the foreground on a free loopback port.

Privilege. Exim keeps root privilege with -C only for files listed in
/etc/exim4/trusted_configs; for any other file it runs as its own user, Debian-exim (or, run
by a non-root user, as that user). The instances accept that on purpose: a per-test
configuration cannot be listed in advance, and editing a system file from the tests would
be shared state. Nothing a test needs requires root: the ports are above 1024 and every
delivery is to a file that user owns or to the network. So the private directory is owned
by the user Exim will run as, and it lives under /tmp, not under pytest's tmp_path, whose
root-only (0700) parents the Debian-exim user could not enter. Exim notes the drop as
"exim user lost privilege for using -C option" in its logs; paniclog() leaves that out.

Blocking. start(), send(), flush() and queue_count() wait for Exim processes; from an async
test whose event loop serves the peer Exim talks to, call them with asyncio.to_thread().
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tests.peers.binaries import MissingPeerBinary
from tests.peers.certs import peer_ca
from tests.peers.exim_config import EximOptions, Layout, Outcome, arrivals, outcome, render
from tests.peers.processes import terminate, wait_accepting

REPO_ROOT = Path(__file__).resolve().parents[2]
EXIM_BINARY = REPO_ROOT / ".peers" / "exim" / "usr" / "sbin" / "exim4"
EXIM_USER = "Debian-exim"
_PRIVILEGE_NOTE = "exim user lost privilege for using -C option"


class EximError(RuntimeError):
    """Exim did not start, or an exim command failed; the message carries its output."""


def exim_binary() -> str:
    """The unpacked exim4, or MissingPeerBinary (never a skip)."""
    if not os.access(EXIM_BINARY, os.X_OK):
        raise MissingPeerBinary(f"exim4 ({EXIM_BINARY})")
    return str(EXIM_BINARY)


def _run_as() -> tuple[int, int]:
    """The uid and gid Exim will run as after dropping privilege for -C."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        user = pwd.getpwnam(EXIM_USER)
    except KeyError:
        raise MissingPeerBinary(f"the {EXIM_USER} user") from None
    return user.pw_uid, user.pw_gid


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _chown_tree(root: Path, uid: int, gid: int, *, keep: Path) -> None:
    for directory, _, files in os.walk(root):
        os.chown(directory, uid, gid)
        for name in files:
            if Path(directory) / name != keep:
                os.chown(Path(directory) / name, uid, gid)


def instance_processes(config: Path) -> list[int]:
    """The pids of the running Exim processes started with `-C config`."""
    marker = str(config).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in argv:
            pids.append(int(entry.name))
    return pids


class EximPeer:
    """One private Exim; use start()/stop() (the `exim` fixture does both)."""

    def __init__(
        self,
        options: EximOptions | None = None,
        *,
        host: str = "127.0.0.1",
        keep_logs: Path | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "::1"):
            raise ValueError(f"test peers listen on loopback only, not {host!r}")
        self.options = options or EximOptions()
        self.host = host
        self.port = 0
        self.tls_port: int | None = None  # the implicit-TLS port, with options.implicit_tls
        self._keep_logs = keep_logs
        self._binary = exim_binary()
        self._layout: Layout | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            raise EximError("the Exim instance is not started")
        return self._layout

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and return once every port answers with a 220 banner."""
        uid, gid = _run_as()
        self._layout = Layout.under(Path(tempfile.mkdtemp(prefix="relaymail-exim-")))
        layout = self._layout
        for directory in (layout.spool, layout.log, layout.maildir, layout.certificate.parent):
            directory.mkdir(parents=True)
        layout.root.chmod(0o755)
        if self.options.needs_certificate:
            leaf = peer_ca().issue_cert(*self.options.cert_names)
            leaf.cert_chain_pems[0].write_to_path(str(layout.certificate))
            for pem in leaf.cert_chain_pems[1:]:
                pem.write_to_path(str(layout.certificate), append=True)
            leaf.private_key_pem.write_to_path(str(layout.private_key))
        deadline = time.monotonic() + timeout
        # Another process may take a port between our probe and Exim's bind: retry.
        while True:
            self.port = _free_port(self.host)
            self.tls_port = _free_port(self.host) if self.options.implicit_tls else None
            layout.config.write_text(
                render(
                    self.options,
                    layout,
                    binary=self._binary,
                    host=self.host,
                    port=self.port,
                    tls_port=self.tls_port,
                )
            )
            # Exim refuses a configuration file that is not owned by root (or by whoever
            # runs it) or that others can write; the rest must belong to the user it runs as.
            _chown_tree(layout.root, uid, gid, keep=layout.config)
            start_log = layout.root / "daemon.out"
            with start_log.open("wb") as output:
                self._process = subprocess.Popen(
                    [self._binary, "-C", str(layout.config), "-bdf"],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    # Its own process group, so that stop() reaches every child it forked.
                    start_new_session=True,
                )
            # Exim binds every listening socket before it accepts on any, so one port is
            # enough (and a probe of the implicit-TLS port would log a failed handshake).
            if wait_accepting(
                self._process, self.host, self.port, deadline, stop=self.stop, name="exim"
            ):
                return
            self._process.wait()
            self._process = None
            failure = start_log.read_text(errors="replace") + self.paniclog()
            if time.monotonic() > deadline or "Address already in use" not in failure:
                self.stop()
                raise EximError(f"exim did not start:\n{failure}")

    def stop(self) -> None:
        """Stop the daemon and every Exim process of this instance; remove its files."""
        if self._process is not None:
            terminate(self._process)
            self._process = None
        if self._layout is None:
            return
        # Delivery processes detach into their own sessions, so the process group is not
        # enough: every Exim process of this instance has our config path in its argv.
        for pid in instance_processes(self._layout.config):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._keep_logs is not None:
            shutil.copytree(self._layout.log, self._keep_logs, dirs_exist_ok=True)
        shutil.rmtree(self._layout.root, ignore_errors=True)
        self._layout = None

    # ------------------------------------------------------------------ what Exim did

    def _log(self, name: str) -> str:
        try:
            return (self.layout.log / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mainlog(self) -> str:
        return self._log("mainlog")

    def paniclog(self) -> str:
        """Exim's panic log, without the expected note about the privilege drop."""
        lines = self._log("paniclog").splitlines(keepends=True)
        return "".join(line for line in lines if _PRIVILEGE_NOTE not in line)

    def received_messages(self) -> list[bytes]:
        """Every message stored as a final destination, oldest first, one per recipient.

        Byte-exact as transmitted (dot-unstuffed; Exim adds no header here), except line
        endings: Exim stores lines and gives them back with CRLF, so a bare CR or LF in the
        input does not survive.
        """
        files = sorted(
            (self.layout.maildir / "new").glob("*"), key=lambda p: (p.stat().st_mtime_ns, p.name)
        )
        return [path.read_bytes() for path in files]

    def arrivals(self) -> list[str]:
        """The Exim ids of the messages received so far, oldest first."""
        return arrivals(self.mainlog())

    def outcome(self, message_id: str) -> Outcome:
        return outcome(self.mainlog(), message_id)

    def settle(self, timeout: float = 30.0) -> dict[str, Outcome]:
        """Wait until no message received so far is PENDING; their outcomes by id.

        A message received over SMTP is delivered by a process Exim starts after the 250,
        so its outcome comes a moment after the client has seen the reply.
        """
        deadline = time.monotonic() + timeout
        while True:
            log = self.mainlog()
            outcomes = {message_id: outcome(log, message_id) for message_id in arrivals(log)}
            if Outcome.PENDING not in outcomes.values():
                return outcomes
            if time.monotonic() > deadline:
                raise EximError(f"messages still pending after {timeout} s: {outcomes}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ commands

    def _exim(self, *args: str, data: bytes = b"", timeout: float = 60.0) -> str:
        result = subprocess.run(
            [self._binary, "-C", str(self.layout.config), *args],
            input=data,
            capture_output=True,
            timeout=timeout,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0:
            raise EximError(f"exim {' '.join(args)} exited {result.returncode}: {output}")
        return output

    def send(self, sender: str, recipients: Sequence[str], data: bytes) -> str:
        """Inject a message and deliver it at once (-odi); returns its Exim message id.

        With `EximOptions.relay` the delivery goes to that host; see outcome() for whether
        it succeeded and queue_count() for what is left on the queue.
        """
        before = len(self.arrivals())
        # -oi: a line with a single dot does not end the message; -- ends the options.
        self._exim("-odi", "-oi", "-f", sender, "--", *recipients, data=data)
        new = self.arrivals()[before:]
        if len(new) != 1:
            raise EximError(f"expected one arrival in the main log, found {new}")
        return new[0]

    def flush(self) -> None:
        """One queue run now, forcing every message regardless of retry times (-qff)."""
        self._exim("-qff")

    def queue_count(self) -> int:
        """How many messages are on Exim's queue (-bpc)."""
        return int(self._exim("-bpc").strip())


class EximFactory(Protocol):
    """The `exim` fixture: start a private Exim; stopped when the test ends."""

    def __call__(self, options: EximOptions | None = None, *, host: str = ...) -> EximPeer: ...
