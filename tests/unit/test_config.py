import ipaddress
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from relaymail.address_set import AddressSet
from relaymail.config import RecipientVerification, VerifyMode, load_config, parse_config
from relaymail.config_fields import seconds
from relaymail.config_queue import QueueBackend
from relaymail.errors import ConfigError
from relaymail.listener_settings import LimitSettings, ListenerMode, ListenerSettings
from relaymail.passwords import hash_password
from relaymail.preflight import check_server_config
from relaymail.tls.policy import Level

HASH = hash_password("x", log2_n=10)

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
    ("text", "expected"), [("30s", 30), ("15m", 900), ("4h", 14400), ("5d", 432000), (2.5, 2.5)]
)
def test_durations(text, expected):
    assert seconds(text, "k") == expected


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


# ---------------------------------------------------------------- every key, one rigour

NAN, INF = float("nan"), float("inf")
# Values every numeric key refuses: TOML's nan and inf, a bool (an int in Python),
# nothing, a negative, and zero where no key has a meaning for it.
NOT_A_NUMBER = [NAN, INF, -INF, -1, 0, True, False, "", [], {}]
NOT_A_COUNT = [*NOT_A_NUMBER, 1.5, 10.0, "10", 2**63]
NOT_A_DURATION = [*NOT_A_NUMBER, "soon", "-5m", "1e400", "99999999d"]
NOT_A_SIZE = [*NOT_A_NUMBER, 1.5, "0", "1.5M", "35 parsecs", 2**63]
NOT_A_PORT = [*NOT_A_COUNT, 65536]
NOT_A_NAME = ["", "   ", 5, True, [], "a\nb", "a\r\nX-Injected: 1"]
NOT_A_BOOL = [0, 1, "yes", "true", "", 1.0]

SECTION_KEYS = {
    "delivery": {
        "connect_timeout": NOT_A_DURATION, "command_timeout": NOT_A_DURATION,
        "data_timeout": NOT_A_DURATION, "connection_idle_time": NOT_A_DURATION,
        "destination_concurrency": NOT_A_COUNT, "port": NOT_A_PORT, "helo_name": NOT_A_NAME,
    },
    "tls": {
        "remember_for": NOT_A_DURATION, "mta_sts_port": NOT_A_PORT,
        "ca_file": NOT_A_NAME, "mta_sts_ca_file": NOT_A_NAME,
        "report_organization": NOT_A_NAME, "report_contact": NOT_A_NAME,
        "tempfail_fallback": NOT_A_BOOL, "mta_sts": NOT_A_BOOL, "reporting": NOT_A_BOOL,
        "dane": NOT_A_BOOL, "default_level": NOT_A_NAME,
    },
    "dns": {"timeout": NOT_A_DURATION},
    "queue": {
        "lifetime": NOT_A_DURATION, "delay_warning": NOT_A_DURATION,
        "max_deliveries": NOT_A_COUNT, "max_size": NOT_A_SIZE, "directory": NOT_A_NAME,
        "active_limit": [*NOT_A_COUNT, 10_000_001],
        "backend": [*NOT_A_NAME, "mysql"], "node": [*NOT_A_NAME, "", "a b", "x" * 65],
    },
}  # fmt: skip
LISTENER_KEYS = {
    "idle_timeout": NOT_A_DURATION, "max_message_size": NOT_A_SIZE,
    "max_recipients": NOT_A_COUNT, "max_connections": NOT_A_COUNT,
    "max_commands_per_verb": NOT_A_COUNT, "max_auth_failures": NOT_A_COUNT,
    "max_received_headers": NOT_A_COUNT, "max_line_length": [*NOT_A_COUNT, 79],
    "hostname": NOT_A_NAME, "address": NOT_A_NAME, "mode": NOT_A_NAME,
    "tls_cert_file": NOT_A_NAME, "tls_key_file": NOT_A_NAME, "require_auth": NOT_A_BOOL,
    "sender_login_binding": NOT_A_BOOL, "max_connections_per_client": NOT_A_COUNT,
    "max_connection_rate_per_client": NOT_A_COUNT, "max_message_rate_per_client": NOT_A_COUNT,
    "max_auth_failures_per_client": NOT_A_COUNT, "auth_failure_delay": NOT_A_DURATION,
    "auth_block_time": NOT_A_DURATION,
}  # fmt: skip


