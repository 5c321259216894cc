"""Local names and aliases end to end: cron's sendmail call, SMTP, newaliases, serve."""

from __future__ import annotations

import getpass
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command
from tests.integration.test_daemon import make_config, start_daemon, swaks, wait_for
from tests.peers.smtp_server import Script, SMTPPeer

pytestmark = pytest.mark.timeout(90)

ALIASES = (
    "# as on a Debian system\n"
    "postmaster: root\n"
    "root: admin@outside.test,\n"
    "      ops\n"
    "ops: oncall@outside.test\n"
)


def aliased_config(
    tmp_path: Path, port: int, ca_file: Path, peer: SMTPPeer, relay_networks=("127.0.0.0/8",),
    processes: int | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    aliases = tmp_path / "aliases"
    aliases.write_text(ALIASES)
    server = {} if processes is None else {"server": {"processes": processes}}
    config = make_config(
        tmp_path, port, ca_file, {"outside.test": [hop(peer)]},
        local={"domain": "example.org", "aliases": aliases},
        listener=[{"address": f"127.0.0.1:{port}", "relay_networks": list(relay_networks)}],
        **server,
    )  # fmt: skip
    return config, aliases


async def aliased_daemon(
    smtp_peer, ca_file: Path, tmp_path: Path, **settings
) -> tuple[SMTPPeer, Path, Path, Daemon]:
    """A sink for outside.test, and serve with ALIASES for example.org in front of it."""
    peer = await smtp_peer(Script())
    port = free_port()
    config, aliases = aliased_config(tmp_path, port, ca_file, peer, **settings)
    return peer, config, aliases, await start_daemon(tmp_path, config, port)


def delivered(peer: SMTPPeer) -> list[set[str]]:
    return [set(t.recipients) for t in peer.transactions if t.recipients]


async def test_cron_mail_to_root_reaches_the_aliased_addresses(smtp_peer, ca_file, tmp_path):
    peer, config, _, daemon = await aliased_daemon(smtp_peer, ca_file, tmp_path)
    try:
        message = b"To: root\nSubject: Cron <root@host> run-parts /etc/cron.daily\n\nok\n"
        code, _, err = await run_command(
            RELAYMAIL, "sendmail", "-C", str(config),
            "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root", stdin=message,
        )  # fmt: skip
        assert code == 0, err
        await wait_for(lambda: delivered(peer))
    finally:
        assert await daemon.stop() == 0
    assert delivered(peer) == [{"admin@outside.test", "oncall@outside.test"}]
    [transaction] = [t for t in peer.transactions if t.recipients]
    assert transaction.mail_from == f"{getpass.getuser()}@example.org"  # local.domain


async def test_smtp_rcpt_to_an_alias_is_accepted_from_anyone_and_expanded(
    smtp_peer, ca_file, tmp_path
):
    # Loopback is not a relay network here: only our aliases are accepted.
    peer, _, _, daemon = await aliased_daemon(
        smtp_peer, ca_file, tmp_path, relay_networks=["10.0.0.0/8"]
    )
    try:
        code, out = await swaks(daemon.port, "--from", "a@src.test", "--to", "ROOT@Example.org")
        assert code == 0, out
        code, out = await swaks(daemon.port, "--from", "a@src.test", "--to", "ops")  # a bare name
        assert code == 0, out
        code, out = await swaks(daemon.port, "--from", "a@src.test", "--to", "nobody@example.org")
        assert "554 5.7.1" in out
        code, out = await swaks(daemon.port, "--from", "a@src.test", "--to", "nobody")
        assert "554 5.7.1" in out
        await wait_for(lambda: len(delivered(peer)) == 2)
    finally:
        assert await daemon.stop() == 0
    assert sorted(delivered(peer), key=len) == [
        {"oncall@outside.test"},
        {"admin@outside.test", "oncall@outside.test"},
    ]
    assert "orig_to=<ROOT@Example.org>, to=<admin@outside.test>,<oncall@outside.test>" in (
        daemon.text()
    )


async def test_an_edited_aliases_file_applies_to_the_next_message(smtp_peer, ca_file, tmp_path):
    # One process: each worker keeps its own last good copy (README, Local names and aliases).
    peer, _, aliases, daemon = await aliased_daemon(smtp_peer, ca_file, tmp_path, processes=1)
    try:
        aliases.write_text("root: new@outside.test\n")
        code, out = await swaks(daemon.port, "--from", "a@src.test", "--to", "root@example.org")
        assert code == 0, out
        await wait_for(lambda: delivered(peer))
        # A broken edit keeps the last good aliases; SIGHUP refuses it, naming the line.
        aliases.write_text("root: new@outside.test\nbad: |/bin/sh\n")
        await daemon.signal(signal.SIGHUP)
        await wait_for(lambda: "reload refused" in daemon.text())
        code, out = await swaks(daemon.port, "--from", "a@src.test", "--to", "root@example.org")
        assert code == 0, out
        await wait_for(lambda: len(delivered(peer)) == 2)
    finally:
        assert await daemon.stop() == 0
    assert delivered(peer) == [{"new@outside.test"}, {"new@outside.test"}]
    assert "line 2: '|/bin/sh': pipes to commands are not supported" in daemon.text()


async def test_serve_stops_on_a_broken_aliases_file_naming_the_line(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    port = free_port()
    config, aliases = aliased_config(tmp_path, port, ca_file, peer)
    aliases.write_text(ALIASES + "lists: :include:/etc/mail/lists\n")
    daemon = Daemon(config, port, tmp_path / "serve.log")
    with pytest.raises(RuntimeError, match="serve exited 78"):
        await daemon.start()
    assert f"local.aliases: {aliases}: line 6: ':include:/etc/mail/lists'" in daemon.text()


@pytest.mark.parametrize("command", [("newaliases",), ("sendmail", "-bi")])
async def test_newaliases_and_sendmail_bi_check_the_file(command, ca_file, tmp_path):
    config = make_config(tmp_path, free_port(), ca_file, {}, local={"domain": "example.org"})
    code, out, err = await run_command(RELAYMAIL, *command, "-C" if "-bi" in command else
                                       "--config", str(config))  # fmt: skip
    assert code == 0 and "nothing to check" in out, err  # none configured: package scripts pass

    aliases = tmp_path / "aliases"
    aliases.write_text(ALIASES)
    config = make_config(tmp_path, free_port(), ca_file, {},
                         local={"domain": "example.org", "aliases": aliases})  # fmt: skip
    option = "-C" if "-bi" in command else "--config"
    code, out, err = await run_command(RELAYMAIL, *command, option, str(config))
    assert (code, out.strip()) == (0, f"{aliases}: 3 aliases for example.org"), err

    aliases.write_text("a: b\nb: a\nc: |cmd\nd\n")
    code, out, err = await run_command(RELAYMAIL, *command, option, str(config))
    assert code == 65, err
    lines = err.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == ["line 1", "line 3", "line 4"]
    assert "alias loop: a -> b -> a" in lines[0] and "Traceback" not in err


async def test_newaliases_on_a_missing_file_is_no_input(tmp_path):
    code, _, err = await run_command(RELAYMAIL, "newaliases", str(tmp_path / "missing"))
    assert code == 66 and err.count("\n") == 1 and "cannot read" in err


async def test_a_bare_sender_and_recipient_are_qualified_by_sendmail(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    port = free_port()
    config, _ = aliased_config(tmp_path, port, ca_file, peer)
    # A daemon has run once (it makes the maildrop); the file then waits for the next start.
    assert await (await start_daemon(tmp_path, config, port)).stop() == 0
    code, _, err = await run_command(RELAYMAIL, "sendmail", "-C", str(config), "-f", "cron",
                                     "-t", stdin=b"To: ops, x@outside.test\n\nhi\n")  # fmt: skip
    assert code == 0, err
    daemon = await start_daemon(tmp_path, config, port)  # picks up what is queued
    try:
        await wait_for(lambda: delivered(peer))
    finally:
        assert await daemon.stop() == 0
    [transaction] = [t for t in peer.transactions if t.recipients]
    assert transaction.mail_from == "cron@example.org"
    assert set(transaction.recipients) == {"oncall@outside.test", "x@outside.test"}
