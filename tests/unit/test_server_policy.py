"""The inbound server's pure parts: relay decision, trace header, reply codes, parameters."""

from __future__ import annotations

import ipaddress

import pytest

from relaymail.errors import ConfigError
from relaymail.inbound.checks import may_relay, with_enhanced_code
from relaymail.inbound.cleanup import received_header, trace_protocol
from relaymail.inbound.grammar import parse_esmtp_params
from relaymail.listener_settings import ListenerMode, ListenerSettings

ip = ipaddress.ip_address


def settings(**overrides: object) -> ListenerSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 25,
        "hostname": "mx.example.org",
        "relay_networks": (ipaddress.ip_network("10.0.0.0/8"),),
        "relay_domains": ("example.org", ".sub.example.net"),
    }
    values.update(overrides)
    return ListenerSettings(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- relay decision


@pytest.mark.parametrize(
    ("domain", "client", "authenticated", "allowed"),
    [
        ("example.org", "192.0.2.1", False, True),  # relay domain, from anyone
        ("a.example.org", "192.0.2.1", False, False),  # exact entry: no subdomains
        ("x.sub.example.net", "192.0.2.1", False, True),  # dotted entry: subdomains
        ("sub.example.net", "192.0.2.1", False, False),  # ... but not itself
        ("elsewhere.example", "192.0.2.1", False, False),  # no open relay
        ("elsewhere.example", "10.1.2.3", False, True),  # trusted network
        ("elsewhere.example", "::ffff:10.1.2.3", False, True),  # same, IPv4-mapped
        ("elsewhere.example", "192.0.2.1", True, True),  # authenticated
        ("elsewhere.example", None, False, False),  # unknown peer
        ("[192.0.2.9]", "192.0.2.1", False, False),  # address literal
    ],
)
def test_may_relay(domain: str, client: str | None, authenticated: bool, allowed: bool) -> None:
    client_ip = ip(client) if client else None
    assert may_relay(settings(), domain, client_ip, authenticated) is allowed


def test_relay_domains_are_normalised_to_lower_case_a_labels() -> None:
    configured = settings(relay_domains=("Example.ORG", ".Bücher.example"))
    assert configured.relay_domains == ("example.org", ".xn--bcher-kva.example")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"port": 70000}, "port"),
        ({"max_recipients": 0}, "max_recipients"),
        ({"max_line_length": 10}, "max_line_length"),
        ({"relay_domains": ("bad domain!",)}, "relay_domains"),
        ({"relay_networks": ("10.0.0.1/8",)}, "relay_networks"),
        ({"tls_cert_file": "/x.pem"}, "tls_cert_file"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_key(
    overrides: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(**overrides)
    assert raised.value.key == key


def test_relay_networks_given_as_strings_are_converted() -> None:
    configured = settings(relay_networks=("192.0.2.0/24", "2001:db8::/32"))
    assert configured.relay_networks == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_auth_is_required_by_mode_unless_configured() -> None:
    assert not settings(mode="relay").auth_required
    assert settings(mode="submission").auth_required
    assert settings(mode=ListenerMode.SMTPS).auth_required
    assert settings(mode="relay", require_auth=True).auth_required


# --------------------------------------------------------------------------- trace header


def test_received_header_with_one_recipient_and_tls() -> None:
    header = received_header(
        "1K1H0AB2CDE",
        helo="client.example",
        client_ip=ip("192.0.2.7"),
        hostname="mx.example.org",
        protocol="ESMTPS",
        tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        recipients=["b@example.org"],
        date="Mon, 02 Nov 2026 10:00:00 +0000",
    )
    assert header == (
        b"Received: from client.example ([192.0.2.7])\r\n"
        b"\tby mx.example.org (relaymail) with ESMTPS id 1K1H0AB2CDE\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
        b"\tfor <b@example.org>; Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    )


def test_received_header_with_ipv6_several_recipients_and_a_hostile_helo() -> None:
    header = received_header(
        "1K1H0AB2CDE",
        helo="evil; by forged.example (comment",
        client_ip=ip("2001:db8::1"),
        hostname="mx.example.org",
        protocol="SMTP",
        tls=None,
        recipients=["a@example.org", "b@example.org"],
        date="Mon, 02 Nov 2026 10:00:00 +0000",
    )
    assert header == (
        b"Received: from unknown ([IPv6:2001:db8::1])\r\n"
        b"\tby mx.example.org (relaymail) with SMTP id 1K1H0AB2CDE;"
        b" Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    )


@pytest.mark.parametrize(
    ("esmtp", "tls", "authenticated", "smtputf8", "keyword"),
    [
        (False, False, False, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_trace_protocol_keywords_of_rfc_3848_and_6531(
    esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool, keyword: str
) -> None:
    assert (
        trace_protocol(esmtp=esmtp, tls=tls, authenticated=authenticated, smtputf8=smtputf8)
        == keyword
    )


# --------------------------------------------------------------------------- replies and params


@pytest.mark.parametrize(
    ("reply", "enhanced"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        (
            "530 Must issue a STARTTLS command first",
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("421 4.7.0 NOOP sent too many times", "421 4.7.0 NOOP sent too many times"),
        (
            "535 5.7.8 Authentication credentials invalid",
            "535 5.7.8 Authentication credentials invalid",
        ),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
        ("221 Bye", "221 2.0.0 Bye"),
    ],
)
def test_with_enhanced_code(reply: str, enhanced: str) -> None:
    assert with_enhanced_code(reply) == enhanced


def test_esmtp_params_keep_value_case_and_reject_junk() -> None:
    assert parse_esmtp_params("SIZE=100 body=8BITMIME ENVID=Ab+2Bc SMTPUTF8") == {
        "SIZE": "100",
        "BODY": "8BITMIME",
        "ENVID": "Ab+2Bc",
        "SMTPUTF8": None,
    }
    assert parse_esmtp_params("") == {}
    assert parse_esmtp_params("SIZE=") is None
    assert parse_esmtp_params("SIZE=1 SIZE=2") is None
    assert parse_esmtp_params("-X=1") is None
