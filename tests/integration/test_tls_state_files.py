"""`relaymail tls show|forget` and `tlsrpt show`, run as root beside a daemon that runs as
`[server] user`: they create no state file, and leave the daemon's files as they found them
(a root-owned tls-memory.db stopped the daemon writing it: "attempt to write a readonly
database")."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon_process import RELAYMAIL, write_toml

# Run as root, as the suite is (the maildrop tests switch to nobody the same way): what
# these tests prove is what root's commands leave behind for the daemon's user.
NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
EX_NOPERM = 77
# What the daemon (as nobody, UMask=0077) writes: a level for dest.test, a TLS report count.
DAEMON = """
import os, sys
from pathlib import Path
from relaymail.tls.downgrade import TlsLevel
from relaymail.tls.memory import TlsMemory
from relaymail.tls.reporting import TlsReportStore

os.umask(0o077)
queue = Path(sys.argv[1])
memory = TlsMemory(queue, 30 * 86400.0)
memory.saw(sys.argv[2], TlsLevel.VERIFIED)
reports = TlsReportStore(queue)
if sys.argv[3] == "running":
    print("ready", flush=True)
    sys.stdin.read()
reports.close()
memory.close()
"""
# The README's keys, every one there when nothing is remembered.
NOTHING_REMEMBERED = {"domain": "dest.test", "level": None, "since": None, "last_seen": None,
                      "expires": None, "enforced": True}  # fmt: skip
COMMANDS = {
    "tls show": ["tls", "show", "dest.test"],
    "tls show --json": ["tls", "show", "dest.test", "--json"],
    "tls forget": ["tls", "forget", "dest.test"],
    "tlsrpt show": ["tlsrpt", "show"],
}


@pytest.fixture
def queue() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="relaymail-tls-state-"))
    top.chmod(0o755)
    queue = top / "queue"
    queue.mkdir(mode=0o711)
    os.chown(queue, 65534, 65534)
    yield queue
    shutil.rmtree(top)


def files(directory: Path) -> dict[str, tuple[int, int, int]]:
    found = {p.name: p.stat() for p in directory.iterdir()}
    return {name: (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) for name, s in found.items()}


def relaymail(queue: Path, args: list[str], as_user: tuple[str, ...] = ()) -> tuple[int, str, str]:
    config = write_toml(queue.parent / "relaymail.toml", {
        "server": {"user": "nobody"}, "queue": {"directory": queue}, "tls": {"remember": True},
    })  # fmt: skip
    process = subprocess.run([*as_user, RELAYMAIL, *args, "-C", str(config)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "Traceback" not in process.stderr
    return process.returncode, process.stdout, process.stderr


def as_daemon(queue: Path, domain: str, state: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*NOBODY, sys.executable, "-c", DAEMON, str(queue), domain, state],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    if state == "running":
        assert process.stdout.readline() == "ready\n"
    else:
        assert process.wait(60) == 0
    return process


@pytest.mark.parametrize("command", COMMANDS)
def test_a_tls_command_on_a_queue_without_state_creates_no_file(queue: Path, command: str) -> None:
    code, out, err = relaymail(queue, COMMANDS[command])
    assert (code, err) == (0, "")
    assert files(queue) == {}
    if command == "tls show --json":
        assert json.loads(out) == NOTHING_REMEMBERED
    elif command == "tlsrpt show":
        assert json.loads(out) == []
    else:
        assert out == "dest.test: nothing remembered\n"


@pytest.mark.parametrize("daemon", ["stopped", "running"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_tls_command_leaves_the_daemons_files_and_owners_as_they_are(
    queue: Path, command: str, daemon: str
) -> None:
    held = as_daemon(queue, "dest.test", daemon)
    try:
        before = files(queue)
        assert {owner for owner, _, _ in before.values()} == {65534}
        code, out, err = relaymail(queue, COMMANDS[command])
        assert (code, err) == (0, "")
        assert files(queue) == before
    finally:
        held.communicate("", timeout=60)
    if command == "tls show --json":
        assert json.loads(out)["level"] == "verified"
    elif command == "tls forget":
        assert out == "dest.test: forgotten\n"
    # The daemon's user can still write every file.
    as_daemon(queue, "other.test", "stopped")


def test_a_tls_command_by_a_user_who_cannot_open_the_memory_is_refused_with_77(
    queue: Path,
) -> None:
    as_daemon(queue, "dest.test", "stopped")  # tls-memory.db is nobody's, mode 0600
    daemon_user = ("setpriv", "--reuid", "daemon", "--regid", "daemon", "--clear-groups")
    code, out, err = relaymail(queue, COMMANDS["tls show"], as_user=daemon_user)
    assert (code, out) == (EX_NOPERM, "")
    memory = queue / "tls-memory.db"
    assert err == f"relaymail: {memory}: permission denied: run as root or nobody\n"
