"""A private PostgreSQL cluster on loopback: Debian's server binaries, a temporary directory.

Theory of operation. `initdb` writes a cluster into a fresh directory, `pg_ctl` starts it
listening on 127.0.0.1 on a free port and on a Unix socket inside that directory, so it never
meets a system cluster (Debian's own, on 5432) and nothing outside this machine can reach it.
One cluster serves a whole test session (initdb costs about a second); each test gets a
database of its own (`fresh_database`, CREATE DATABASE from template0, half a second on a
loaded machine), or a schema of its own in a database the session shares (`fresh_schema`,
a few ms: its DSN sets the search_path), so no test sees another's rows.

PostgreSQL refuses to run as root. When the tests run as root the cluster runs as the
`postgres` account that Debian's package creates, which owns the directory; otherwise as the
current user.

`fsync = off`: the tests kill relaymail, never PostgreSQL, and a commit acknowledged by
the server is what the Store contract is about, so flushing to disk would only cost time.
A benchmark asks for `durable=True`: then every commit is flushed, as in production.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.peers.binaries import MissingPeerBinary
from tests.peers.processes import terminate

SUPERUSER = "relaymail_test"


def server_binary(name: str) -> str:
    """`initdb`, `pg_ctl` or `postgres` of the newest installed major version.

    Debian keeps them in /usr/lib/postgresql/<major>/bin, outside PATH.
    """
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parents[1].name),
    )
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise MissingPeerBinary(f"PostgreSQL ({name})")
    return on_path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One running cluster. `dsn(database)` is a libpq URI for the superuser on loopback."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.directory = Path(tempfile.mkdtemp(prefix="relaymail-pg-"))
        self.port = _free_port()
        self._databases = 0
        self._shared: str | None = None  # the database fresh_schema's schemas live in
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise MissingPeerBinary("PostgreSQL (the postgres account)") from None
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._as = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                        "--clear-groups", "--"]  # fmt: skip
        self.data = self.directory / "data"
        self._process: subprocess.Popen[bytes] | None = None

    def _run(self, *argv: str) -> None:
        result = subprocess.run([*self._as, *argv], capture_output=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {result.stderr.decode()[-2000:]}")

    def start(self) -> None:
        self._run(server_binary("initdb"), "-D", str(self.data), "-U", SUPERUSER,
                  "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            **({} if self.durable else {"fsync": "off", "full_page_writes": "off"}),
            "max_connections": "300",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in options.items())
        log = self.directory / "server.log"
        self._process = subprocess.Popen(
            [*self._as, server_binary("postgres"), "-D", str(self.data)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._accepting():
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self._log_tail(log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("postgres started but did not accept connections in time")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        """The postmaster's: the root of every server process of the cluster."""
        assert self._process is not None
        return self._process.pid

    def _log_tail(self, log: Path) -> str:
        return log.read_text()[-2000:] if log.exists() else "(no log)"

    def _accepting(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def dsn(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """Create an empty database; returns its DSN."""
        import psycopg

        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def fresh_schema(self) -> str:
        """Create an empty schema in the session's shared database; a DSN that uses it.

        What is database-wide (advisory locks, NOTIFY channels) is shared with the other
        tests' schemas: fine for tests that run one after the other.
        """
        import psycopg

        if self._shared is None:
            self._shared = self.fresh_database()
        self._databases += 1
        name = f"s{os.getpid()}_{self._databases}"
        with psycopg.connect(self._shared, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self._shared}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        if self._process is not None:
            # SIGINT is the "fast" shutdown: open sessions are cut, not waited for.
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                terminate(self._process, grace=0)
            self._process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
