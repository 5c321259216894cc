"""Every command with hostile or broken input, as a real process: one line, a sysexits code.

The codes are sysexits.h: 64 usage, 65 data, 66 no input, 74 I/O error. A
traceback, exit 1 or several lines of output is a failure whatever the input.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from relaymail.inbound.pickup import open_maildrop
from relaymail.message import Envelope
from relaymail.queue.sqlite import SqliteStore
from tests.integration.daemon_process import RELAYMAIL, write_toml

SENDMAIL = str(Path(RELAYMAIL).with_name("sendmail"))

EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CANTCREAT, EX_IOERR = 64, 65, 66, 73, 74
UNDECODABLE = os.fsdecode(b"\xff")  # what argv holds for bytes that are not UTF-8


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test"},
        "queue": {"directory": tmp_path / "queue"},
    })  # fmt: skip
    asyncio.run(_fill_queue(tmp_path / "queue", 1))
    open_maildrop(tmp_path / "queue")
    return path


async def _fill_queue(directory: Path, count: int) -> None:
    store = SqliteStore.open(directory)
    try:
        envelope = Envelope("s" * 200 + "@src.test", ("u@dest.test",))
        await asyncio.gather(*(store.enqueue(envelope, b"Subject: x\r\n\r\nx\r\n", 0.0)
                               for _ in range(count)))  # fmt: skip
    finally:
        await store.close()


def run(*args: str, stdin: bytes = b"", close: tuple[int, ...] = ()) -> tuple[int, str]:
    """Run relaymail; `close` names file descriptors (0, 1) the child starts without."""

    def closing() -> None:
        for fd in close:
            os.close(fd)

    process = subprocess.run(
        [RELAYMAIL, *args], input=None if 0 in close else stdin,
        stdout=None if 1 in close else subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=closing, timeout=60,
    )  # fmt: skip
    return process.returncode, process.stderr.decode(errors="replace")


def assert_one_line(err: str) -> None:
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["list", "--limit", "1" + "0" * 30], EX_USAGE),
        (["list", "--limit", "0"], EX_USAGE),
        (["list", "--limit", "²"], EX_USAGE),
        (["list", "--offset", "-1"], EX_USAGE),
        (["list", "--offset", "9" * 5000], EX_USAGE),
        (["show", ""], EX_NOINPUT),
        (["show", "x" * 5000], EX_NOINPUT),
        (["show", UNDECODABLE], EX_NOINPUT),
        (["hold", "0000000000\x01"], EX_NOINPUT),
        (["release", "ZZZZZZZZZZZ"], EX_NOINPUT),
        (["delete", "../../etc"], EX_NOINPUT),
        (["retry", UNDECODABLE], EX_NOINPUT),
    ],
)
def test_queue_commands_with_junk_arguments(config: Path, args: list[str], code: int) -> None:
    returned, err = run("queue", "--config", str(config), *args)
    assert returned == code
    assert_one_line(err)


@pytest.mark.parametrize(
    "domain", ["", "a..b", "x" * 300, ("a" * 64) + ".test", UNDECODABLE, "a b", "[1.2.3.4]",
               "-a.test", "u@a.test", "a\x01.test"],
)  # fmt: skip
@pytest.mark.parametrize("command", [["tls", "forget"], ["tlsrpt", "show"], ["probe"]])
def test_domain_arguments_must_be_domains(config: Path, command: list[str], domain: str) -> None:
    returned, err = run(command[0], "--config", str(config), *command[1:], domain)
    assert returned == EX_USAGE
    assert_one_line(err)


def test_tls_forget_takes_an_international_domain_in_its_lookup_form(config: Path) -> None:
    process = subprocess.run([RELAYMAIL, "tls", "--config", str(config), "forget", "Bücher.DE."],
                             capture_output=True, timeout=60)  # fmt: skip
    assert process.returncode == 0
    assert process.stdout.decode().split(":")[0] == "xn--bcher-kva.de"


@pytest.mark.parametrize(
    ("stdin", "close", "code"),
    [(b"", (), EX_USAGE), (b"\xff\xfe\n", (), EX_DATAERR), (b"p" * 5000 + b"\n", (), EX_DATAERR),
     (b"", (0,), EX_NOINPUT)],
)  # fmt: skip
def test_passwd_with_bad_input(stdin: bytes, close: tuple[int, ...], code: int) -> None:
    returned, err = run("passwd", stdin=stdin, close=close)
    assert returned == code
    assert_one_line(err)


@pytest.mark.parametrize(
    ("args", "close", "code"),
    [
        (["--from", f"a{UNDECODABLE}@src.test", "--to", "u@dest.test", "-"], (), EX_USAGE),
        (["--from", "a@src.test", "--to", "u@dest.test\x01", "-"], (), EX_USAGE),
        (["--from", "a@src.test", "--to", "u@dest.test", "/nonexistent/msg"], (), EX_NOINPUT),
        (["--from", "a@src.test", "--to", "u@dest.test", "/"], (), EX_NOINPUT),
        (["--from", "a@src.test", "--to", "u@dest.test", "-"], (0,), EX_NOINPUT),
    ],
)
def test_deliver_with_bad_addresses_or_input(
    config: Path, args: list[str], close: tuple[int, ...], code: int
) -> None:
    returned, err = run("deliver", "--config", str(config), *args, close=close)
    assert returned == code
    assert_one_line(err)


def _address_space_cap() -> None:
    cap = 1 << 30  # 1 GiB: /dev/zero read whole would hit it at once
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_deliver_dev_zero_stops_at_the_size_limit(config: Path) -> None:
    process = subprocess.run(
        [RELAYMAIL, "deliver", "--config", str(config), "--from", "a@src.test",
         "--to", "u@dest.test", "/dev/zero"],
        capture_output=True, preexec_fn=_address_space_cap, timeout=60,
    )  # fmt: skip
    err = process.stderr.decode()
    assert process.returncode == EX_DATAERR
    assert_one_line(err)


@pytest.mark.parametrize("args", [["-z"], ["-bs"], ["-f"], ["-F", "a\nb", "u@dest.test"]])
def test_sendmail_usage_errors(config: Path, args: list[str]) -> None:
    returned, err = run("sendmail", "-C", str(config), *args)
    assert returned == EX_USAGE
    assert_one_line(err)


def test_sendmail_with_stdin_closed(config: Path) -> None:
    returned, err = run("sendmail", "-C", str(config), "u@dest.test", close=(0,))
    assert returned == EX_NOINPUT
    assert_one_line(err)


@pytest.mark.parametrize("json", [[], ["--json"]])
def test_queue_list_to_a_closed_or_full_stdout(config: Path, json: list[str]) -> None:
    returned, err = run("queue", "--config", str(config), *json, "list", close=(1,))
    assert returned == EX_IOERR
    assert_one_line(err)
    with open("/dev/full", "wb") as full:
        process = subprocess.run([RELAYMAIL, "queue", "--config", str(config), *json, "list"],
                                 stdout=full, stderr=subprocess.PIPE, timeout=60)  # fmt: skip
    assert process.returncode == EX_IOERR
    assert_one_line(process.stderr.decode())


@pytest.mark.parametrize(
    "argv",
    [[RELAYMAIL, "--version"], [RELAYMAIL, "--help"], [RELAYMAIL, "queue", "--help"],
     [SENDMAIL, "--help"], [SENDMAIL, "-C", "{config}", "-bv", "u@dest.test"],
     [SENDMAIL, "-C", "{config}", "-bi"]],
)  # fmt: skip
def test_what_parsing_and_sendmails_modes_print_fails_as_output_fails(
    config: Path, argv: list[str]
) -> None:
    command = [arg.format(config=config) for arg in argv]
    with open("/dev/full", "wb") as full:
        process = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert process.returncode == EX_IOERR
    assert_one_line(process.stderr.decode())


@pytest.mark.parametrize("json", [[], ["--json"]])
def test_queue_list_into_a_reader_that_stops_early(
    config: Path, tmp_path: Path, json: list[str]
) -> None:
    # Far more than a pipe buffer (64 KiB), so the writer meets the closed pipe.
    asyncio.run(_fill_queue(tmp_path / "queue", 600))
    process = subprocess.Popen(
        [RELAYMAIL, "queue", "--config", str(config), *json, "list", "--limit", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(1)  # `| head -c 1`
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(60) == EX_IOERR
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err == ""  # a reader that stopped reading asked for no explanation


@pytest.mark.parametrize("command", [["mailq"], ["relaymail", "queue", "list"]])
def test_a_queue_listing_by_a_user_who_may_not_open_the_queue_says_whom_to_run_as(
    command: list[str],
) -> None:
    top = Path(tempfile.mkdtemp(prefix="relaymail-mailq-"))
    try:
        top.chmod(0o755)
        queue = top / "queue"
        asyncio.run(_fill_queue(queue, 1))
        os.chown(queue, 1, 1)  # the daemon's user ("daemon" here), as install-system makes it
        queue.chmod(0o755)
        config = write_toml(top / "relaymail.toml", {"queue": {"directory": queue}})
        program = str(Path(RELAYMAIL).with_name(command[0]))
        process = subprocess.run(
            ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
             program, *command[1:], "-C", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        shutil.rmtree(top)
    assert process.returncode == EX_CANTCREAT  # the queue's problem "cannot write"
    assert_one_line(process.stderr)
    assert process.stderr == (
        f"relaymail: {queue}: permission denied: not writable by nobody (uid 65534);"
        " run as root or daemon (the queue's owner)\n"
    )


if sys.platform != "linux":  # pragma: no cover - /dev/full and RLIMIT_AS as on Linux
    pytest.fail("these tests need Linux", pytrace=False)
