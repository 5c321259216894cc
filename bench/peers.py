"""The MTAs under test, each behind one adapter: write its configuration, start it,
wait until its listener answers, stop it.

Every peer is configured the same way in substance: one SMTP listener on
127.0.0.1 that relays for 127.0.0.0/8, every recipient domain routed by a static
route to a sink port on 127.0.0.1 (no DNS), opportunistic STARTTLS towards the
sink (used when the sink offers it), its queue in a fresh directory of the run,
and its queue durability left at the default (see bench/README.md). Deviations
from a stock configuration that the workload needs are listed in each adapter's
`notes`, and land in the results file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import ProcessGroup

BENCH_DIR = Path(__file__).resolve().parent
EXIM_DIR = BENCH_DIR / ".peers" / "exim"
EXIM_BIN = EXIM_DIR / "usr" / "sbin" / "exim4"
EXIM_TRUSTED_CONF = EXIM_DIR / "bench.conf"
POSTFIX_BIN = Path("/usr/sbin/postfix")
POSTFIX_SENDMAIL = Path("/usr/sbin/sendmail")

SENDER = "bench@client.bench.test"
_PR_SET_PDEATHSIG = 1


class PeerUnavailable(Exception):
    """The peer cannot run here (not installed, or it failed to start): skip it."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What one run asks of a peer."""

    workdir: Path
    listen_port: int
    # domain -> sink port; "*" is the route for every other domain.
    routes: dict[str, int]
    tls: bool
    ca_file: Path | None
    # Connections per destination the peer may open (the hold test needs 100+);
    # None keeps the peer's default.
    destination_concurrency: int | None = None
    total_connections: int | None = None
    # A free port for relaymail's [admin] listener (the relaymail-admin peer uses it).
    admin_port: int | None = None


@dataclass
class Peer:
    name: str
    notes: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    group: ProcessGroup | None = None
    spec: RunSpec | None = None

    def unavailable(self) -> str | None:
        raise NotImplementedError

    def version(self) -> str:
        return "unknown"

    async def start(self, spec: RunSpec, group: ProcessGroup) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def sendmail_command(self, recipient: str) -> tuple[list[str], dict[str, str]] | None:
        """argv and extra environment of this MTA's sendmail for one message, or None."""
        return None

    def counted_sendmail_command(
        self, recipient: str, work: Path
    ) -> tuple[list[str], dict[str, str]] | None:
        """sendmail_command as valgrind can run it (no set-id programs), for counting."""
        return self.sendmail_command(recipient)

    async def _spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        assert self.group is not None
        group = self.group
        log_file = log.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                preexec_fn=lambda: _child_setup(group),
                start_new_session=True,
            )
        finally:
            log_file.close()

    async def _stop_group(self, grace: float = 15.0) -> None:
        """Wait for every process of the group to exit, then kill what is left."""
        assert self.group is not None
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.process is not None and self.process.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), 0.1)
            alive = self.group.pids()
            if not alive and (self.process is None or self.process.returncode is not None):
                break
            await asyncio.sleep(0.1)
        for pid in self.group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        for _ in range(50):
            if not self.group.pids():
                break
            await asyncio.sleep(0.1)
        self.group.remove()


def _child_setup(group: ProcessGroup) -> None:
    """In the forked child, before exec: join the accounting group, die with the runner,
    and allow the file descriptors that 1,000 connections need."""
    group.enter_pid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