def config_error(raw: dict[str, Any]) -> ConfigError:
    """The error `serve` stops with for `raw` (listeners are built only there)."""
    with pytest.raises(ConfigError) as info:
        check_server_config(parse_config(raw))
    return info.value


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        pytest.param(section, key, value, id=f"{section}.{key}={value!r}")
        for section, keys in SECTION_KEYS.items()
        for key, values in keys.items()
        for value in values
    ],
)
def test_every_section_key_refuses_values_that_parse_but_break(section, key, value):
    assert config_error({section: {key: value}}).key == f"{section}.{key}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param(key, value, id=f"{key}={value!r}")
        for key, values in LISTENER_KEYS.items()
        for value in values
    ],
)
def test_every_listener_key_is_checked_as_strictly_and_named_with_its_index(key, value):
    good = {"address": "127.0.0.1:2525"}
    raw = {"listener": [good, {"address": "127.0.0.1:2526", key: value}]}
    assert config_error(raw).key == f"listener[1].{key}"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"queue": {"retry": []}}, "queue.retry"),
        ({"queue": {"retry": ["1m", NAN]}}, "queue.retry"),
        ({"queue": {"retry": "1m"}}, "queue.retry"),
        ({"tls": {"remember": ["gmail.com", ""]}}, "tls.remember"),
        ({"tls": {"remember": "gmail.com"}}, "tls.remember"),
        ({"tls": {"policy": {"": "encrypt"}}}, 'tls.policy.""'),
        ({"tls": {"policy": "encrypt"}}, "tls.policy"),
        ({"routes": {"example.test": [""]}}, 'routes."example.test"'),
        ({"routes": {"example.test": 5}}, 'routes."example.test"'),
        ({"dns": {"nameservers": [""]}}, "dns.nameservers"),
        ({"dns": {"nameservers": "127.0.0.1"}}, "dns.nameservers"),
        ({"users": {"alice": ""}}, 'users."alice"'),
        ({"users": {"alice": 5}}, 'users."alice"'),
        ({"users": {"alice": {"addresses": ["alice@example.org"]}}},
         'users."alice".password_hash'),
        ({"users": {"alice": {"password_hash": HASH, "addresses": "alice@example.org"}}},
         'users."alice".addresses'),
        ({"users": {"alice": {"password_hash": HASH, "adresses": []}}}, 'users."alice".adresses'),
        ({"users": {"alice": {"password_hash": HASH, "addresses": ["@"]}}}, "users"),
        ({"users": {"alice": {"password_hash": HASH, "addresses": ["no-domain"]}}}, "users"),
        ({"listener": [{"address": "127.0.0.1:2525", "relay_networks": [""]}]},
         "listener[0].relay_networks"),
        ({"listener": [{"address": "127.0.0.1:2525", "relay_networks": "127.0.0.0/8"}]},
         "listener[0].relay_networks"),
        ({"listener": [{"address": "127.0.0.1:2525", "relay_domains": [5]}]},
         "listener[0].relay_domains"),
        ({"listener": [{"address": "127.0.0.1:2525", "relay_domains": ["a b.example"]}]},
         "listener[0].relay_domains"),
        ({"listener": [{"address": "127.0.0.1:2525", "bogus": 1}]}, "listener[0].bogus"),
        ({"listener": [{"mode": "relay"}]}, "listener[0].address"),
        ({"listener": [{"address": "127.0.0.1:2525"}, {"address": "127.0.0.1:2525"}]},
         "listener[1].address"),
    ],
)  # fmt: skip
def test_lists_and_tables_check_every_item(raw, key):
    assert config_error(raw).key == key


def test_a_user_is_a_hash_or_a_table_with_its_sender_addresses():
    config = parse_config(
        {
            "local": {"domain": "local.example"},
            "users": {
                "alice": HASH,
                "bob": {"password_hash": HASH, "addresses": ["bob@example.org", "@example.net"]},
            },
        }
    )
    users = config.users()
    assert users["alice"].senders == AddressSet(frozenset({"alice@local.example"}), frozenset())
    assert users["bob"].senders == AddressSet(
        frozenset({"bob@example.org"}), frozenset({"example.net"})
    )


