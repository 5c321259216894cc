"""Local submission through the maildrop: `sendmail` as another user, the daemon's pickup.

Everything runs as real processes: `sendmail` under `setpriv` as nobody, the
daemon as `relaymail serve`, delivery to a loopback sink. The queue lives in a
0755 directory under /tmp that nobody can reach (pytest's tmp_path cannot).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaymail.inbound.pickup import open_maildrop
from relaymail.maildrop import Submission, decode, encode
from relaymail.message import Envelope
from relaymail.queue.sqlite import SqliteStore
from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port
from tests.integration.test_daemon import make_config, wait_for
from tests.peers.smtp_server import Script

pytestmark = pytest.mark.timeout(120)

SENDMAIL = str(Path(RELAYMAIL).parent / "sendmail")
NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
EX_USAGE, EX_NOUSER, EX_TEMPFAIL, EX_CONFIG = 64, 67, 75, 78
LOCAL = "relay.relaymail.test"  # make_config's helo_name: the local domain here


@pytest.fixture
def shared() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="relaymail-maildrop-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def sendmail(*args: str, stdin: bytes = b"Subject: hi\n\nbody\n", as_nobody: bool = True,
             cwd: Path | None = None, env: dict[str, str] | None = None,
             preexec=None) -> tuple[int, str, str]:  # fmt: skip
    argv = [*NOBODY, SENDMAIL, *args] if as_nobody else [SENDMAIL, *args]
    environ = {k: v for k, v in os.environ.items() if k != "RELAYMAIL_CONFIG"}
    process = subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd, timeout=60,
                             env={**environ, **(env or {})}, preexec_fn=preexec)  # fmt: skip
    err = process.stderr.decode()
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 1
    return process.returncode, process.stdout.decode(), err


def maildrop_files(queue: Path) -> list[str]:
    return sorted(p.name for p in (queue / "maildrop").iterdir() if p.is_file())


async def start(shared: Path, config: Path, port: int) -> Daemon:
    daemon = Daemon(config, port, shared / "serve.log")
    await daemon.start()
    return daemon


def setup(shared: Path, ca_file: Path, peer_hop: str) -> tuple[Path, int]:
    port = free_port()
    shared_ca = shutil.copy(ca_file, shared / "ca.pem")  # config checks read it, as nobody too
    config = make_config(shared, port, Path(shared_ca), {"dest.test": [peer_hop]},
                         queue={"retry": ["1s"]})  # fmt: skip
    config.chmod(0o644)
    return config, port


async def test_nobody_queues_through_the_maildrop_and_the_running_daemon_delivers(
    smtp_peer, ca_file, shared
):
    peer = await smtp_peer(Script())
    config, port = setup(shared, ca_file, hop(peer))
    daemon = await start(shared, config, port)
    # serve kept sendmail's settings beside its file, as root's: nobody's sendmail uses them.
    assert Path(f"{config}.cache").stat().st_uid == os.getuid() == 0
    try:
        code, _, err = sendmail("-C", str(config), "-F", "No Body", "-N", "never",
                                "u@dest.test")  # fmt: skip
        assert code == 0, err
        await wait_for(lambda: peer.transactions)
    finally:
        assert await daemon.stop() == 0
    [transaction] = peer.transactions
    assert (transaction.mail_from, transaction.recipients) == (f"nobody@{LOCAL}", ("u@dest.test",))
    assert f"From: No Body <nobody@{LOCAL}>".encode() in transaction.data
    [line] = [x for x in daemon.text().splitlines() if "relaymail.pickup:" in x]
    assert f"uid=65534, user=nobody, from=<nobody@{LOCAL}>" in line and "message-id=<" in line
    queue = shared / "queue"
    assert maildrop_files(queue) == []
    assert stat.S_IMODE((queue / "maildrop").stat().st_mode) == 0o1733
    # What nobody may not do: list the maildrop, read the queue database.
    for probe in (f"import os; os.listdir({str(queue / 'maildrop')!r})",
                  f"open({str(queue / 'queue.db')!r}, 'rb')"):  # fmt: skip
        assert subprocess.run([*NOBODY, "python3", "-c", probe], capture_output=True).returncode


async def test_what_sendmail_hands_in_leaves_as_a_next_hop_takes_it(smtp_peer, ca_file, shared):
    # Lines over 998 octets folded (as SMTP's are), Bcc: gone without -t too, input
    # without a header section made body, a long -F name folded into its From:.
    peer = await smtp_peer(Script())
    config, port = setup(shared, ca_file, hop(peer))
    daemon = await start(shared, config, port)
    long_subject = b"Subject: " + b"x" * 3000 + b"\n"
    messages = [
        (("u1@dest.test",), long_subject + b"Bcc: secret@dest.test\n\n" + b"y" * 3001 + b"\n"),
        (("u2@dest.test",), b"hello world: this is the body\n"),
        (("-F", "\u00e9" * 256, "u3@dest.test"), b"Subject: named\n\nz\n"),
    ]
    try:
        for args, stdin in messages:
            code, _, err = sendmail("-C", str(config), *args, stdin=stdin)
            assert code == 0, err
        assert sendmail("-C", str(config), "-F", "n" * 257, "u@dest.test")[0] == EX_USAGE
        await wait_for(lambda: len(peer.transactions) == 3)
    finally:
        assert await daemon.stop() == 0
    data = {t.recipients[0]: t.data for t in peer.transactions}
    for message in data.values():
        assert max(map(len, message.split(b"\r\n"))) <= 998
    assert b"secret@dest.test" not in data["u1@dest.test"]
    header, body = data["u1@dest.test"].split(b"\r\n\r\n", 1)
    assert body.replace(b"\r\n", b"") == b"y" * 3001 and header.count(b"x" * 900) == 3
    header, body = data["u2@dest.test"].split(b"\r\n\r\n", 1)
    assert body == b"hello world: this is the body\r\n" and b"Message-ID: <" in header
    assert b"From: =?utf-8?b?" in data["u3@dest.test"]


async def test_a_user_cannot_forge_another_sender_but_root_may(smtp_peer, ca_file, shared):
    peer = await smtp_peer(Script())
    config, port = setup(shared, ca_file, hop(peer))
    daemon = await start(shared, config, port)
    try:
        for as_nobody, subject in ((True, b"forged"), (False, b"root")):
            code, _, err = sendmail("-C", str(config), "-f", "admin@example.org", "u@dest.test",
                                    stdin=b"Subject: " + subject + b"\n\nx\n",
                                    as_nobody=as_nobody)  # fmt: skip
            assert code == 0, err
        await wait_for(lambda: len(peer.transactions) == 2)
    finally:
        await daemon.stop()
    [forged] = [t for t in peer.transactions if b"Subject: forged" in t.data]
    [by_root] = [t for t in peer.transactions if b"Subject: root" in t.data]
    assert forged.mail_from == f"nobody@{LOCAL}"
    assert f"From: <nobody@{LOCAL}>".encode() in forged.data
    assert (
        f"X-Authentication-Warning: {LOCAL}: nobody set sender to admin@example.org using -f"
    ).encode() in forged.data
    assert by_root.mail_from == "admin@example.org"
    assert b"X-Authentication-Warning" not in by_root.data


async def test_with_the_daemon_stopped_the_file_waits_for_the_next_start(
    smtp_peer, ca_file, shared
):
    peer = await smtp_peer(Script())
    config, port = setup(shared, ca_file, hop(peer))
    daemon = await start(shared, config, port)
    assert await daemon.stop() == 0  # it made the maildrop; now nothing reads it
    code, _, err = sendmail("-C", str(config), "-t", stdin=b"To: w@dest.test\nSubject: s\n\nx\n")
    assert code == 0, err
    [name] = maildrop_files(shared / "queue")
    assert (shared / "queue" / "maildrop" / name).stat().st_uid == 65534
    await asyncio.sleep(0.6)
    assert not peer.transactions
    daemon = await start(shared, config, port)
    try:
        await wait_for(lambda: peer.transactions)
    finally:
        await daemon.stop()
    assert [t.recipients for t in peer.transactions] == [("w@dest.test",)]
    assert maildrop_files(shared / "queue") == []


GOOD = Submission(("u@dest.test",), b"Subject: ok\r\n\r\nx\r\n", 1.0)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", encode(GOOD)[:-3], encode(GOOD) + b"more",
     encode(GOOD).replace(b"recipient u@dest.test", b"recipient u@dest.test\nbogus 1"),
     encode(GOOD).replace(b"u@dest.test", b"not-an-address"),
     encode(GOOD).replace(b"u@dest.test", b"u@dest.test\x1b"),
     # What SMTP's RCPT refuses: a domain IDNA refuses (a no-break space), two "@".
     encode(GOOD).replace(b"u@dest.test", "u@dest.test\xa0".encode()),
     encode(GOOD).replace(b"u@dest.test", b"u@b@dest.test")],
)  # fmt: skip
async def test_a_malformed_file_goes_to_corrupt_with_one_log_line(
    smtp_peer, ca_file, shared, content
):
    peer = await smtp_peer(Script())
    config, port = setup(shared, ca_file, hop(peer))
    maildrop = open_maildrop(shared / "queue")
    bad = "0000000000000001.1." + "ab" * 16
    (maildrop / bad).write_bytes(content)
    (maildrop / ("0000000000000002.1." + "cd" * 16)).symlink_to("/etc/passwd")
    (maildrop / "stray").write_bytes(encode(GOOD))
    (maildrop / ("0000000000000003.1." + "ef" * 16)).write_bytes(encode(GOOD))  # the good one
    daemon = await start(shared, config, port)
    try:
        await wait_for(lambda: peer.transactions)
    finally:
        assert await daemon.stop() == 0
    assert sorted(os.listdir(maildrop / "corrupt")) == sorted(
        [bad, "0000000000000002.1." + "cd" * 16, "stray"]
    )
    assert maildrop_files(shared / "queue") == []
    assert len([x for x in daemon.text().splitlines() if "moved to corrupt/" in x]) == 3
    assert [t.mail_from for t in peer.transactions] == [f"root@{LOCAL}"]


async def test_a_file_queued_before_a_crash_is_not_queued_again(smtp_peer, ca_file, shared):
    peer = await smtp_peer(Script())
    config, port = setup(shared, ca_file, hop(peer))
    open_maildrop(shared / "queue")
    code, _, err = sendmail("-C", str(config), "u@dest.test")
    assert code == 0, err
    [name] = maildrop_files(shared / "queue")
    submission = decode((shared / "queue" / "maildrop" / name).read_bytes())
    # The daemon's own transaction, then no unlink: what kill -9 between them leaves.
    store = SqliteStore.open(shared / "queue")
    await store.enqueue(Envelope(f"nobody@{LOCAL}", submission.recipients), submission.data,
                        submission.submitted_at, pickup=name)  # fmt: skip
    await store.close()
    daemon = await start(shared, config, port)
    try:
        await wait_for(lambda: peer.transactions and not maildrop_files(shared / "queue"))
        await asyncio.sleep(1.0)  # two more scans
    finally:
        await daemon.stop()
    assert len(peer.transactions) == 1
    assert "queued already as id=" in daemon.text()


async def test_kill_9_while_picking_up_delivers_each_message_once(smtp_peer, ca_file, shared):
    # A plain temporary failure: a 4.7.x one would read as throttling and suspend the
    # destination (traffic shaping) past this test's wait.
    peer = await smtp_peer(Script(rcpt_reply="451 4.3.0 later"))
    config, port = setup(shared, ca_file, hop(peer))
    daemon = await start(shared, config, port)
    await daemon.stop()
    for n in range(30):
        code, _, err = sendmail("-C", str(config), "u@dest.test",
                                stdin=b"Subject: m%d\n\nx\n" % n)  # fmt: skip
        assert code == 0, err
    daemon = await start(shared, config, port)
    await wait_for(lambda: "relaymail.pickup:" in daemon.text())
    await daemon.kill()
    mailq = subprocess.run([str(Path(RELAYMAIL).parent / "mailq")], capture_output=True,
                           env={**os.environ, "RELAYMAIL_CONFIG": str(config)})  # fmt: skip
    assert mailq.returncode == 0 and f"nobody@{LOCAL}".encode() in mailq.stdout
    peer.script = Script()
    daemon = await start(shared, config, port)
    try:
        await wait_for(lambda: len({t.data for t in peer.transactions if t.recipients}) == 30)
        await asyncio.sleep(2.0)  # retries of anything queued twice would arrive by now
    finally:
        await daemon.stop()
    subjects = [t.data.split(b"Subject: ")[1].split(b"\r\n")[0]
                for t in peer.transactions if t.recipients]  # fmt: skip
    assert sorted(subjects) == sorted(b"m%d" % n for n in range(30))
    assert maildrop_files(shared / "queue") == []


# -- exit statuses -----------------------------------------------------------


def test_without_a_configuration_it_never_makes_a_queue_in_the_current_directory(shared):
    code, _, err = sendmail("u@dest.test", cwd=shared)
    assert not (shared / "relaymail-data").exists()
    if Path("/var/spool/relaymail/maildrop").is_dir():  # an installed relaymail takes it
        assert code == 0, err
    else:
        assert code == EX_CONFIG and "no relaymail queue is configured" in err


def test_without_a_configuration_a_daemons_maildrop_here_is_used(shared):
    open_maildrop(shared / "relaymail-data")
    code, _, err = sendmail("u@dest.test", cwd=shared)
    assert code == 0, err
    assert len(maildrop_files(shared / "relaymail-data")) == 1


def test_exit_statuses(ca_file, shared):
    config, _ = setup(shared, ca_file, "127.0.0.1:9")
    assert sendmail("-C", str(config), "u@dest.test")[0] == EX_CONFIG  # no queue there
    (shared / "queue").mkdir()
    (shared / "queue").chmod(0o755)
    assert sendmail("-C", str(config), "u@dest.test")[0] == EX_TEMPFAIL  # no maildrop yet
    maildrop = open_maildrop(shared / "queue")
    assert sendmail("-C", str(config), "-N")[0] == EX_USAGE
    assert sendmail("-C", str(config))[0] == EX_USAGE  # no recipients
    assert sendmail("-C", str(config), "u@dest.test\nBcc: x@y")[0] == EX_NOUSER
    # What RCPT TO would refuse over SMTP: the same over sendmail, at once.
    for bad in ("u@dest.test\xa0", "a@b@dest.test", "x@dest..test", "a,b@dest.test"):
        assert sendmail("-C", str(config), bad)[0] == EX_NOUSER, bad
    code = sendmail("-C", str(config), "-f", "a@b@c.test", "u@dest.test", as_nobody=False)[0]
    assert code == EX_NOUSER
    assert sendmail("-C", str(shared / "missing.toml"), "u@dest.test")[0] == EX_CONFIG
    code, out, _ = sendmail("-C", str(config), "-bv", "u@dest.test", "v@dest.test")
    assert (code, out) == (0, "u@dest.test\nv@dest.test\n")
    code, out, _ = sendmail("--help")
    assert code == 0 and "-bv" in out and "-oem" in out
    # A mode it does not have is refused, not taken for -bm with the input sent as mail.
    for mode in ("-bs", "-bt", "-bD", "-bh", "-q1h"):
        assert sendmail("-C", str(config), mode, "u@dest.test")[0] == EX_USAGE, mode
    # -bp is mailq: here its answer for a queue the daemon has not opened yet.
    code, _, err = sendmail("-C", str(config), "-bp", as_nobody=False)
    assert (code, err) == (66, f"relaymail: no queue at {shared / 'queue'}\n")
    code, _, err = sendmail("-C", str(config), "-oem", "-odq", "-oee", "-odb", "-B", "8BITMIME",
                            "-oi", "-i", "u@dest.test")  # fmt: skip
    assert code == 0, err
    [name] = maildrop_files(shared / "queue")
    dropped = decode((maildrop / name).read_bytes())
    assert (dropped.recipients, dropped.sender, dropped.flags) == (
        ("u@dest.test",), None, (("B", "8BITMIME"),)
    )
    # A file size limit stands in for a full disk: the write fails, nothing is left.
    before = maildrop_files(shared / "queue")
    code, _, err = sendmail("-C", str(config), "u@dest.test", stdin=b"x" * 100_000,
                            preexec=_small_files)  # fmt: skip
    assert code == EX_TEMPFAIL and "cannot write" in err
    assert maildrop_files(shared / "queue") == before
    maildrop.chmod(0o755)  # not writable for nobody
    assert sendmail("-C", str(config), "u@dest.test")[0] == EX_TEMPFAIL


def _small_files() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
