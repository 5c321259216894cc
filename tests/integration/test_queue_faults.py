"""The queue under real faults: a full disk, files changed under the daemon, a bad start.

Every fault is made for real (a small tmpfs filled to the last byte, files deleted or
made immutable, a read-only mount), against `relaymail serve` as a process, with a sink
on loopback counting what arrives. The rule checked: nothing acknowledged is lost, and a
recipient the next hop accepted is not delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiosmtplib
import pytest

from relaymail.queue import SqliteStore
from relaymail.queue_problem import QueueProblem
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command, write_toml
from tests.peers.smtp_server import Script, SMTPPeer

pytestmark = pytest.mark.timeout(120)

EX_CANTCREAT, EX_CONFIG = 73, 78  # sysexits.h


@contextlib.contextmanager
def tmpfs(mountpoint: Path, options: str) -> Iterator[Path]:
    """A tmpfs of its own: filling it fills nobody else's disk; `ro` refuses root too."""
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)], capture_output=True
    )
    if result.returncode != 0:  # never a skip: CI runs as root and can mount
        pytest.fail(f"cannot mount a tmpfs here (root needed): {result.stderr!r}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "size=16m,mode=0755") as mountpoint:
        yield mountpoint


def fill(directory: Path) -> Path:
    """Write one file until the filesystem says ENOSPC; deleting it frees the space."""
    ballast = directory / "ballast"
    with ballast.open("wb", buffering=0) as out:
        chunk = b"\0" * 65536
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                out.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return ballast


def config_file(tmp_path: Path, queue: Path, port: int, sink_port: int, ca_file: Path) -> Path:
    return write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 5.0},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": queue, "retry": ["0.2s"]},
        # One process: these tests act on the files of one queue (queue.db); a worker's
        # client would queue into its own shard's files (README, "Every core").
        "server": {"processes": 1},
        "routes": {"dest.test": [f"127.0.0.1:{sink_port}"]},
        "listener": [{"address": f"127.0.0.1:{port}", "relay_networks": ["127.0.0.0/8"]}],
    })  # fmt: skip


async def submit(port: int, tokens: list[str]) -> list[tuple[int, str]]:
    """Each message in its own transaction; the final reply to each."""
    replies = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
        for token in tokens:
            message = f"From: a@src.test\r\nTo: u@dest.test\r\nSubject: {token}\r\n\r\nbody\r\n"
            try:
                _, reply = await client.sendmail("a@src.test", ["u@dest.test"], message)
                replies.append((250, reply))
            except aiosmtplib.SMTPResponseException as exc:
                replies.append((exc.code, exc.message))
                await client.rset()
    return replies


def arrived(sink: SMTPPeer) -> list[str]:
    return [
        m.group(1).decode()
        for t in sink.transactions
        if t.accepted and (m := re.search(rb"Subject: (t-\d+)", t.data))
    ]


async def queue_stats(config: Path) -> dict[str, object]:
    command = (RELAYMAIL, "queue", "--config", str(config), "--json", "stats")
    code, out, err = await run_command(*command)
    assert code == 0, err
    stats: dict[str, object] = json.loads(out)
    return stats


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            done = condition()
            if done if isinstance(done, bool) else await done:
                return
            await asyncio.sleep(0.1)


async def test_outcomes_that_cannot_be_written_are_kept_not_delivered_again(
    small_fs: Path, ca_file: Path, tmp_path: Path
) -> None:
    port, sink_port = free_port(), free_port()
    config = config_file(tmp_path, small_fs / "queue", port, sink_port, ca_file)
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    tokens = [f"t-{n}" for n in range(40)]
    sink = SMTPPeer(Script(), port=sink_port)
    try:
        # Accepted while the next hop is down: all 40 wait in the queue.
        assert [code for code, _ in await submit(port, tokens)] == [250] * 40
        await wait_for(lambda: daemon.text().count("status=deferred") >= 40)

        # The disk fills; then the next hop comes up and takes every message, and
        # not one outcome can be written.
        ballast = fill(small_fs)
        await sink.start()
        await wait_for(lambda: set(arrived(sink)) == set(tokens))
        # Several retry rounds pass while the outcomes wait in memory.
        await asyncio.sleep(2.0)
        assert sorted(arrived(sink)) == sorted(tokens)

        ballast.unlink()

        async def drained() -> bool:
            return (await queue_stats(config))["messages"] == 0

        await wait_for(drained)
    finally:
        assert await daemon.stop() == 0
    # A restart finds nothing to deliver again.
    again = Daemon(config, port, tmp_path / "serve-again.log")
    await again.start()
    try:
        assert (await queue_stats(config))["messages"] == 0
    finally:
        assert await again.stop() == 0
        await sink.stop()
    assert sorted(arrived(sink)) == sorted(tokens)  # each exactly once
    log = daemon.text()
    assert log.count("queue storage refused a write") == 1  # one line per burst
    assert "queue storage takes writes again" in log
    assert "Traceback" not in log


