"""`relaymail serve` as a system service: root dropped after binding, systemd told when ready.

Real processes on 127.0.0.1: the daemon is started as root (as CI runs) and
proven to run as the service user from /proc, with its queue files owned by
that user, while mail still flows from swaks to a sink.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command, write_toml
from tests.peers.smtp_server import Script

pytestmark = pytest.mark.timeout(90)

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def service_dir(ca_file: Path) -> Iterator[Path]:
    """A directory the service user owns, outside pytest's root-only tmp tree."""
    assert os.geteuid() == 0, "these tests start relaymail as root, as CI does"
    base = Path(tempfile.mkdtemp(prefix="relaymail-service-", dir="/tmp"))
    os.chown(base, NOBODY.pw_uid, NOBODY.pw_gid)
    shutil.copy(ca_file, base / "ca.pem")  # read by the engine after the drop
    (base / "ca.pem").chmod(0o644)
    yield base
    shutil.rmtree(base)


def service_config(base: Path, port: int, routes: dict[str, list[str]], **server: Any) -> Path:
    return write_toml(
        base / "relaymail.toml",
        {
            "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 3.0},
            "tls": {"ca_file": base / "ca.pem"},
            "queue": {"directory": base / "queue"},
            "routes": routes,
            "server": server,
            "listener": [{"address": f"127.0.0.1:{port}", "relay_networks": ["127.0.0.0/8"]}],
        },
    )


def proc_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, values = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            ids[name] = [int(v) for v in values.split()]
    return ids


@pytest.mark.parametrize("processes", [1, 2])
async def test_serve_started_as_root_runs_as_the_service_user_and_still_delivers(
    smtp_peer: Any, service_dir: Path, tmp_path: Path, processes: int
) -> None:
    peer = await smtp_peer(Script())
    port = free_port()
    config = service_config(service_dir, port, {"dest.test": [hop(peer)]}, user="nobody",
                            processes=processes)  # fmt: skip
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        # The mail work runs as the user: the one process, or with [server] processes > 1
        # every worker (the supervisor keeps root to start them again on port 25).
        assert daemon.process is not None
        workers = daemon.workers() if processes > 1 else [daemon.process.pid]
        assert len(workers) == processes
        every_ids = [proc_ids(pid) for pid in workers]
        code, out, err = await run_command(
            "swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test",
            "--from", "a@src.test", "--to", "u@dest.test",
        )  # fmt: skip
        assert code == 0, out + err
        async with asyncio.timeout(20):
            while not peer.transactions:
                await asyncio.sleep(0.05)
    finally:
        assert await daemon.stop() == 0, daemon.text()
    for ids in every_ids:
        assert ids["Uid"] == [NOBODY.pw_uid] * 4
        assert ids["Gid"] == [NOBODY.pw_gid] * 4
        assert 0 not in ids["Groups"]
    queue_files = list((service_dir / "queue").iterdir())
    assert "queue.db" in [f.name for f in queue_files]
    assert {(f.stat().st_uid, f.stat().st_gid) for f in queue_files} == {
        (NOBODY.pw_uid, NOBODY.pw_gid)
    }
    # Queued mail is private; only the maildrop is open to every local user (1733).
    files = [f for f in queue_files if f.name != "maildrop"]
    assert {f.stat().st_mode & 0o077 for f in files} == {0}
    assert (service_dir / "queue" / "maildrop").stat().st_mode & 0o7777 == 0o1733
    [transaction] = peer.transactions
    assert transaction.recipients == ("u@dest.test",)


async def serve_exit(config: Path, *prefix: str) -> tuple[int, str]:
    """The exit status and the last line on stderr (log lines may come before it)."""
    code, _, err = await run_command(*prefix, RELAYMAIL, "serve", "--config", str(config))
    assert "Traceback" not in err
    return code, err.splitlines()[-1]


AS_NOBODY = ("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups")


@pytest.mark.parametrize(
    ("user", "privileged", "prefix"),
    [
        pytest.param("no-such-relaymail-user", False, (), id="unknown-user"),
        pytest.param(None, True, (), id="root-on-port-25-without-a-user"),
        pytest.param("daemon", False, AS_NOBODY, id="started-as-a-user-who-cannot-switch"),
    ],
)
async def test_serve_refuses_with_78_and_one_line_before_touching_the_queue(
    service_dir: Path, user: str | None, privileged: bool, prefix: tuple[str, ...]
) -> None:
    server = {} if user is None else {"user": user}
    config = service_config(service_dir, 25 if privileged else free_port(), {}, **server)
    code, _, err = await run_command(*prefix, RELAYMAIL, "serve", "--config", str(config))
    assert code == 78
    assert "Traceback" not in err
    # Log lines may come first (listening, with a user to become); the reason is last.
    assert err.splitlines()[-1].startswith("relaymail: configuration error: server.user: ")
    assert not (service_dir / "queue").exists()


async def test_systemd_hears_ready_once_mail_is_accepted_and_stopping_at_the_end(
    service_dir: Path, tmp_path: Path
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    port = free_port()
    config = service_config(service_dir, port, {})
    daemon = Daemon(
        config, port, tmp_path / "serve.log", env={"NOTIFY_SOCKET": str(tmp_path / "notify")}
    )
    loop = asyncio.get_running_loop()
    try:
        await daemon.start()
        ready = await asyncio.wait_for(loop.sock_recv(notify, 4096), 20)
        assert ready.split(b"\n")[0] == b"READY=1"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220 ")
        writer.close()
        assert await daemon.stop() == 0
        assert await asyncio.wait_for(loop.sock_recv(notify, 4096), 10) == b"STOPPING=1"
    finally:
        notify.close()
        if daemon.process is not None and daemon.process.returncode is None:
            await daemon.kill()


async def test_a_helo_name_without_a_dot_is_warned_about_once(
    service_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    config = service_config(service_dir, port, {})
    text = config.read_text().replace('"relay.relaymail.test"', '"localhost"')
    config.write_text(text)
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    assert await daemon.stop() == 0
    warnings = [line for line in daemon.text().splitlines() if "helo_name 'localhost'" in line]
    assert len(warnings) == 1 and "is localhost" in warnings[0]
