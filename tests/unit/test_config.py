from pathlib import Path

import pytest

from relaymail.config import load_config, parse_config, parse_duration
from relaymail.errors import ConfigError
from relaymail.tls.policy import Level

GOOD = """
[delivery]
helo_name = "mail.example.org"
connect_timeout = 30.0
command_timeout = 300.0

[tls]
tempfail_fallback = false

[tls.policy]
"bank.example" = "encrypt"
"partner.example" = "verify"
"legacy.example" = "none"

[routes]
"example.test" = ["127.0.0.1:2525", "127.0.0.1:2526"]
"*" = ["smarthost.example:587"]
"v6.test" = "[::1]:2525"

[dns]
nameservers = ["127.0.0.1:5353"]
"""


def test_the_documented_example_loads(tmp_path: Path):
    path = tmp_path / "relaymail.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.delivery.helo_name == "mail.example.org"
    assert config.tls.tempfail_fallback is False
    assert config.tls.policy.level_for("bank.example")[0] is Level.ENCRYPT
    assert config.tls.policy.level_for("legacy.example")[0] is Level.NONE
    assert [str(h) for h in config.routes["example.test"]] == ["127.0.0.1:2525", "127.0.0.1:2526"]
    assert str(config.routes["*"][0]) == "smarthost.example:587"
    assert config.routes["v6.test"][0].host == "::1"
    assert (config.dns.nameservers[0].host, config.dns.nameservers[0].port) == ("127.0.0.1", 5353)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"delivery": {"helo_nmae": "x"}}, "delivery.helo_nmae"),
        ({"delivery": {"connect_timeout": -1}}, "delivery.connect_timeout"),
        ({"delivery": {"command_timeout": "soon"}}, "delivery.command_timeout"),
        ({"tls": {"tempfail_fallback": "yes"}}, "tls.tempfail_fallback"),
        ({"tls": {"policy": {"bank.example": "mandatory"}}}, 'tls.policy."bank.example"'),
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "tls.ca_file"),
        ({"routes": {"example.test": []}}, 'routes."example.test"'),
        ({"routes": {"example.test": ["host:99999"]}}, 'routes."example.test"'),
        ({"routes": {"bad domain": ["h:25"]}}, 'routes."bad domain"'),
        ({"dns": {"nameservers": ["ns.example"]}}, "dns.nameservers"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_unreadable_and_invalid_files_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[delivery\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_ca_file_must_hold_certificates(tmp_path: Path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError) as info:
        parse_config({"tls": {"ca_file": str(junk)}})
    assert info.value.key == "tls.ca_file"


def test_star_policy_sets_the_default_level():
    config = parse_config({"tls": {"policy": {"*": "encrypt"}}})
    assert config.tls.policy.level_for("anything.example")[0] is Level.ENCRYPT


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("4h", 14400), ("5d", 432000), (2.5, 2.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text, "k") == seconds


def test_no_config_means_embedded_defaults():
    config = load_config(None)
    assert config.tls.tempfail_fallback is True
    assert config.tls.policy.default is Level.MAY
    assert config.routes == {}


def test_max_mx_addresses_defaults_to_five_and_must_be_positive():
    assert parse_config({}).delivery.max_mx_addresses == 5
    assert parse_config({"delivery": {"max_mx_addresses": 2}}).delivery.max_mx_addresses == 2
    for bad in (0, -1, "5", 1.5):
        with pytest.raises(ConfigError) as info:
            parse_config({"delivery": {"max_mx_addresses": bad}})
        assert info.value.key == "delivery.max_mx_addresses"
