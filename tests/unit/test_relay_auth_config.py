"""[routes] schemes and [relay_auth] tables: typed values, and refusals naming the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from relaymail.config import Config, HostPort, Scheme, parse_config
from relaymail.delivery.auth import LoginFailureLog, LoginRefused, credentialed_policy
from relaymail.delivery.plan import HostPolicy
from relaymail.delivery.results import AttemptResult
from relaymail.errors import ConfigError
from relaymail.smtp.sasl import Mechanism, choose, exchange
from relaymail.tls.policy import Level

HOST = "smtp.provider.example"
KEY = f'relay_auth."{HOST}"'


def secret(tmp_path: Path, content: bytes = b"pw\n", mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def config(route: str = f"smtps://{HOST}:465", **auth: Any) -> Config:
    tables = {"routes": {"*": [route]}}
    return parse_config({**tables, "relay_auth": {HOST: auth}} if auth else tables)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (f"smtps://{HOST}:465", HostPort(HOST, 465, Scheme.SMTPS)),
        (f"SMTPS://{HOST}", HostPort(HOST, 465, Scheme.SMTPS)),
        (f"smtp://{HOST}:587", HostPort(HOST, 587, Scheme.SMTP)),
        (f"{HOST}:587", HostPort(HOST, 587, Scheme.SMTP)),
        (f"smtp://{HOST}", HostPort(HOST, 25, Scheme.SMTP)),
        ("smtps://[::1]:4650", HostPort("::1", 4650, Scheme.SMTPS)),
    ],
)
def test_route_schemes(route: str, expected: HostPort) -> None:
    assert config(route).routes["*"] == (expected,)


@pytest.mark.parametrize("route", ["lmtp://h:24", "smtps://", "smtps://h:0", "https://h"])
def test_bad_routes_name_the_key(route: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(route)
    assert error.value.key == 'routes."*"'


def test_credentials_are_read_at_start_without_one_trailing_newline(tmp_path: Path) -> None:
    path = secret(tmp_path, b"pass word\n")
    auth = config(username="app@example.org", password_file=str(path)).relay_auth[HOST]
    assert (auth.username, auth.password) == ("app@example.org", "pass word")
    assert auth.tls is Level.VERIFY
    assert "pass word" not in repr(auth)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_password_file_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = secret(tmp_path, mode=mode)
    with pytest.raises(ConfigError) as error:
        config(username="u", password_file=str(path))
    assert error.value.key == f"{KEY}.password_file"


@pytest.mark.parametrize(
    "content", [b"", b"\n", b"two\nlines\n", b"nul\0inside", b"\xff\xfe not utf-8"]
)
def test_unusable_password_contents_are_refused_without_quoting_them(
    tmp_path: Path, content: bytes
) -> None:
    path = secret(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        config(username="u", password_file=str(path))
    assert error.value.key == f"{KEY}.password_file"
    assert "lines" not in error.value.reason and "inside" not in error.value.reason


def test_missing_and_non_regular_password_files(tmp_path: Path) -> None:
    for target in (tmp_path / "absent", tmp_path):
        with pytest.raises(ConfigError) as error:
            config(username="u", password_file=str(target))
        assert error.value.key == f"{KEY}.password_file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError):
        config(username="u", password_file=str(fifo))  # would block the start on open()


@pytest.mark.parametrize(
    ("auth", "key"),
    [
        ({"password_file": "x"}, f"{KEY}.password_file"),  # checked before username is missed
        ({"username": "u", "tls": "may"}, f"{KEY}.tls"),
        ({"username": "u", "tls": "none"}, f"{KEY}.tls"),
        ({"username": "u", "passwd": "x"}, f"{KEY}.passwd"),
        ({"username": "u"}, f"{KEY}.password_file"),
        ({"username": "line\nbreak"}, f"{KEY}.username"),
    ],
)
def test_relay_auth_table_errors_name_the_key(tmp_path: Path, auth: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(**auth)
    assert error.value.key == key


def test_credentials_for_a_host_no_route_names_are_refused(tmp_path: Path) -> None:
    path = secret(tmp_path)
    with pytest.raises(ConfigError) as error:
        parse_config({
            "routes": {"*": ["other.example:587"]},
            "relay_auth": {HOST: {"username": "u", "password_file": str(path)}},
        })  # fmt: skip
    assert error.value.key == KEY


@pytest.mark.parametrize(
    ("level", "auth_level", "expected"),
    [
        (Level.NONE, Level.VERIFY, Level.VERIFY),
        (Level.MAY, Level.ENCRYPT, Level.ENCRYPT),
        (Level.ENCRYPT, Level.VERIFY, Level.VERIFY),
        (Level.VERIFY, Level.ENCRYPT, Level.VERIFY),  # the policy table's stronger word stays
    ],
)
def test_credentials_raise_the_level_never_lower_it(
    tmp_path: Path, level: Level, auth_level: Level, expected: Level
) -> None:
    path = secret(tmp_path)
    auth = config(username="u", password_file=str(path), tls=auth_level.value).relay_auth[HOST]
    assert credentialed_policy(HostPolicy(level, "policy"), HOST, auth).level is expected


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ({"LOGIN", "PLAIN", "CRAM-MD5"}, Mechanism.PLAIN),
        ({"LOGIN"}, Mechanism.LOGIN),
        ({"CRAM-MD5", "XOAUTH2"}, None),
        (set(), None),
    ],
)
def test_plain_is_preferred(offered: set[str], expected: Mechanism | None) -> None:
    assert choose(offered) is expected


def test_sasl_lines() -> None:
    plain = exchange(Mechanism.PLAIN, "u@x", "pé")
    assert (plain.argument, plain.responses) == ("PLAIN AHVAeABww6k=", ())
    login = exchange(Mechanism.LOGIN, "u@x", "pé")
    assert (login.argument, login.responses) == ("LOGIN", ("dUB4", "cMOp"))
    assert "AHVAeABww6k=" not in repr(plain)


def test_a_refused_login_is_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    failures = LoginFailureLog(quiet_for=300.0, clock=lambda: now[0])
    refusal = LoginRefused(AttemptResult.AUTH_FAILED, "login failed")
    caplog.set_level("WARNING", logger="relaymail.delivery.auth")
    for moment in (0.0, 10.0, 299.0, 300.0, 301.0):
        now[0] = moment
        failures.refused("a:465", refusal)
    failures.refused("b:465", refusal)
    assert [r.getMessage().split()[0] for r in caplog.records] == [
        "host=a:465", "host=a:465", "host=b:465",
    ]  # fmt: skip