async def wait_for_banner(
    port: int, timeout: float, process: asyncio.subprocess.Process | None
) -> None:
    """Ready = a TCP connection to the listener gets a 220 greeting."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.returncode is not None:
            raise PeerUnavailable(f"exited with status {process.returncode} before listening")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
        except (OSError, TimeoutError) as exc:
            last_error = str(exc)
            await asyncio.sleep(0.1)
            continue
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            if line.startswith(b"220"):
                writer.write(b"QUIT\r\n")
                return
            last_error = f"greeting {line!r}"
        except (OSError, TimeoutError) as exc:
            last_error = str(exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.sleep(0.1)
    raise PeerUnavailable(f"listener on port {port} not ready after {timeout:.0f} s: {last_error}")


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    # Last line first: that is where the error usually is.
    return " | ".join(reversed(text[-lines:]))


# ------------------------------------------------------------------------------ relaymail


class Relaymail(Peer):
    """relaymail serve --config FILE (the daemon, under construction)."""

    def __init__(
        self,
        sendmail_template: str | None = None,
        command: str | None = None,
        name: str = "relaymail",
        admin: bool = False,
        dkim: str | None = None,
        processes: int | None = None,
    ) -> None:
        super().__init__(name)
        # [server] processes; None: relaymail's default, every CPU.
        self.processes = processes
        self.sendmail_template = sendmail_template
        self.command = command
        self.admin = admin  # with the admin listener, so the delivery history is kept
        self.config_path: Path | None = None
        # "rsa", "ed25519" or "both": sign every message from the bench's From: domain.
        self.dkim = dkim

    def _command(self) -> list[str]:
        if self.command:
            return self.command.split()
        script = shutil.which("relaymail")
        if script:
            return [script]
        return [sys.executable, "-m", "relaymail.commands.cli"]

    def unavailable(self) -> str | None:
        probe = subprocess.run(
            [*self._command(), "--help"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode != 0:
            return f"relaymail not installed ({probe.stderr.strip()[-200:]})"
        return None

    def version(self) -> str:
        try:
            from importlib.metadata import version

            return version("relaymail")
        except Exception:
            return "unknown"

    def write_config(self, spec: RunSpec) -> Path:
        lines = [
            "# Written by bench/run.py for one benchmark run.",
            "[queue]",
            f'directory = "{spec.workdir / "queue"}"',
        ]
        if spec.total_connections:
            # Messages in delivery at once, all destinations (default 200).
            lines.append(f"max_deliveries = {spec.total_connections}")
        lines += [
            "",
            "[[listener]]",
            f'address = "127.0.0.1:{spec.listen_port}"',
            'mode = "relay"',
            'relay_networks = ["127.0.0.0/8"]',
            "",
            "[routes]",
        ]
        for domain, port in spec.routes.items():
            lines.append(f'"{domain}" = ["127.0.0.1:{port}"]')
        lines += ["", "[delivery]", 'helo_name = "relaymail.bench.test"']
        if spec.destination_concurrency:
            lines.append(f"destination_concurrency = {spec.destination_concurrency}")
        lines += ["", "[tls]", 'default_level = "may"']
        if spec.ca_file is not None:
            lines.append(f'ca_file = "{spec.ca_file}"')
        if self.admin and spec.admin_port is not None:
            lines += ["", "[admin]", f'address = "127.0.0.1:{spec.admin_port}"']
        if self.processes is not None:
            lines += ["", "[server]", f"processes = {self.processes}"]
        if self.dkim:
            lines += self._dkim_table(spec.workdir)
        path = spec.workdir / "relaymail.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _dkim_table(self, workdir: Path) -> list[str]:
        """Keys made by `relaymail dkim keygen` (before the run's clock starts), and their table."""
        domain = SENDER.rpartition("@")[2]
        kinds = ["rsa", "ed25519"] if self.dkim == "both" else [self.dkim]
        keys = []
        for kind in kinds:
            keygen = [*self._command(), "dkim", "keygen", domain, f"bench-{kind}", "--type", kind]
            subprocess.run([*keygen, "--dir", str(workdir)], check=True, capture_output=True)
            keys.append((f"bench-{kind}", workdir / f"{domain}.bench-{kind}.key"))
        (selector, key_file), *more = keys
        table = ["", f'[dkim."{domain}"]', f'selector = "{selector}"', f'key_file = "{key_file}"']
        if more:
            entries = ", ".join(f'{{ selector = "{s}", key_file = "{k}" }}' for s, k in more)
            table.append(f"keys = [{entries}]")
        return table

    async def start(self, spec: RunSpec, group: ProcessGroup) -> None:
        self.spec, self.group = spec, group
        (spec.workdir / "queue").mkdir(parents=True, exist_ok=True)
        self.config_path = self.write_config(spec)
        log = spec.workdir / "relaymail.log"
        await self._spawn([*self._command(), "serve", "--config", str(self.config_path)], log)
        assert self.process is not None
        group.set_root(self.process.pid)
        try:
            await wait_for_banner(spec.listen_port, 30.0, self.process)
        except PeerUnavailable as exc:
            await self.stop()
            raise PeerUnavailable(f"relaymail serve: {exc}: {_tail(log, 2)}") from None

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        await self._stop_group()

    def sendmail_command(self, recipient: str) -> tuple[list[str], dict[str, str]] | None:
        assert self.config_path is not None
        env = {"RELAYMAIL_CONFIG": str(self.config_path)}
        if self.sendmail_template:
            argv = [
                part.format(config=self.config_path, sender=SENDER, recipient=recipient)
                for part in self.sendmail_template.split()
            ]
            return argv, env
        # The `sendmail` entry point beside `relaymail` is what /usr/sbin/sendmail runs
        # (relaymail install-system links it); `relaymail sendmail` also loads the CLI.
        command = self._command()
        beside = Path(command[0]).with_name("sendmail")  # the venv's bin/, also for -m
        if beside.is_file():
            return [str(beside), "-f", SENDER, recipient], env
        return [*command, "sendmail", "-f", SENDER, recipient], env


# -------------------------------------------------------------------------------- Postfix

_POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(Peer):
    """A private Postfix instance: postfix -c CONFIG_DIR start-fg, queue in the run's dir.

    Debian's master.cf runs most services chrooted into the queue directory; the
    private instance does not (chroot "n"), since its queue directory is new for
    every run and holds none of the files a chroot needs. Logging goes through
    Postfix's own postlogd into a file (maillog_file), so its cost is counted, as
    relaymail's and Exim's logging is.
    """

    def __init__(self) -> None:
        super().__init__("postfix")
        self.notes = [
            "private instance (postfix -c DIR start-fg), services not chrooted",
            "smtpd_peername_lookup = no (no reverse DNS of 127.0.0.1)",
            "logging via postlogd to maillog_file (counted), not syslog",
        ]
        self.config_dir: Path | None = None

    def unavailable(self) -> str | None:
        if not POSTFIX_BIN.exists():
            return "postfix not installed (run scripts/install-bench-peers)"
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            return "user 'postfix' missing (run scripts/install-bench-peers)"
        return None

    def version(self) -> str:
        out = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"

    def write_config(self, spec: RunSpec) -> Path:
        conf = spec.workdir / "postfix-conf"
        queue = spec.workdir / "postfix-queue"
        data = spec.workdir / "postfix-data"
        for path in (conf, queue, data):
            path.mkdir(parents=True, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {queue}",
            f"data_directory = {data}",
            f"maillog_file = {spec.workdir}/postfix.log",
            f"maillog_file_prefixes = {spec.workdir}",
            "myhostname = postfix.bench.test",
            "mydomain = bench.test",
            "myorigin = $myhostname",
            "mydestination =",
            "local_recipient_maps =",
            "local_transport = error:local delivery is disabled",
            "alias_maps =",
            "alias_database =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtpd_peername_lookup = no",
            "biff = no",
        ]
        default = spec.routes.get("*")
        if default is not None:
            main.append(f"relayhost = [127.0.0.1]:{default}")
        per_domain = {d: p for d, p in spec.routes.items() if d != "*"}
        if per_domain:
            transport = conf / "transport"
            transport.write_text(
                "".join(f"{d} smtp:[127.0.0.1]:{p}\n" for d, p in per_domain.items())
            )
            main.append(f"transport_maps = texthash:{transport}")
        if spec.tls:
            main.append("smtp_tls_security_level = may")
            if spec.ca_file is not None:
                main.append(f"smtp_tls_CAfile = {spec.ca_file}")
        if spec.destination_concurrency:
            # Postfix's slow start begins at 5 connections per destination and only
            # grows on successful deliveries: the hold test's slow sinks never reply.
            main.append(f"default_destination_concurrency_limit = {spec.destination_concurrency}")
            main.append(f"initial_destination_concurrency = {spec.destination_concurrency}")
        if spec.total_connections:
            main.append(f"default_process_limit = {spec.total_connections + 100}")
        (conf / "main.cf").write_text("\n".join(main) + "\n")
        (conf / "master.cf").write_text(
            _POSTFIX_MASTER_CF.format(listen=f"127.0.0.1:{spec.listen_port}")
        )
        return conf

    async def start(self, spec: RunSpec, group: ProcessGroup) -> None:
        self.spec, self.group = spec, group
        self.config_dir = self.write_config(spec)
        log = spec.workdir / "postfix-start.log"
        await self._spawn([str(POSTFIX_BIN), "-c", str(self.config_dir), "start-fg"], log)
        assert self.process is not None
        group.set_root(self.process.pid)
        try:
            await wait_for_banner(spec.listen_port, 30.0, self.process)
        except PeerUnavailable as exc:
            await self.stop()
            raise PeerUnavailable(
                f"postfix: {exc}: {_tail(log)} {_tail(spec.workdir / 'postfix.log')}"
            ) from None

    async def stop(self) -> None:
        running = self.process is not None and self.process.returncode is None
        if self.config_dir is not None and running:
            stop = await asyncio.create_subprocess_exec(
                str(POSTFIX_BIN),
                "-c",
                str(self.config_dir),
                "stop",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 15.0)
        await self._stop_group()

    def sendmail_command(self, recipient: str) -> tuple[list[str], dict[str, str]] | None:
        assert self.config_dir is not None
        return [str(POSTFIX_SENDMAIL), "-C", str(self.config_dir), "-f", SENDER, recipient], {}

    def counted_sendmail_command(
        self, recipient: str, work: Path
    ) -> tuple[list[str], dict[str, str]] | None:
        # valgrind refuses to exec the set-gid postdrop: the same configuration with a
        # copy of it that is not set-gid (root writes the maildrop all the same).
        assert self.config_dir is not None
        commands, conf = work / "commands", work / "conf"
        commands.mkdir(exist_ok=True)
        shutil.copyfile(POSTFIX_SENDMAIL.with_name("postdrop"), commands / "postdrop")
        (commands / "postdrop").chmod(0o555)
        shutil.copytree(self.config_dir, conf, dirs_exist_ok=True)
        with (conf / "main.cf").open("a") as main_cf:
            main_cf.write(f"command_directory = {commands}\n")
        return [str(POSTFIX_SENDMAIL), "-C", str(conf), "-f", SENDER, recipient], {}


# ----------------------------------------------------------------------------------- Exim


class Exim(Peer):
    """Exim 4.96 from the unpacked Debian package: exim4 -C bench.conf -bdf -oX PORT.

    bench.conf (written by scripts/install-bench-peers, listed in
    /etc/exim4/trusted_configs) includes run/current.conf, which this adapter
    writes for each run: with a trusted -C file Exim keeps root privilege and
    behaves as an installed Exim. If the file is not trusted (the work tree moved
    since the install), Exim runs with privilege dropped; the results say so.
    """

    def __init__(self) -> None:
        super().__init__("exim")
        self.notes = [
            "queue runner every second (-q1s; Debian's default is 30m): by default "
            "(smtp_accept_queue_per_connection = 10) the first 10 messages of a connection "
            "are delivered at once, one delivery process each, and later ones wait for a "
            "queue run (up to queue_run_max = 5 at once, reusing connections)",
            "hold test only: smtp_accept_queue_per_connection = 0, so that every message "
            "gets its own delivery process and connection at once",
            "host_lookup and rfc1413 (ident) lookups off",
        ]
        self.config_file: Path | None = None

    def trusted(self) -> bool:
        try:
            listed = Path("/etc/exim4/trusted_configs").read_text().split()
        except OSError:
            return False
        return str(EXIM_TRUSTED_CONF) in listed and EXIM_TRUSTED_CONF.exists()

    def unavailable(self) -> str | None:
        if not EXIM_BIN.exists():
            return "exim not unpacked (run scripts/install-bench-peers)"
        try:
            pwd.getpwnam("Debian-exim")
        except KeyError:
            return "user 'Debian-exim' missing (run scripts/install-bench-peers)"
        return None

    def version(self) -> str:
        out = subprocess.run([str(EXIM_BIN), "--version"], capture_output=True, text=True)
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("Exim version"):
                return line.split()[2]
        return "unknown"

    def write_config(self, spec: RunSpec) -> Path:
        spool = spec.workdir / "exim-spool"
        logs = spec.workdir / "exim-log"
        exim_user = pwd.getpwnam("Debian-exim")
        for path in (spool, logs):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, exim_user.pw_uid, exim_user.pw_gid)
        default = spec.routes.get("*")
        route_items = [f'{d} "127.0.0.1::{p}"' for d, p in spec.routes.items() if d != "*"]
        if default is not None:
            route_items.append(f'* "127.0.0.1::{default}"')
        lines = [
            "# Written by bench/run.py for one benchmark run.",
            f"exim_path = {EXIM_BIN}",
            "primary_hostname = exim.bench.test",
            f"spool_directory = {spool}",
            f"log_file_path = {logs}/%slog",
            "local_interfaces = 127.0.0.1",
            "keep_environment =",
            "host_lookup =",
            "rfc1413_hosts =",
            "tls_advertise_hosts =",
            "acl_smtp_rcpt = acl_check_rcpt",
            # Exim's default of 1000 messages per connection would 421 the submission
            # client mid-run; Postfix and relaymail set no such limit.
            "smtp_accept_max_per_connection = 0",
        ]
        if spec.total_connections:
            lines.append("smtp_accept_queue_per_connection = 0")
        lines += [
            "",
            "begin acl",
            "acl_check_rcpt:",
            "  accept hosts = 127.0.0.0/8",
            "  deny message = relay not permitted",
            "",
            "begin routers",
            "bench_sink:",
            "  driver = manualroute",
            # A route to 127.0.0.1 is a route to this host; "self = send" delivers anyway.
            "  route_list = " + " ; ".join(route_items),
            "  transport = remote_smtp",
            "  self = send",
            "",
            "begin transports",
            "remote_smtp:",
            "  driver = smtp",
            "  allow_localhost",
        ]
        if spec.tls and spec.ca_file is not None:
            lines.append(f"  tls_verify_certificates = {spec.ca_file}")
        lines += ["", "begin retry", "*  *  F,1h,10s", ""]
        text = "\n".join(lines)
        per_run = spec.workdir / "exim.conf"
        per_run.write_text(text)
        if self.trusted():
            current = EXIM_DIR / "run" / "current.conf"
            current.write_text(text)
            os.chmod(current, 0o644)
            return EXIM_TRUSTED_CONF
        return per_run

    async def start(self, spec: RunSpec, group: ProcessGroup) -> None:
        self.spec, self.group = spec, group
        self.config_file = self.write_config(spec)
        if self.config_file != EXIM_TRUSTED_CONF:
            note = "exim config not trusted: -C dropped root privilege (re-run install script)"
            if note not in self.notes:
                self.notes.append(note)
        log = spec.workdir / "exim-start.log"
        argv = [
            str(EXIM_BIN),
            "-C",
            str(self.config_file),
            "-bdf",
            "-q1s",
            "-oX",
            str(spec.listen_port),
        ]
        await self._spawn(argv, log)
        assert self.process is not None
        group.set_root(self.process.pid)
        try:
            await wait_for_banner(spec.listen_port, 30.0, self.process)
        except PeerUnavailable as exc:
            await self.stop()
            raise PeerUnavailable(
                f"exim: {exc}: {_tail(log)} {_tail(spec.workdir / 'exim-log' / 'paniclog')}"
            ) from None

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        await self._stop_group()

    def sendmail_command(self, recipient: str) -> tuple[list[str], dict[str, str]] | None:
        assert self.config_file is not None
        return [str(EXIM_BIN), "-C", str(self.config_file), "-f", SENDER, recipient], {}


