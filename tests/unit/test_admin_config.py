"""[admin]: the address forms, the token rule off loopback, the token file's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaymail.admin.settings import AdminSettings, load_token
from relaymail.config import parse_config
from relaymail.errors import ConfigError
from relaymail.preflight import check_server_config


def admin(**table: object) -> AdminSettings | None:
    return parse_config({"admin": table}).admin


def token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_no_address_means_no_listener():
    assert parse_config({}).admin is None
    assert admin() is None


@pytest.mark.parametrize(
    ("address", "host", "port", "loopback"),
    [
        ("127.0.0.1:8025", "127.0.0.1", 8025, True),
        ("[::1]:8025", "::1", 8025, True),
        ("127.0.0.2:9000", "127.0.0.2", 9000, True),
    ],
)
def test_loopback_addresses_need_no_token(address, host, port, loopback):
    settings = admin(address=address)
    assert settings == AdminSettings(host, port, None)
    assert settings.loopback is loopback


@pytest.mark.parametrize("address", ["0.0.0.0:8025", "[::]:8025", "192.0.2.7:8025"])
def test_an_address_off_loopback_requires_a_token_file(address):
    with pytest.raises(ConfigError) as refused:
        admin(address=address)
    assert refused.value.key == "admin.token_file"
    assert "not a loopback address" in refused.value.reason


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"address": "localhost:8025"}, "admin.address", "is not an IP address"),
        ({"address": "127.0.0.1"}, "admin.address", "needs a port"),
        ({"address": "127.0.0.1:0"}, "admin.address", "out of range"),
        ({"address": 8025}, "admin.address", "must be a string"),
        ({"token_file": "/x"}, "admin.token_file", "admin.address is not"),
        ({"address": "127.0.0.1:1", "tokenfile": "/x"}, "admin.tokenfile", "unknown key"),
    ],
)
def test_bad_admin_tables_name_the_key(table, key, words):
    with pytest.raises(ConfigError) as refused:
        admin(**table)
    assert refused.value.key == key and words in refused.value.reason


def test_the_token_is_read_without_its_newline_and_checked_by_serve_only(tmp_path):
    path = token_file(tmp_path, "0123456789abcdef0123\n")
    config = parse_config({"admin": {"address": "0.0.0.0:8025", "token_file": str(path)}})
    assert config.admin is not None
    assert load_token(config.admin) == "0123456789abcdef0123"
    path.chmod(0o644)
    parse_config({"admin": {"address": "0.0.0.0:8025", "token_file": str(path)}})  # sendmail's
    with pytest.raises(ConfigError) as refused:
        check_server_config(config)
    assert refused.value.key == "admin.token_file"


@pytest.mark.parametrize(
    ("text", "mode", "words"),
    [
        ("0123456789abcdef", 0o640, "readable or writable by others"),
        ("short", 0o600, "fewer than 16 characters"),
        ("0123456789 abcdef", 0o600, "whitespace"),
        ("", 0o600, "is empty"),
    ],
)
def test_a_token_file_that_cannot_be_a_secret_is_refused(tmp_path, text, mode, words):
    settings = AdminSettings("127.0.0.1", 8025, token_file(tmp_path, text, mode))
    with pytest.raises(ConfigError) as refused:
        load_token(settings)
    assert refused.value.key == "admin.token_file" and words in refused.value.reason


def test_a_missing_token_file_is_refused(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_token(AdminSettings("127.0.0.1", 8025, tmp_path / "none"))
    assert "cannot use" in refused.value.reason