# -- the queue's files changed under a running daemon -------------------------------


async def codes(port: int, count: int, start: int = 0) -> list[int]:
    return [code for code, _ in await submit(port, [f"t-{n}" for n in range(start, start + count)])]


@contextlib.contextmanager
def chattr(flag: str, path: Path) -> Iterator[None]:
    result = subprocess.run(["chattr", f"+{flag}", str(path)], capture_output=True)
    if result.returncode != 0:  # never a skip: the queue lives on ext4 here
        pytest.fail(f"cannot set the {flag} attribute on {path}: {result.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["chattr", f"-{flag}", str(path)], check=True)


@pytest.fixture
async def running(tmp_path: Path, ca_file: Path) -> AsyncIterator[tuple[Daemon, SMTPPeer, Path]]:
    """A daemon delivering to a live sink; yields it, the sink and the queue directory."""
    sink = SMTPPeer(Script())
    await sink.start()
    port = free_port()
    queue = tmp_path / "queue"
    daemon = Daemon(config_file(tmp_path, queue, port, sink.port, ca_file), port, tmp_path / "log")
    await daemon.start()
    try:
        yield daemon, sink, queue
    finally:
        await daemon.stop()
        await sink.stop()


async def test_mail_is_refused_while_the_queue_db_is_renamed_and_taken_once_it_is_back(
    running: tuple[Daemon, SMTPPeer, Path],
) -> None:
    daemon, sink, queue = running
    db = queue / "queue.db"
    assert await codes(daemon.port, 2) == [250, 250]
    db.rename(queue / "moved.db")
    assert await codes(daemon.port, 5, start=2) == [452] * 5
    (queue / "moved.db").rename(db)
    assert await codes(daemon.port, 2, start=7) == [250, 250]
    await wait_for(lambda: len(arrived(sink)) == 4)
    assert sorted(arrived(sink)) == ["t-0", "t-1", "t-7", "t-8"]
    assert daemon.process is not None and daemon.process.returncode is None
    assert daemon.text().count("queue files changed under relaymail") == 1


@pytest.mark.parametrize("change", ["delete db", "replace db", "delete wal", "move directory"])
async def test_mail_is_refused_once_the_queue_files_are_not_the_open_ones(
    running: tuple[Daemon, SMTPPeer, Path], change: str
) -> None:
    daemon, _, queue = running
    assert await codes(daemon.port, 1) == [250]
    db = queue / "queue.db"
    if change == "delete db":
        db.unlink()
    elif change == "replace db":
        shutil.copy(db, queue / "copy.db")
        (queue / "copy.db").replace(db)
    elif change == "delete wal":
        (queue / "queue.db-wal").unlink()
    else:
        queue.rename(queue.with_name("queue.old"))
    assert await codes(daemon.port, 5, start=1) == [452] * 5
    assert daemon.process is not None and daemon.process.returncode is None
    assert "queue files changed under relaymail" in daemon.text()


@pytest.mark.parametrize("flag", ["i", "a"])
async def test_an_immutable_shm_file_is_refused_with_452_not_a_sigbus(
    running: tuple[Daemon, SMTPPeer, Path], flag: str
) -> None:
    daemon, sink, queue = running
    assert await codes(daemon.port, 1) == [250]
    with chattr(flag, queue / "queue.db-shm"):
        assert await codes(daemon.port, 20, start=1) == [452] * 20
        await asyncio.sleep(1.5)  # an admin poll (a read) passes through the map too
        assert daemon.process is not None and daemon.process.returncode is None
    assert await codes(daemon.port, 1, start=21) == [250]
    await wait_for(lambda: sorted(arrived(sink)) == ["t-0", "t-21"])
    log = daemon.text()
    assert "queue.db-shm has the immutable or append-only attribute" in log
    assert "queue files are back as they were opened" in log


# -- a queue that cannot be used at start: one line, a sysexits code ------------------


def make_file(queue: Path) -> None:
    queue.write_text("not a directory\n")


def make_parent_a_file(queue: Path) -> None:
    queue.parent.parent.mkdir(parents=True)
    queue.parent.write_text("a file where a directory should be\n")


def make_garbage_db(queue: Path) -> None:
    queue.mkdir()
    (queue / "queue.db").write_bytes(b"this is not a database\n" * 100)


def make_corrupt_db(queue: Path) -> None:
    queue.mkdir()
    # SQLite's magic header, then pages of junk.
    (queue / "queue.db").write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 64)


