"""sendmail's own reading of the configuration agrees with the daemon's, and stays light."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relaymail.config import load_config
from relaymail.config_values import DEFAULT_MAX_MESSAGE_SIZE
from relaymail.errors import ConfigError
from relaymail.sendmail_settings import submit_settings

AGREE = [
    "",
    '[queue]\ndirectory = "/var/spool/x"\n',
    '[delivery]\nhelo_name = "MX.Example.ORG."\n',
    '[delivery]\nhelo_name = "mx.example.org"\n[local]\ndomain = "example.org"\n',
    '[[listener]]\naddress = "127.0.0.1:2525"\nmax_message_size = "10M"\n'
    '[[listener]]\naddress = "127.0.0.1:2526"\nmax_message_size = 52428800\n',
    '[[listener]]\naddress = "127.0.0.1:2525"\n',
]


@pytest.mark.parametrize("text", AGREE)
def test_sendmail_reads_what_the_daemon_reads(tmp_path: Path, text: str) -> None:
    file = tmp_path / "relaymail.toml"
    file.write_text(text)
    config = load_config(file)
    limits = [t.get("max_message_size") for t in config.listener_tables]
    settings = submit_settings(str(file))
    assert (settings.queue_directory, settings.local_domain, settings.max_message_size) == (
        str(config.queue.directory),
        config.local.domain,
        max(config.listeners(), key=lambda s: s.max_message_size).max_message_size
        if any(limits)
        else DEFAULT_MAX_MESSAGE_SIZE,
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[queue\n", "relaymail.toml"),
        ('[queue]\ndirectory = ""\n', "queue.directory"),
        ("queue = 3\n", "queue"),
        ('[local]\ndomain = "bad domain"\n', "local.domain"),
        ('[delivery]\nhelo_name = "a\\nb"\n', "delivery.helo_name"),
        ('[[listener]]\nmax_message_size = "lots"\n', "listener[0].max_message_size"),
        ('listener = "x"\n', "listener"),
    ],
)
def test_a_mistake_in_what_sendmail_reads_is_named(tmp_path: Path, text: str, key: str) -> None:
    file = tmp_path / "relaymail.toml"
    file.write_bytes(text.encode())
    with pytest.raises(ConfigError) as caught:
        submit_settings(str(file))
    assert caught.value.key.endswith(key)


def test_a_mistake_elsewhere_is_the_daemons_to_name(tmp_path: Path) -> None:
    file = tmp_path / "relaymail.toml"
    file.write_text('[tls.policy]\n"bank.example" = "mandatory"\n[local]\ndomain = "example.org"\n')
    with pytest.raises(ConfigError):
        load_config(file)
    assert submit_settings(str(file)).local_domain == "example.org"


# What sendmail must not import: the daemon's configuration and what it stands on.
HEAVY = {"relaymail.config", "dataclasses", "pathlib", "socket", "ssl", "asyncio", "email"}


def test_sendmail_start_up_loads_none_of_the_daemons_machinery(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    (queue / "maildrop").mkdir(parents=True)
    config = tmp_path / "relaymail.toml"
    config.write_text(f'[queue]\ndirectory = "{queue}"\n[local]\ndomain = "example.org"\n')
    probe = (
        "import sys\n"
        "from relaymail.commands.sendmail import main\n"
        f"code = main(['-C', {str(config)!r}, 'root'])\n"
        f"print(code, sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}\n"
        f"      or m in {sorted(HEAVY)!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], input=b"Subject: s\n\nbody\n", capture_output=True,
        env={**os.environ, "RELAYMAIL_CONFIG": ""}, check=True,
    )  # fmt: skip
    assert done.stdout.decode().split(" ", 1) == ["0", "[]\n"]
    assert len(os.listdir(queue / "maildrop")) == 1


# Everything the installed `sendmail` script loads beyond the interpreter's own start-up,
# once `relaymail check` has kept its settings beside the file: no re, typing, enum,
# tomllib, collections or contextlib (each one a large share of its start-up).
SENDMAIL_IMPORTS = {
    "__future__", "itertools", "pwd",
    "relaymail", "relaymail.address", "relaymail.canonical", "relaymail.commands",
    "relaymail.commands.exits", "relaymail.commands.input", "relaymail.commands.sendmail",
    "relaymail.config_file", "relaymail.config_values", "relaymail.errors", "relaymail.headers",
    "relaymail.postdrop", "relaymail.sendmail_settings",
}  # fmt: skip
SENDMAIL = str(Path(sys.executable).with_name("sendmail"))
RELAYMAIL = str(Path(sys.executable).with_name("relaymail"))


def _imported(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> tuple[int, set[str]]:
    """Exit status and the modules a Python program imported (-X importtime's list)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], input=stdin, capture_output=True, env=env
    )
    lines = done.stderr.decode().splitlines()
    return done.returncode, {
        line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")
    } - {"package"}  # the header line's "imported package"


def test_sendmail_imports_only_its_own_light_modules(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    (queue / "maildrop").mkdir(parents=True)
    config = tmp_path / "relaymail.toml"
    config.write_text(
        f'[queue]\ndirectory = "{queue}"\n[local]\ndomain = "example.org"\n'
        '[[listener]]\naddress = "127.0.0.1:2525"\nmax_message_size = "10M"\n'
    )
    env = {**os.environ, "RELAYMAIL_CONFIG": str(config)}
    subprocess.run([RELAYMAIL, "check"], env=env, capture_output=True, check=True)
    _, start_up = _imported(["-c", "pass"], env)
    argv = [SENDMAIL, "-f", "a@example.org", "u@x.test"]
    code, loaded = _imported(argv, env, b"Subject: s\n\nbody\n")
    assert code == 0
    assert loaded - start_up == SENDMAIL_IMPORTS
    assert len(os.listdir(queue / "maildrop")) == 1