BASELINE = "relaymail-baseline"
# relaymail with [admin] on: the listener and the delivery history it keeps.
WITH_ADMIN = "relaymail-admin"
DKIM_PEER = "relaymail-dkim"


def make_peer(
    name: str,
    relaymail_sendmail: str | None = None,
    relaymail_command: str | None = None,
    baseline_command: str | None = None,
    dkim: str | None = None,
    processes: int | None = None,
) -> Peer:
    if name == "relaymail":
        return Relaymail(relaymail_sendmail, relaymail_command, processes=processes)
    if name == DKIM_PEER:
        # The same relaymail signing every message: the cost of DKIM, in the same rounds.
        return Relaymail(relaymail_sendmail, relaymail_command, name=DKIM_PEER,
                         dkim=dkim or "rsa", processes=processes)  # fmt: skip
    if name == BASELINE:
        # Another build of relaymail (an older checkout's venv) run as one more peer,
        # so a change is measured against what it replaces in the same rounds.
        if baseline_command is None:
            raise ValueError(f"{BASELINE} needs --baseline-command")
        return Relaymail(None, baseline_command, name=BASELINE)
    if name == WITH_ADMIN:
        return Relaymail(relaymail_sendmail, relaymail_command, name=WITH_ADMIN, admin=True,
                         processes=processes)  # fmt: skip
    if name == "postfix":
        return Postfix()
    if name == "exim":
        return Exim()
    known = f"relaymail, {BASELINE}, {WITH_ADMIN}, {DKIM_PEER}, postfix, exim"
    raise ValueError(f"unknown peer {name!r} (known: {known})")
