"""Login to a smarthost (SMTP AUTH as a client) over STARTTLS and over implicit TLS.

Against a real submission server, a private Exim 4.96 that offers AUTH only under TLS and
requires it for RCPT, on its STARTTLS port and on its implicit-TLS port; and against the
scripted server for what Exim will not do on purpose: offer AUTH in clear, refuse STARTTLS,
present a certificate for another name. Every transcript is checked for AUTH outside TLS.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relaymail.config import Config, parse_config
from relaymail.delivery import AttemptResult, DeliveryEngine, RecipientResult, Status
from relaymail.message import Envelope
from relaymail.tls.reporting import TlsReportStore
from tests.integration.conftest import MESSAGE
from tests.integration.daemon_process import RELAYMAIL
from tests.peers.exim import EximFactory
from tests.peers.exim_config import Credentials, EximOptions, Outcome, StartTLS
from tests.peers.smtp_server import DEFAULT_CAPABILITIES, Script, SMTPPeer

USER, PASSWORD = "app@example.org", "s3cret pass"
WITH_AUTH = (*DEFAULT_CAPABILITIES, "AUTH PLAIN LOGIN")
EX_CONFIG = 78


def secret(tmp_path: Path, password: str = PASSWORD, mode: int = 0o600) -> Path:
    path = tmp_path / "smarthost.secret"
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def smarthost_config(
    tmp_path: Path, ca_file: Path, route: str, *, password: str = PASSWORD,
    level: str | None = None, fallback: bool = True, **auth: Any,
) -> Config:  # fmt: skip
    """Everything routed to `route` ("smtps://127.0.0.1:465"), with credentials for its host."""
    host = route.split("://")[-1].rsplit(":", 1)[0]
    tls: dict[str, Any] = {"tempfail_fallback": fallback, "ca_file": str(ca_file)}
    if level is not None:
        tls["policy"] = {"dest.test": level}
    return parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 5.0},
        "tls": tls,
        "routes": {"*": [route]},
        "relay_auth": {host: {"username": USER,
                              "password_file": str(secret(tmp_path, password)), **auth}},
        "queue": {"directory": str(tmp_path / "state")},
    })  # fmt: skip


async def deliver_all(config: Config, messages: int = 1) -> list[RecipientResult]:
    engine = DeliveryEngine(config)
    try:
        results = []
        for _ in range(messages):
            envelope = Envelope("a@sender.test", ("u@dest.test",))
            results += await engine.deliver(envelope, MESSAGE)
        return results
    finally:
        await engine.close()


def attempt_results(result: RecipientResult) -> list[AttemptResult]:
    return [attempt.result for attempt in result.attempts]


def assert_no_auth_in_clear(peer: SMTPPeer) -> None:
    assert [line.text for line in peer.transcript if line.verb == "AUTH" and not line.tls] == []


def auth_lines(peer: SMTPPeer) -> list[str]:
    return [line.text for line in peer.transcript if line.verb == "AUTH"]


# ------------------------------------------------------------------ the real Exim


@pytest.mark.parametrize("port", ["starttls", "implicit"])
async def test_login_to_exim_delivers(
    exim: EximFactory, tmp_path: Path, ca_file: Path, port: str
) -> None:
    options = EximOptions(starttls=StartTLS.OK, auth=Credentials(USER, PASSWORD), implicit_tls=True)
    peer = await asyncio.to_thread(exim, options)
    route = (
        f"smtp://127.0.0.1:{peer.port}"
        if port == "starttls"
        else f"smtps://127.0.0.1:{peer.tls_port}"
    )

    [result] = await deliver_all(smarthost_config(tmp_path, ca_file, route))

    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.used and result.tls.verified
    assert list((await asyncio.to_thread(peer.settle)).values()) == [Outcome.DELIVERED]
    [stored] = peer.received_messages()
    assert stored.endswith(b"\r\n\r\nHello.\r\n.dot line\r\n")


async def test_wrong_password_defers_and_is_logged_once_per_burst(
    exim: EximFactory, tmp_path: Path, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = EximOptions(starttls=StartTLS.OK, auth=Credentials(USER, PASSWORD))
    peer = await asyncio.to_thread(exim, options)
    config = smarthost_config(tmp_path, ca_file, f"127.0.0.1:{peer.port}", password="wrong")
    caplog.set_level(logging.INFO, logger="relaymail.delivery")

    results = await deliver_all(config, messages=3)

    assert [r.status for r in results] == [Status.DEFERRED] * 3
    assert all(attempt_results(r) == [AttemptResult.AUTH_FAILED] for r in results)
    logged = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.name for r in logged] == ["relaymail.delivery.auth"]
    assert peer.arrivals() == []


async def test_smarthost_sessions_are_not_counted_for_tls_reports(
    exim: EximFactory, tmp_path: Path, ca_file: Path
) -> None:
    options = EximOptions(auth=Credentials(USER, PASSWORD), implicit_tls=True)
    peer = await asyncio.to_thread(exim, options)
    config = smarthost_config(tmp_path, ca_file, f"smtps://127.0.0.1:{peer.tls_port}")
    assert config.tls.reporting

    [result] = await deliver_all(config)

    assert result.status is Status.DELIVERED, result.reason
    store = TlsReportStore(config.queue.directory)
    try:
        assert store.days() == []
    finally:
        store.close()


# ------------------------------------------------------------------ the scripted server


async def test_auth_offered_in_clear_is_never_sent(smtp_peer, tmp_path, ca_file) -> None:
    peer = await smtp_peer(Script(advertise_starttls=False, ehlo=WITH_AUTH))
    config = smarthost_config(tmp_path, ca_file, f"127.0.0.1:{peer.port}", level="none")

    [result] = await deliver_all(config)

    assert result.status is Status.DEFERRED
    assert attempt_results(result) == [AttemptResult.TLS_POLICY_FAILED]
    assert auth_lines(peer) == []
    assert "MAIL" not in [line.verb for line in peer.transcript]


async def test_starttls_454_defers_without_auth_even_with_fallback(
    smtp_peer, tmp_path, ca_file
) -> None:
    script = Script(ehlo=WITH_AUTH, starttls="454 4.7.0 TLS not available due to local problem")
    peer = await smtp_peer(script)
    config = smarthost_config(tmp_path, ca_file, f"127.0.0.1:{peer.port}", level="may")

    [result] = await deliver_all(config)

    assert result.status is Status.DEFERRED
    assert attempt_results(result) == [AttemptResult.TLS_POLICY_FAILED]
    assert peer.connections == 1  # no new session in clear
    assert auth_lines(peer) == []
    assert not peer.transactions


@pytest.mark.parametrize(
    ("offered", "mechanism"), [("AUTH LOGIN PLAIN", "PLAIN"), ("AUTH LOGIN", "LOGIN")]
)
async def test_auth_goes_only_under_tls_and_prefers_plain(
    smtp_peer, tmp_path, ca_file, offered, mechanism
) -> None:
    peer = await smtp_peer(Script(ehlo=(*DEFAULT_CAPABILITIES, offered)))

    [result] = await deliver_all(smarthost_config(tmp_path, ca_file, f"127.0.0.1:{peer.port}"))

    assert result.status is Status.DELIVERED, result.reason
    [auth] = auth_lines(peer)
    assert auth.split()[1] == mechanism
    assert_no_auth_in_clear(peer)
    [transaction] = peer.transactions
    assert transaction.tls


async def test_login_lines_carry_the_credentials_under_tls(smtp_peer, tmp_path, ca_file) -> None:
    peer = await smtp_peer(Script(ehlo=(*DEFAULT_CAPABILITIES, "AUTH LOGIN")))

    await deliver_all(smarthost_config(tmp_path, ca_file, f"127.0.0.1:{peer.port}"))

    tls_lines = peer.lines(tls=True)
    start = tls_lines.index("AUTH LOGIN")
    # base64 of the user name and of the password (its file's one newline stripped)
    assert tls_lines[start + 1 : start + 3] == ["YXBwQGV4YW1wbGUub3Jn", "czNjcmV0IHBhc3M="]
    assert not any("czNjcmV0" in line for line in peer.lines(tls=False))


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (Script(), AttemptResult.AUTH_NOT_OFFERED),
        (Script(ehlo=(*DEFAULT_CAPABILITIES, "AUTH CRAM-MD5")), AttemptResult.AUTH_NOT_OFFERED),
        (Script(ehlo=WITH_AUTH, auth_reply="454 4.7.0 Temporary authentication failure"),
         AttemptResult.AUTH_REFUSED),
        (Script(ehlo=WITH_AUTH, auth_reply="535 5.7.8 Authentication credentials invalid"),
         AttemptResult.AUTH_FAILED),
    ],
)  # fmt: skip
async def test_a_login_that_does_not_succeed_defers_and_sends_no_mail(
    smtp_peer, tmp_path, ca_file, script, expected
) -> None:
    peer = await smtp_peer(script)

    [result] = await deliver_all(smarthost_config(tmp_path, ca_file, f"127.0.0.1:{peer.port}"))

    assert result.status is Status.DEFERRED
    assert attempt_results(result) == [expected]
    assert "MAIL" not in [line.verb for line in peer.transcript]
    assert peer.sessions[0].quit  # QUIT over TLS, not a dropped connection


@pytest.mark.parametrize(("tls", "status"), [("verify", Status.DEFERRED),
                                             ("encrypt", Status.DELIVERED)])  # fmt: skip
async def test_implicit_tls_with_a_certificate_for_another_name(
    smtp_peer, tmp_path, ca_file, tls, status
) -> None:
    script = Script(implicit_tls=True, ehlo=WITH_AUTH, cert_names=("other.example",))
    peer = await smtp_peer(script)
    route = f"smtps://127.0.0.1:{peer.port}"

    [result] = await deliver_all(smarthost_config(tmp_path, ca_file, route, tls=tls))

    assert result.status is status, result.reason
    assert result.tls.used or status is Status.DEFERRED
    assert_no_auth_in_clear(peer)
    if status is Status.DEFERRED:
        assert attempt_results(result) == [AttemptResult.TLS_POLICY_FAILED]
        assert peer.transcript == []  # refused before the greeting: not even EHLO
    else:
        assert "STARTTLS" not in peer.lines()
        assert len(auth_lines(peer)) == 1


async def test_smtps_route_to_a_cleartext_server_fails_the_host(
    smtp_peer, tmp_path, ca_file
) -> None:
    peer = await smtp_peer(Script(advertise_starttls=False, ehlo=WITH_AUTH))
    route = f"smtps://127.0.0.1:{peer.port}"

    [result] = await deliver_all(smarthost_config(tmp_path, ca_file, route))

    assert result.status is Status.DEFERRED
    assert attempt_results(result) == [AttemptResult.SESSION_FAILED]
    assert auth_lines(peer) == []


async def test_without_credentials_a_route_sends_no_auth(smtp_peer, tmp_path, ca_file) -> None:
    peer = await smtp_peer(Script(ehlo=WITH_AUTH))
    config = parse_config({
        "tls": {"ca_file": str(ca_file)},
        "routes": {"*": [f"127.0.0.1:{peer.port}"]},
        "queue": {"directory": str(tmp_path / "state")},
    })  # fmt: skip

    [result] = await deliver_all(config)

    assert result.status is Status.DELIVERED
    assert auth_lines(peer) == []


# ------------------------------------------------------------------ the configuration, at start


def test_a_group_readable_password_file_stops_serve(tmp_path: Path) -> None:
    password_file = secret(tmp_path, mode=0o644)
    config = tmp_path / "relaymail.toml"
    config.write_text(
        f'[queue]\ndirectory = "{tmp_path / "queue"}"\n'
        '[routes]\n"*" = ["smtps://smtp.provider.example:465"]\n'
        '[relay_auth."smtp.provider.example"]\n'
        f'username = "{USER}"\npassword_file = "{password_file}"\n'
    )

    process = subprocess.run(
        [RELAYMAIL, "serve", "--config", str(config)], capture_output=True, timeout=60
    )

    assert process.returncode == EX_CONFIG
    [line] = process.stderr.decode().splitlines()
    assert 'relay_auth."smtp.provider.example".password_file' in line
    assert PASSWORD not in line