def test_recipient_verification_is_read_and_its_mode_and_file_go_together(tmp_path):
    listed = tmp_path / "recipients"
    listed.write_text("a@plain.test\n")
    config = parse_config(
        {"recipient_verification": {"mode": "list", "recipients_file": str(listed),
                                    "positive_ttl": "2d", "negative_ttl": "1h", "wait": "2s",
                                    "sender": "verify@example.org"}}
    )  # fmt: skip
    assert config.recipient_verification == RecipientVerification(
        mode=VerifyMode.LIST, recipients_file=listed, positive_ttl=2 * 86400.0,
        negative_ttl=3600.0, wait=2.0, sender="verify@example.org",
    )  # fmt: skip
    assert parse_config({}).recipient_verification.mode is VerifyMode.PROBE
    where = "recipient_verification"
    for table, key in [
        ({"mode": "list"}, f"{where}.recipients_file"),
        ({"recipients_file": str(listed)}, f"{where}.recipients_file"),
        ({"mode": "maybe"}, f"{where}.mode"),
        ({"sender": "no domain"}, f"{where}.sender"),
        ({"wait": NAN}, f"{where}.wait"),
        ({"max_probes": 0}, f"{where}.max_probes"),
        ({"probe": "yes"}, f"{where}.probe"),
    ]:
        assert config_error({where: table}).key == key


def test_per_client_limits_are_read_into_the_listener_settings():
    [listener] = parse_config(
        {"listener": [{"address": "127.0.0.1:2525", "max_connections_per_client": 3,
                       "auth_failure_delay": "2s", "auth_block_time": "1h"}]}
    ).listeners()  # fmt: skip
    assert listener.client_limits == LimitSettings(
        max_connections=3, auth_delay=2.0, auth_block_time=3600.0
    )


@pytest.mark.parametrize("address", ["127.0.0.1", "[::1]", "localhost", "127.0.0.1:0"])
def test_a_listener_address_needs_a_port(address):
    error = config_error({"listener": [{"address": address}]})
    assert error.key == "listener[0].address"


@pytest.mark.parametrize("address", ["999.1.1.1:2527", "example.invalid:2527", "localhost:25"])
def test_a_listener_address_is_an_ip_address(address):
    # serve would bind a name as it resolves at start, or fail with "Unknown error -2".
    error = config_error({"listener": [{"address": address}]})
    assert error.key == "listener[0].address" and "is not an IP address" in error.reason


@pytest.mark.parametrize(
    "name",
    ["mail example.org", "mail.example.org\r\nX: y", "mäil.example", "mail_1.example",
     "-mail.example", "mail-.example", "a" * 64 + ".example", "mail..example", "[127.0.0.1]",
     "127.0.0.1:25"],
)  # fmt: skip
def test_names_that_reach_the_wire_must_be_host_names(name):
    assert config_error({"delivery": {"helo_name": name}}).key == "delivery.helo_name"
    raw = {"listener": [{"address": "127.0.0.1:2525", "hostname": name}]}
    assert config_error(raw).key == "listener[0].hostname"


def test_host_names_are_kept_in_lower_case_without_the_root_dot():
    config = parse_config(
        {
            "delivery": {"helo_name": "Relay.Example.ORG."},
            "listener": [{"address": "127.0.0.1:2525", "hostname": "MX1.example.org"}],
        }
    )
    assert config.delivery.helo_name == "relay.example.org"
    assert config.listeners()[0].hostname == "mx1.example.org"


def test_a_listener_that_sets_only_its_address_keeps_every_default():
    config = parse_config(
        {"delivery": {"helo_name": "relay.example.org"}, "listener": [{"address": "[::1]:2525"}]}
    )
    (listener,) = config.listeners()
    default = ListenerSettings(host="::1", port=2525)
    assert (listener.host, listener.port, listener.mode) == ("::1", 2525, ListenerMode.RELAY)
    assert listener.relay_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert listener.hostname == "relay.example.org"
    assert listener.max_recipients == default.max_recipients
    assert listener.max_message_size == default.max_message_size
    assert listener.idle_timeout == default.idle_timeout


def test_listener_values_arrive_typed():
    config = parse_config(
        {
            "listener": [
                {
                    "address": "127.0.0.1:2587", "mode": "relay", "max_message_size": "10M",
                    "max_recipients": 10, "idle_timeout": "2m", "relay_networks": ["10.0.0.0/8"],
                    "relay_domains": ["Example.ORG", ".bücher.example"], "require_auth": False,
                }
            ]
        }
    )  # fmt: skip
    (listener,) = config.listeners()
    assert listener.max_message_size == 10 * 1024 * 1024
    assert listener.max_recipients == 10
    assert listener.idle_timeout == 120.0
    assert listener.relay_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert listener.relay_domains == ("example.org", ".xn--bcher-kva.example")
    assert listener.auth_required is False