def make_newer_schema(queue: Path) -> None:
    queue.mkdir()
    with contextlib.closing(sqlite3.connect(queue / "queue.db", isolation_level=None)) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL)")
        db.execute("INSERT INTO schema_version VALUES (99, 0)")


START_FAULTS = {
    "a file": (make_file, QueueProblem.NOT_A_DIRECTORY),
    "under a file": (make_parent_a_file, QueueProblem.NOT_A_DIRECTORY),
    "not a database": (make_garbage_db, QueueProblem.NOT_A_QUEUE),
    "corrupt database": (make_corrupt_db, QueueProblem.NOT_A_QUEUE),
    "newer schema": (make_newer_schema, QueueProblem.NEWER_SCHEMA),
}


async def serve_once(tmp_path: Path, queue: Path, ca_file: Path) -> tuple[int, str]:
    """`relaymail serve` on `queue`; it must exit by itself (it cannot start)."""
    config = config_file(tmp_path, queue, free_port(), free_port(), ca_file)
    code, out, err = await run_command(RELAYMAIL, "serve", "--config", str(config), timeout=30)
    return code, out + err


def queue_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("relaymail: queue.directory:")]


@pytest.mark.parametrize("case", list(START_FAULTS))
async def test_a_queue_that_is_not_one_stops_the_start_with_one_line(
    tmp_path: Path, ca_file: Path, case: str
) -> None:
    make, problem = START_FAULTS[case]
    queue = tmp_path / "spool" / "file" / "queue" if case == "under a file" else tmp_path / "q"
    make(queue)
    code, output = await serve_once(tmp_path, queue, ca_file)
    assert code == problem.exit_code == EX_CONFIG
    assert "Traceback" not in output
    assert len(queue_lines(output)) == 1


@pytest.fixture
def read_only_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mountpoint:
        yield mountpoint


async def test_a_read_only_queue_directory_stops_the_start_with_ex_cantcreat(
    tmp_path: Path, ca_file: Path, read_only_fs: Path
) -> None:
    for queue in (read_only_fs, read_only_fs / "missing"):
        code, output = await serve_once(tmp_path, queue, ca_file)
        assert code == QueueProblem.CANNOT_WRITE.exit_code == EX_CANTCREAT
        assert "Traceback" not in output
        assert len(queue_lines(output)) == 1


@pytest.mark.parametrize("target", ["directory", "database", "leftover shm"])
async def test_an_immutable_queue_stops_the_start_with_ex_cantcreat(
    tmp_path: Path, ca_file: Path, target: str
) -> None:
    queue = tmp_path / "q"
    if target != "directory":
        store = SqliteStore.open(queue)
        await store.close()
    if target == "leftover shm":
        (queue / "queue.db-shm").write_bytes(b"\0" * 32768)
    path = {"directory": queue, "database": queue / "queue.db"}.get(target, queue / "queue.db-shm")
    queue.mkdir(exist_ok=True)
    with chattr("i", path):
        code, output = await serve_once(tmp_path, queue, ca_file)
    assert code == EX_CANTCREAT
    assert "Traceback" not in output
    assert len(queue_lines(output)) == 1


async def test_a_message_whose_body_row_is_gone_is_held_and_said_once(
    tmp_path: Path, ca_file: Path
) -> None:
    port = free_port()
    queue = tmp_path / "queue"
    config = config_file(tmp_path, queue, port, free_port(), ca_file)  # the next hop is down
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        [(code, reply)] = await submit(port, ["t-0"])
        assert code == 250
        queue_id = reply.split()[-1]
        await wait_for(lambda: "status=deferred" in daemon.text())
        with contextlib.closing(sqlite3.connect(queue / "queue.db", isolation_level=None)) as db:
            db.execute("DELETE FROM body")
        command = (RELAYMAIL, "queue", "--config", str(config), "--json")
        assert (await run_command(*command, "retry", "--all"))[0] == 0

        async def held() -> bool:
            code, out, _ = await run_command(*command, "show", queue_id)
            return code == 0 and json.loads(out)["held"] is True

        await wait_for(held)
        await asyncio.sleep(1.0)  # more admin polls and retry rounds: no loop, no repeat
    finally:
        assert await daemon.stop() == 0
    log = daemon.text()
    assert log.count(f"id={queue_id}: message body missing from the queue") == 1
    assert "Traceback" not in log
