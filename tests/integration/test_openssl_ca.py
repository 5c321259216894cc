"""`verify` with a private CA made by the openssl command line, as operators make them.

`openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=ca` gives a CA without keyUsage;
`openssl x509 -req` without an extension file gives a v1 leaf naming its host in the CN
only. Postfix and Exim (OpenSSL) accept both; so must relaymail. What `openssl verify`
refuses (a wrong name, an expired leaf) still fails, with its TLS-RPT result type.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from relaymail.commands.probe import probe_domain
from relaymail.config import parse_config
from relaymail.delivery import AttemptResult, Status
from relaymail.tls.policy import Event
from relaymail.tls.reporting import session_event
from relaymail.tls.results import ResultType
from tests.integration.conftest import deliver
from tests.peers.binaries import peer_binary
from tests.peers.smtp_server import Script


class OpensslCa:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.openssl = peer_binary("openssl")
        self.cert = directory / "ca.pem"
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=ca",
                  "-keyout", "ca.key", "-out", "ca.pem", "-days", "30")  # fmt: skip

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.openssl, *args], cwd=self.directory, capture_output=True, text=True, check=True
        )

    def issue(self, name: str, cn: str, *, san: str | None = None, days: int = 30) -> Path:
        """A leaf `name`.pem (key in `name`.key): v1 with only a CN, v3 when `san` is given."""
        self._run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                  "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        extra = []
        if san is not None:
            (self.directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
            extra = ["-extfile", f"{name}.ext"]
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days), *extra)  # fmt: skip
        return self.directory / f"{name}.pem"

    def openssl_accepts(self, leaf: Path, host: str) -> bool:
        verify = [self.openssl, "verify", "-CAfile", "ca.pem", "-verify_hostname", host, leaf.name]
        return subprocess.run(verify, cwd=self.directory, capture_output=True).returncode == 0

    def server_context(self, leaf: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(leaf, leaf.with_suffix(".key"))
        return context


@pytest.fixture
def openssl_ca(tmp_path: Path) -> OpensslCa:
    directory = tmp_path / "pki"
    directory.mkdir()
    return OpensslCa(directory)


def verify_config(ca: OpensslCa, port: int, tmp_path: Path):
    # "localhost" (from /etc/hosts): a host name, so the CN-only leaf can name it.
    return parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0},
        "tls": {"ca_file": str(ca.cert), "policy": {"dest.test": "verify"}},
        "routes": {"dest.test": [f"localhost:{port}"]},
        "queue": {"directory": str(tmp_path / "state")},
    })  # fmt: skip


@pytest.mark.parametrize("san", [None, "DNS:localhost"], ids=["v1-cn-only", "v3-san"])
async def test_a_private_ca_from_the_openssl_one_liner_is_trusted(
    smtp_peer, openssl_ca, tmp_path, san
):
    leaf = openssl_ca.issue("server", "localhost", san=san)
    assert openssl_ca.openssl_accepts(leaf, "localhost")
    peer = await smtp_peer(Script(ssl_context=openssl_ca.server_context(leaf)))
    [result] = await deliver(verify_config(openssl_ca, peer.port, tmp_path))
    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.used and result.tls.verified
    assert peer.transactions[0].tls


@pytest.mark.parametrize(
    ("cn", "san", "days", "expected"),
    [
        ("other.test", None, 30, ResultType.CERTIFICATE_HOST_MISMATCH),
        ("other.test", "DNS:other.test", 30, ResultType.CERTIFICATE_HOST_MISMATCH),
        # A DNS-ID present: the CN is not looked at (RFC 6125 6.4.4).
        ("localhost", "DNS:other.test", 30, ResultType.CERTIFICATE_HOST_MISMATCH),
        ("localhost", None, -1, ResultType.CERTIFICATE_EXPIRED),
    ],
    ids=["cn-wrong-name", "san-wrong-name", "cn-ignored-beside-san", "expired"],
)
async def test_what_openssl_refuses_still_fails_with_its_result_type(
    smtp_peer, openssl_ca, tmp_path, cn, san, days, expected
):
    leaf = openssl_ca.issue("server", cn, san=san, days=days)
    assert not openssl_ca.openssl_accepts(leaf, "localhost")
    peer = await smtp_peer(Script(ssl_context=openssl_ca.server_context(leaf)))
    config = verify_config(openssl_ca, peer.port, tmp_path)

    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    assert not peer.transactions
    [failed] = [a for a in result.attempts if a.result == AttemptResult.TLS_POLICY_FAILED]
    assert failed.tls is True  # TLS was up when the certificate was refused

    [host] = (await probe_domain("dest.test", config)).hosts
    assert host.event is Event.UNVERIFIED and not host.tls.verified
    event = session_event(
        "dest.test", event=host.event, tls=host.tls, mx_hostname="localhost",
        receiving_ip=host.ip, at=0.0, verification_required=True,
    )  # fmt: skip
    assert event.result_type is expected


async def test_a_leaf_from_an_unknown_ca_is_not_trusted(smtp_peer, openssl_ca, tmp_path):
    other = OpensslCa(tmp_path)
    leaf = other.issue("server", "localhost", san="DNS:localhost")
    peer = await smtp_peer(Script(ssl_context=other.server_context(leaf)))
    [host] = (await probe_domain("dest.test", verify_config(openssl_ca, peer.port, tmp_path))).hosts
    event = session_event(
        "dest.test", event=Event.UNVERIFIED, tls=host.tls, mx_hostname="localhost",
        receiving_ip=host.ip, at=0.0, verification_required=True,
    )  # fmt: skip
    assert event.result_type is ResultType.CERTIFICATE_NOT_TRUSTED