# ---------------------------------------------------------------- certificate and key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = trustme.CA()
    one, other = ca.issue_cert("mx.example.test"), ca.issue_cert("other.example.test")
    root = tmp_path_factory.mktemp("pki")
    files = {
        "cert": one.cert_chain_pems[0].bytes(),
        "key": one.private_key_pem.bytes(),
        "other_key": other.private_key_pem.bytes(),
        "both": one.cert_chain_pems[0].bytes() + one.private_key_pem.bytes(),
        "junk": b"not PEM at all\n",
        "encrypted_key": serialization.load_pem_private_key(
            one.private_key_pem.bytes(), None
        ).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.pem"
        paths[name].write_bytes(data)
    paths["missing"] = root / "missing.pem"
    paths["directory"] = root
    return paths


def tls_listener(pki: dict[str, Path], cert: str, key: str) -> dict[str, Any]:
    listener = {"address": "127.0.0.1:2525", "mode": "submission"}
    return {
        "users": {"alice": "$scrypt$x"},
        "listener": [{**listener, "tls_cert_file": str(pki[cert]), "tls_key_file": str(pki[key])}],
    }


@pytest.mark.parametrize(
    ("cert", "key", "bad_key"),
    [
        ("cert", "other_key", "tls_key_file"),  # the pair does not match
        ("cert", "junk", "tls_key_file"),
        ("cert", "encrypted_key", "tls_key_file"),
        ("cert", "cert", "tls_key_file"),  # a certificate where the key belongs
        ("cert", "missing", "tls_key_file"),
        ("cert", "directory", "tls_key_file"),
        ("junk", "key", "tls_cert_file"),
        ("key", "key", "tls_cert_file"),
        ("missing", "key", "tls_cert_file"),
    ],
)
def test_a_bad_certificate_or_key_is_named_by_its_own_key(pki, cert, key, bad_key):
    raw = tls_listener(pki, cert, key)
    with pytest.raises(ConfigError) as info:
        parse_config(raw).listeners()
    assert info.value.key == f"listener[0].{bad_key}"


@pytest.mark.parametrize(("cert", "key"), [("cert", "key"), ("both", "both")])
def test_a_matching_pair_loads(pki, cert, key):
    (listener,) = parse_config(tls_listener(pki, cert, key)).listeners()
    assert listener.tls_cert_file == pki[cert]


@pytest.mark.parametrize(("given", "missing"), [("tls_cert_file", "tls_key_file"),
                                                 ("tls_key_file", "tls_cert_file")])  # fmt: skip
def test_a_certificate_without_its_key_names_the_missing_one(pki, given, missing):
    raw = {"listener": [{"address": "127.0.0.1:2525", given: str(pki["both"])}]}
    assert config_error(raw).key == f"listener[0].{missing}"


def test_local_domain_defaults_to_the_helo_name_and_aliases_must_be_readable(tmp_path):
    from relaymail.config import parse_config
    from relaymail.errors import ConfigError

    assert parse_config({"delivery": {"helo_name": "mx.example.org"}}).local.domain == (
        "mx.example.org"
    )
    local = parse_config({"local": {"domain": "Example.ORG"}}).local
    assert (local.domain, local.aliases) == ("example.org", None)
    with pytest.raises(ConfigError) as raised:
        parse_config({"local": {"aliases": str(tmp_path / "missing")}})
    assert raised.value.key == "local.aliases"
    with pytest.raises(ConfigError) as raised:
        parse_config({"local": {"domain": "not a host"}})
    assert raised.value.key == "local.domain"


def test_the_active_window_defaults_to_ten_thousand_and_takes_a_whole_number() -> None:
    assert parse_config({}).queue.active_limit == 10_000
    assert parse_config({"queue": {"active_limit": 500}}).queue.active_limit == 500


def test_the_queue_backend_is_sqlite_unless_postgresql_is_named_with_a_dsn() -> None:
    assert parse_config({}).queue.backend is QueueBackend.SQLITE
    shared = parse_config(
        {"queue": {"backend": "postgresql", "dsn": "host=db dbname=relaymail", "node": "mx1"}}
    ).queue
    assert (shared.backend, shared.dsn, shared.node) == (
        QueueBackend.POSTGRESQL, "host=db dbname=relaymail", "mx1",
    )  # fmt: skip
    shared_without = [{"backend": "postgresql", "dsn": dsn} for dsn in (" ", 5, "a\nb")]
    for wrong in ({"backend": "postgresql"}, {"dsn": "host=db"}, *shared_without):
        with pytest.raises(ConfigError) as raised:
            parse_config({"queue": wrong})
        assert raised.value.key == "queue.dsn"
