"""The command line as habits type it: global options anywhere, --version, `check`.

Real processes only; `check` and `serve` are run on the same broken set-ups
and must name the same problems.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import trustme

from relaymail.inbound.pickup import open_maildrop
from relaymail.message import Envelope
from relaymail.queue.sqlite import SqliteStore
from tests.integration.daemon_process import RELAYMAIL, free_port, write_toml

pytestmark = pytest.mark.timeout(120)

EX_OK, EX_CANTCREAT, EX_CONFIG = 0, 73, 78


def run(*args: str) -> tuple[int, str, str]:
    process = subprocess.run([RELAYMAIL, *args], capture_output=True, timeout=60)
    return process.returncode, process.stdout.decode(), process.stderr.decode()


def said(err: str) -> list[str]:
    """The lines a command says itself (serve also logs)."""
    return [line for line in err.splitlines() if line.startswith("relaymail: ")]


def config_file(tmp_path: Path, **sections: Any) -> Path:
    tables: dict[str, Any] = {
        "delivery": {"helo_name": "relay.relaymail.test"},
        "queue": {"directory": tmp_path / "queue"},
        "listener": [{"address": f"127.0.0.1:{free_port()}"}],
    }
    return write_toml(tmp_path / "relaymail.toml", {**tables, **sections})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = config_file(tmp_path)

    async def one_message() -> None:
        store = SqliteStore.open(tmp_path / "queue")
        await store.enqueue(Envelope("a@src.test", ("u@dest.test",)), b"Subject: x\r\n\r\n", 0.0)
        await store.close()

    asyncio.run(one_message())
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["queue", "list", "--json", "--config", "{config}"],
        ["queue", "list", "--config", "{config}", "--json"],
        ["queue", "--json", "list", "-C", "{config}"],
        ["--json", "queue", "list", "--config", "{config}"],
        ["-C", "{config}", "--json", "queue", "list"],
        ["--log-level", "DEBUG", "queue", "-C", "{config}", "list", "--log-json", "--json"],
    ],
)
def test_global_options_are_taken_anywhere_on_the_line(config: Path, argv: list[str]) -> None:
    code, out, err = run(*(a.replace("{config}", str(config)) for a in argv))
    assert code == EX_OK
    assert json.loads(out)["total"] == 1
    if "--log-json" in argv:
        assert all(json.loads(line)["level"] for line in err.splitlines())
    else:
        assert err == ""


def test_an_option_given_twice_keeps_the_last_and_one_before_the_command_survives_it(
    tmp_path: Path, config: Path
) -> None:
    # The subcommand's parser must not reset what the main parser already took.
    (tmp_path / "elsewhere").mkdir()
    other = config_file(tmp_path / "elsewhere")
    code, out, _ = run("-C", str(config), "queue", "stats", "--json")
    assert json.loads(out)["messages"] == 1
    code, out, _ = run("-C", str(config), "queue", "stats", "--json", "-C", str(other))
    assert code == 66  # the last -C names a configuration without a queue


@pytest.mark.parametrize(
    "argv",
    [
        ["newaliases", "-C", "{config}"],
        ["tls", "forget", "dest.test", "-C", "{config}"],
        ["tls", "-C", "{config}", "forget", "dest.test", "--log-level", "WARNING"],
        ["tlsrpt", "show", "--config", "{config}", "--json"],
        ["check", "-C", "{config}", "--log-json"],
    ],
)
def test_every_command_takes_the_global_options(config: Path, argv: list[str]) -> None:
    code, _, err = run(*(a.replace("{config}", str(config)) for a in argv))
    assert code == EX_OK, err
    assert "unrecognized" not in err


async def test_serve_takes_c_and_log_json_after_its_name(tmp_path: Path, config: Path) -> None:
    port = int(config.read_text().split("127.0.0.1:")[1].split('"')[0])
    open_maildrop(tmp_path / "queue")
    process = await asyncio.create_subprocess_exec(
        RELAYMAIL, "serve", "-C", str(config), "--log-json", "--log-level", "DEBUG",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            while True:  # every line JSON, up to the one that says mail is accepted
                entry = json.loads(await process.stderr.readline())
                if entry["message"].startswith("queue ") and "waiting" in entry["message"]:
                    break
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except ConnectionRefusedError:  # between the log line and the accepting
                    await asyncio.sleep(0.05)
        writer.close()
    finally:
        process.terminate()
        await process.wait()
    assert process.returncode == EX_OK


def test_version_is_the_installed_package_version() -> None:
    code, out, err = run("--version")
    assert (code, out, err) == (EX_OK, f"relaymail {version('relaymail')}\n", "")


def test_check_passes_what_serve_would_start_with(config: Path) -> None:
    code, out, err = run("check", "-C", str(config))
    assert (code, err) == (EX_OK, "")
    assert out == f"{config}: serve would start (1 listener(s), queue {config.parent / 'queue'})\n"
    code, out, _ = run("check", "--json", "-C", str(config))
    assert json.loads(out) == {"config": str(config), "ok": True, "problems": []}


@pytest.fixture
def broken(tmp_path: Path, tls_ca: trustme.CA) -> Path:
    """A configuration with five mistakes, none of which stops the reading of the file."""
    certs = tmp_path / "tls"
    certs.mkdir()
    one, two = tls_ca.issue_cert("one.test"), tls_ca.issue_cert("two.test")
    one.cert_chain_pems[0].write_to_path(str(certs / "one.pem"))
    one.private_key_pem.write_to_path(str(certs / "one.key"))
    two.private_key_pem.write_to_path(str(certs / "two.key"))
    (tmp_path / "aliases").write_text("root: |/bin/sh\nann: bob\nbob: ann\n")
    return config_file(
        tmp_path,
        listener=[
            {"address": f"127.0.0.1:{free_port()}", "tls_cert_file": certs / "one.pem",
             "tls_key_file": certs / "two.key"},
            {"address": f"127.0.0.1:{free_port()}", "tls_cert_file": certs / "missing.pem",
             "tls_key_file": certs / "one.key"},
            {"address": f"127.0.0.1:{free_port()}", "mode": "submission",
             "tls_cert_file": certs / "one.pem", "tls_key_file": certs / "one.key"},
        ],
        local={"aliases": tmp_path / "aliases"},
    )  # fmt: skip


EXPECTED_KEYS = [
    "listener[0].tls_key_file",  # the key of another certificate
    "listener[1].tls_cert_file",  # no such file
    "listener[2]",  # AUTH without [users]
    "local.aliases",  # a |command target
    "local.aliases",  # a loop
]


def test_check_names_every_problem_on_its_own_line(broken: Path) -> None:
    code, out, err = run("check", "-C", str(broken))
    assert (code, out) == (EX_CONFIG, "")
    lines = err.splitlines()
    assert [line.split(": ")[1] for line in lines] == EXPECTED_KEYS, err
    code, out, _ = run("--json", "check", "-C", str(broken))
    report = json.loads(out)
    assert code == EX_CONFIG and report["ok"] is False
    assert [p["key"] for p in report["problems"]] == EXPECTED_KEYS


def test_serve_refuses_with_the_same_problems_as_check(broken: Path) -> None:
    code, _, err = run("serve", "-C", str(broken))
    assert code == EX_CONFIG
    check = run("check", "-C", str(broken))[2].splitlines()
    assert said(err) == [line.replace("relaymail: ", "relaymail: configuration error: ", 1)
                         for line in check]  # fmt: skip


def test_a_queue_the_service_user_cannot_write_is_found_before_the_start(tmp_path: Path) -> None:
    # Made by root, 0755: root could write it, the service user nobody cannot.
    queue = Path("/tmp") / f"relaymail-check-{tmp_path.name}"
    queue.mkdir(mode=0o755)
    try:
        config = config_file(tmp_path, queue={"directory": queue}, server={"user": "nobody"})
        code, out, err = run("check", "-C", str(config))
        assert (code, out) == (EX_CONFIG, "")
        assert err.splitlines() == [
            f"relaymail: queue.directory: {queue}: not writable by nobody (uid 65534)"
        ]
        code, _, err = run("serve", "-C", str(config))
        assert code == EX_CANTCREAT
        assert said(err) == [
            f"relaymail: queue.directory: {queue}: not writable by nobody (uid 65534)"
        ]
        queue.chmod(0o777)  # now nobody may, through directories anyone may enter
        assert run("check", "-C", str(config))[0] == EX_OK
    finally:
        queue.rmdir()


def test_a_queue_database_that_is_no_queue_is_found_by_check(tmp_path: Path) -> None:
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "queue.db").write_bytes(b"not a database at all, but long enough")
    config = config_file(tmp_path)
    code, _, err = run("check", "-C", str(config))
    assert code == EX_CONFIG
    assert err.splitlines() == [
        f"relaymail: queue.directory: {tmp_path / 'queue' / 'queue.db'}: not an SQLite database"
    ]


def test_check_refuses_a_smarthost_password_others_may_read(tmp_path: Path) -> None:
    secret = tmp_path / "smarthost.secret"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    config = config_file(tmp_path, routes={"*": ["smtps://smtp.provider.test:465"]})
    with config.open("a") as toml:
        toml.write(f'[relay_auth."smtp.provider.test"]\nusername = "app"\n'
                   f'password_file = "{secret}"\n')  # fmt: skip
    code, out, err = run("check", "-C", str(config))
    assert (code, out) == (EX_CONFIG, "")
    [line] = err.splitlines()
    key = 'relay_auth."smtp.provider.test".password_file'
    assert line.startswith(f"relaymail: configuration error: {key}: ")
    assert "hunter2" not in err
    secret.chmod(0o600)
    assert run("check", "-C", str(config))[0] == EX_OK


def test_a_link_where_the_daemon_lock_goes_stops_check_and_serve(tmp_path: Path) -> None:
    (tmp_path / "queue").mkdir()
    (tmp_path / "queue" / "daemon.pid").symlink_to("/etc/passwd")
    config = config_file(tmp_path)
    line = f"relaymail: queue.directory: {tmp_path / 'queue' / 'daemon.pid'}: not a regular file"
    code, _, err = run("check", "-C", str(config))
    assert (code, err.splitlines()) == (EX_CONFIG, [line])
    code, _, err = run("serve", "-C", str(config))
    assert (code, said(err)) == (EX_CANTCREAT, [line])
    assert Path("/etc/passwd").read_text().startswith("root:")  # untouched
