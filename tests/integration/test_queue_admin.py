"""`relaymail queue` as an admin uses it, as real processes on a real queue.

Changes take ids (several, or on stdin with `-`), `--all` or filters, and
are one transaction per command; the listing shows recipients, states and
reasons as mailq does; `cat` gives the bytes as queued; the queue's daemon
lock tells the commands whether a daemon runs.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from relaymail.message import Envelope
from relaymail.queue.sqlite import SqliteStore
from relaymail.queue.store import RecipientState, RecipientUpdate
from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command, write_toml
from tests.peers.smtp_server import Script

pytestmark = pytest.mark.timeout(120)

EX_OK, EX_USAGE, EX_NOINPUT, EX_UNAVAILABLE, EX_OSERR = 0, 64, 66, 69, 71
HOUR = 3600.0
BODY = b"Subject: queued\r\nX-Test: 1\r\n\r\nline one\r\n.line two\r\n"


def run(
    config: Path, *args: str, stdin: bytes = b"", program: str = RELAYMAIL
) -> tuple[int, str, str]:
    process = subprocess.run(
        [program, *args, "-C", str(config)], input=stdin, capture_output=True, timeout=60
    )
    return process.returncode, process.stdout.decode(), process.stderr.decode()


def outcome(config: Path, *args: str, stdin: bytes = b"") -> tuple[int, dict[str, Any]]:
    code, out, err = run(config, "queue", *args, "--json", stdin=stdin)
    assert "Traceback" not in err
    return code, json.loads(out)


def listing(config: Path) -> dict[str, Any]:
    code, out, err = run(config, "queue", "list", "--json", "--limit", "100000")
    assert code == EX_OK, err
    return json.loads(out)


async def fill(
    directory: Path, messages: Sequence[tuple[str, tuple[str, ...], float]]
) -> list[str]:
    """Queue (sender, recipients, received_at) messages; their ids in order."""
    store = SqliteStore.open(directory)
    try:
        queued = await asyncio.gather(*(store.enqueue(Envelope(s, r), BODY, at)
                                        for s, r, at in messages))  # fmt: skip
    finally:
        await store.close()
    return [m.id for m in queued]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test"},
        "queue": {"directory": tmp_path / "queue"},
        "listener": [{"address": f"127.0.0.1:{free_port()}"}],
    })  # fmt: skip


@pytest.fixture
def mixed(tmp_path: Path, config: Path) -> list[str]:
    """Five messages: senders, recipient domains and ages to tell them apart by."""
    now = time.time()
    return asyncio.run(fill(tmp_path / "queue", [
        ("spam@bad.test", ("u1@gmail.test",), now - 5 * HOUR),
        ("Spam@BAD.test", ("u2@yahoo.test", "u3@gmail.test"), now - 3 * HOUR),
        ("ok@good.test", ("u4@yahoo.test",), now - 1 * HOUR),
        ("", ("postmaster@good.test",), now - 10),
        ("ok@good.test", ("u5@Gmail.TEST",), now),
    ]))  # fmt: skip


@pytest.mark.parametrize(
    ("args", "picked"),
    [
        (["--from", "spam@bad.test"], [0, 1]),  # addresses in any ASCII case
        (["--from", "@bad.test"], [0, 1]),
        (["--from", "<>"], [3]),
        (["--from", ""], [3]),
        (["--domain", "gmail.test"], [0, 1, 4]),
        (["--to", "@yahoo.test"], [1, 2]),
        (["--to", "u4@yahoo.test"], [2]),
        (["--older-than", "2h"], [0, 1]),
        (["--older-than", "2h", "--domain", "yahoo.test"], [1]),  # every filter must match
        (["--from", "@good.test", "--domain", "gmail.test"], [4]),
        (["--domain", "nowhere.test"], []),
        (["--from", "sp%m@bad.test"], []),  # LIKE's wildcards are plain characters here
        (["--from", "s_am@bad.test"], []),
    ],
)
def test_hold_by_filters_holds_exactly_the_matching_messages(
    config: Path, mixed: list[str], args: list[str], picked: list[int]
) -> None:
    code, done = outcome(config, "hold", *args)
    assert code == EX_OK
    assert done["action"] == "hold" and done["changed"] == [mixed[i] for i in picked]
    assert done["count"] == len(picked) and done["missing"] == []
    held = {m["id"] for m in listing(config)["messages"] if m["held"]}
    assert held == {mixed[i] for i in picked}


def test_several_ids_and_ids_on_stdin_in_one_command(config: Path, mixed: list[str]) -> None:
    code, done = outcome(config, "delete", mixed[0], "-", mixed[1],
                         stdin=f"{mixed[2]}\n  {mixed[3].lower()}\t\n".encode())  # fmt: skip
    assert code == EX_OK
    assert done["changed"] == mixed[:4]
    assert [m["id"] for m in listing(config)["messages"]] == [mixed[4]]


def test_unknown_ids_are_named_and_the_rest_is_done(config: Path, mixed: list[str]) -> None:
    code, out, err = run(config, "queue", "hold", mixed[0], "NOSUCHID", "../etc", mixed[1])
    assert code == EX_NOINPUT
    assert out.splitlines() == ["held 2 message(s)"]
    assert err.splitlines() == ["relaymail: 2 messages are not in the queue: NOSUCHID ../etc"]
    assert {m["id"] for m in listing(config)["messages"] if m["held"]} == set(mixed[:2])


def test_a_filter_that_matches_nothing_is_no_error(config: Path, mixed: list[str]) -> None:
    # As postsuper: a cron job that deletes old mail must not fail when there is none.
    code, out, err = run(config, "queue", "delete", "--older-than", "30d")
    assert (code, out, err) == (EX_OK, "deleted 0 message(s)\n", "")
    code, _, _ = run(config, "queue", "delete", "-", stdin=b"")
    assert code == EX_OK
    assert listing(config)["total"] == len(mixed)


@pytest.mark.parametrize(
    "args",
    [
        [],  # naming nothing never means everything
        ["--all", "--domain", "gmail.test"],
        ["--all", "1K1CBR3JRJT"],
        ["--to", "a@b.test", "--domain", "b.test"],
        ["--older-than", "soon"],
        ["--older-than", "nan"],
        ["--older-than", "0"],
        ["--from", "a\x1b[2J@b.test"],
        ["--from", "@bad..test"],
        ["--domain", "a b"],
    ],
)
def test_a_selection_that_names_nothing_usable_is_a_usage_error(
    config: Path, mixed: list[str], args: list[str]
) -> None:
    code, out, err = run(config, "queue", "delete", *args)
    assert code == EX_USAGE and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert listing(config)["total"] == len(mixed)


def test_all_is_every_message(config: Path, mixed: list[str]) -> None:
    code, done = outcome(config, "delete", "--all")
    assert (code, done["count"]) == (EX_OK, len(mixed))
    assert listing(config)["total"] == 0


def test_one_command_is_one_transaction_with_one_event_per_message(
    tmp_path: Path, config: Path, mixed: list[str]
) -> None:
    code, _ = outcome(config, "hold", "--domain", "gmail.test")
    assert code == EX_OK
    with sqlite3.connect(tmp_path / "queue" / "queue.db") as db:
        events = db.execute("SELECT message_id, action, at FROM admin_event").fetchall()
    assert [e[1] for e in events] == ["hold"] * 3
    assert len({e[2] for e in events}) == 1  # stamped once: one write for the whole command


@pytest.mark.slow
def test_ten_thousand_ids_on_stdin_are_deleted_in_one_command(tmp_path: Path, config: Path) -> None:
    ids = asyncio.run(fill(tmp_path / "queue", [("a@src.test", ("u@dest.test",), 0.0)] * 10_000))
    code, done = outcome(config, "delete", "-", stdin="\n".join(ids).encode())
    assert code == EX_OK and done["count"] == 10_000
    assert listing(config)["total"] == 0


async def record(directory: Path, message_id: str, updates: list[RecipientUpdate]) -> None:
    store = SqliteStore.open(directory)
    try:
        await store.record(updates)
    finally:
        await store.close()


def test_list_shows_recipients_states_and_reasons_as_mailq_does(
    tmp_path: Path, config: Path
) -> None:
    [qid] = asyncio.run(
        fill(tmp_path / "queue", [("a@src.test", ("x@d.test", "y@d.test", "z@d.test"), 0.0)])
    )
    tls = json.dumps({"used": True, "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
                      "verified": False})  # fmt: skip
    asyncio.run(record(tmp_path / "queue", qid, [
        RecipientUpdate(qid, "x@d.test", RecipientState.DEFERRED, 2, 10**10, tls=tls,
                        last_reply="451 4.7.1 greylisted \x1b[31mred\x1b[0m", host="mx.d.test"),
        RecipientUpdate(qid, "y@d.test", RecipientState.DELIVERED, 1, 0.0, last_reply="250 ok"),
    ]))  # fmt: skip
    for program, args in (
        (RELAYMAIL, ["queue", "list"]),
        (str(Path(RELAYMAIL).parent / "mailq"), []),
    ):
        code, out, err = run(config, *args, program=program)
        assert code == EX_OK, err
        lines = out.splitlines()
        assert lines[1].split()[:2] == [qid, str(len(BODY))]
        assert lines[1].endswith("<a@src.test>")
        assert lines[2].split()[:2] == ["deferred", "<x@d.test>"]
        assert (
            "(451 4.7.1 greylisted \\x1b[31mred\\x1b[0m)" in lines[2]
        )  # no escape reaches the tty
        assert lines[3].split() == ["queued", "<z@d.test>"]  # the delivered one is not listed
        assert lines[4] == f"-- 1 of 1 message(s), {len(BODY)} bytes shown"
    [message] = listing(config)["messages"]
    by_address = {r["address"]: r for r in message["to"]}
    assert by_address["x@d.test"]["state"] == "deferred"
    assert by_address["x@d.test"]["reason"].startswith("451 4.7.1 greylisted")
    assert by_address["x@d.test"]["tls"] == {
        "used": True,
        "version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "verified": False,
    }
    assert by_address["y@d.test"]["state"] == "delivered"
    code, out, _ = run(config, "queue", "show", qid, "--json")
    shown = json.loads(out)  # JSON all the way down: no JSON text inside a string
    assert shown["recipients"][0]["tls"]["version"] == "TLSv1.3"
    assert shown["recipients"][2]["tls"] is None


def test_cat_writes_the_message_as_queued(tmp_path: Path, config: Path, mixed: list[str]) -> None:
    qid = mixed[2]
    whole = subprocess.run([RELAYMAIL, "queue", "cat", qid, "-C", str(config)],
                           capture_output=True, check=True).stdout  # fmt: skip
    assert whole == BODY
    headers = subprocess.run([RELAYMAIL, "queue", "cat", "--headers", qid, "-C", str(config)],
                             capture_output=True, check=True).stdout  # fmt: skip
    assert headers == b"Subject: queued\r\nX-Test: 1\r\n"
    body = subprocess.run([RELAYMAIL, "-C", str(config), "queue", "cat", qid, "--body"],
                          capture_output=True, check=True).stdout  # fmt: skip
    assert body == b"line one\r\n.line two\r\n"
    code, out, err = run(config, "queue", "cat", "NOSUCHID")
    assert (code, out) == (EX_NOINPUT, "") and len(err.splitlines()) == 1
    code, _, err = run(config, "queue", "cat", qid, "--headers", "--body")
    assert code == EX_USAGE


def test_retry_says_held_and_without_a_daemon_that_none_runs(
    config: Path, mixed: list[str]
) -> None:
    assert outcome(config, "hold", mixed[0])[0] == EX_OK
    code, out, err = run(config, "queue", "retry", mixed[0])
    assert (code, err) == (EX_OK, "")
    assert out.splitlines() == [f"held, so not retried (relaymail queue release first): {mixed[0]}"]
    assert "due now" not in out
    code, done = outcome(config, "retry", mixed[0])
    assert (done["changed"], done["held"], done["recipients"]) == ([], [mixed[0]], 0)
    # Nothing runs on this queue: the change is kept, and the command says nothing goes yet.
    code, out, err = run(config, "queue", "retry", "--all")
    assert code == EX_UNAVAILABLE
    assert err.splitlines() == [f"relaymail: no relaymail serve runs on {config.parent / 'queue'}:"
                                " nothing is delivered until it starts"]  # fmt: skip
    code, out, _ = run(config, "queue", "stats", "--json")
    stats = json.loads(out)
    assert (stats["daemon_running"], stats["daemon_pid"]) == (False, None)


async def test_a_running_daemon_is_seen_and_a_second_one_on_its_queue_refused(
    tmp_path: Path, config: Path, mixed: list[str]
) -> None:
    port = int(config.read_text().split("127.0.0.1:")[1].split('"')[0])
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        assert daemon.process is not None
        code, out, _ = await asyncio.to_thread(run, config, "queue", "stats", "--json")
        stats = json.loads(out)
        assert (stats["daemon_running"], stats["daemon_pid"]) == (True, daemon.process.pid)
        code, out, err = await asyncio.to_thread(run, config, "queue", "retry", "--all")
        assert code == EX_OK, err
        other = write_toml(tmp_path / "other.toml", {
            "queue": {"directory": tmp_path / "queue"},
            "listener": [{"address": f"127.0.0.1:{free_port()}"}],
        })  # fmt: skip
        code, _, err = await asyncio.to_thread(run, other, "serve")
        assert code == EX_OSERR
        said = [line for line in err.splitlines() if line.startswith("relaymail: ")]
        assert said == [
            f"relaymail: {tmp_path / 'queue'}: relaymail serve"
            f" (pid {daemon.process.pid}) already runs on this queue"
        ]
    finally:
        assert await daemon.stop() == 0
    code, out, _ = run(config, "queue", "stats", "--json")
    assert json.loads(out)["daemon_running"] is False  # the lock went with the process


async def test_a_running_daemon_applies_a_change_to_many_messages(
    smtp_peer: Any, ca_file: Path, tmp_path: Path
) -> None:
    peer = await smtp_peer(Script(rcpt_reply="451 4.7.1 greylisted"))
    port = free_port()
    config = write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "connection_idle_time": 0.2},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": tmp_path / "queue", "retry": ["1h"]},
        "routes": {"dest.test": [hop(peer)], "other.test": [hop(peer)]},
        "listener": [{"address": f"127.0.0.1:{port}"}],
    })  # fmt: skip
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        for rcpt in ("u@dest.test", "w@dest.test", "v@other.test"):
            code, out, err = await run_command("swaks", "--server", f"127.0.0.1:{port}",
                                               "--from", "a@src.test", "--to", rcpt)  # fmt: skip
            assert code == 0, out + err
        await wait_for(lambda: daemon.text().count("status=deferred") == 3)
        code, held = await asyncio.to_thread(outcome, config, "hold", "--domain", "dest.test")
        assert len(held["changed"]) == 2
        await wait_for(lambda: daemon.text().count("action=hold, scope=message") == 2)
        peer.script = Script()  # the greylisting is over
        code, retried = await asyncio.to_thread(outcome, config, "retry", "--all")
        assert code == EX_OK and retried["held"] == held["changed"] and retried["recipients"] == 1
        await wait_for(lambda: delivered(peer) == {"v@other.test"})
        code, released = await asyncio.to_thread(outcome, config, "release", *held["changed"])
        assert released["changed"] == held["changed"]
        assert (await asyncio.to_thread(outcome, config, "retry", "--domain", "dest.test"))[0] == 0
        await wait_for(lambda: delivered(peer) == {"v@other.test", "u@dest.test", "w@dest.test"})
    finally:
        assert await daemon.stop() == 0
    assert listing(config)["total"] == 0
    log = daemon.text()
    for qid in held["changed"]:  # held mail went only once it was released
        lines = log.splitlines()
        released = next(i for i, line in enumerate(lines) if f"{qid}: action=release" in line)
        sent = next(i for i, line in enumerate(lines)
                    if f"{qid}: to=" in line and "status=sent" in line)  # fmt: skip
        assert released < sent


def delivered(peer: Any) -> set[str]:
    return {r for t in peer.transactions if t.data for r in t.recipients}


async def wait_for(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
