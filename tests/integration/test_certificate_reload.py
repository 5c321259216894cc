"""SIGHUP re-reads the listeners' certificates (a certbot deploy hook), the configuration unchanged.

A real `relaymail serve`, real TLS clients (STARTTLS and implicit TLS): the
served certificate is told by its serial number.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from relaymail.passwords import hash_password
from tests.integration.daemon_process import Daemon, free_port, write_toml

pytestmark = pytest.mark.timeout(90)

NAME = "mx.relaymail.test"


def install(cert: trustme.LeafCert, directory: Path) -> None:
    """Put a certificate and key in place as certbot does: whole new files, renamed over."""
    chain = b"".join(pem.bytes() for pem in cert.cert_chain_pems)
    for name, blob in (("cert.pem", chain), ("key.pem", cert.private_key_pem.bytes())):
        temporary = directory / f".{name}.new"
        temporary.write_bytes(blob)
        os.replace(temporary, directory / name)


def serial(cert: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


class Session:
    """An SMTP client session over TLS: STARTTLS on `port`, or TLS from the start."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ca: trustme.CA, *, implicit: bool) -> Session:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        if implicit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                          server_hostname=NAME)  # fmt: skip
            session = cls(reader, writer)
            await session.reply()
            return session
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        session = cls(reader, writer)
        await session.reply()
        assert (await session.command("EHLO client.test")).startswith("250")
        assert (await session.command("STARTTLS")).startswith("220")
        await writer.start_tls(context, server_hostname=NAME)
        return session

    async def reply(self) -> str:
        lines = []
        while True:
            line = (await self.reader.readline()).decode()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "".join(lines)

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    def serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def start(tmp_path: Path, tls_ca: trustme.CA) -> tuple[Daemon, int, int]:
    starttls, smtps = free_port(), free_port()
    certs = {"tls_cert_file": tmp_path / "cert.pem", "tls_key_file": tmp_path / "key.pem"}
    config = write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": NAME},
        "queue": {"directory": tmp_path / "queue"},
        "listener": [{"address": f"127.0.0.1:{starttls}", **certs},
                     {"address": f"127.0.0.1:{smtps}", "mode": "smtps", **certs}],
        "users": {"alice": hash_password("secret")},  # an smtps listener takes AUTH
    })  # fmt: skip
    daemon = Daemon(config, starttls, tmp_path / "serve.log")
    await daemon.start()
    return daemon, starttls, smtps


async def reloaded(daemon: Daemon, line: str, times: int) -> None:
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    async with asyncio.timeout(20):
        while daemon.text().count(line) < times:
            await asyncio.sleep(0.05)


async def test_sighup_serves_renewed_files_to_new_sessions_and_keeps_running_ones(
    tmp_path: Path, tls_ca: trustme.CA
) -> None:
    old, new = tls_ca.issue_cert(NAME), tls_ca.issue_cert(NAME)
    install(old, tmp_path)
    daemon, starttls, smtps = await start(tmp_path, tls_ca)
    assert daemon.process is not None
    pid = daemon.process.pid
    try:
        running = await Session.open(starttls, tls_ca, implicit=False)
        assert running.serial() == serial(old)
        install(new, tmp_path)  # the configuration file is not touched
        await reloaded(daemon, "cert.pem loaded", 2)  # one line per listener
        for port, implicit in ((starttls, False), (smtps, True)):
            session = await Session.open(port, tls_ca, implicit=implicit)
            assert session.serial() == serial(new)
            assert (await session.command("QUIT")).startswith("221")
            await session.close()
        # The session that was open goes on with the certificate it had.
        assert (await running.command("EHLO client.test")).startswith("250")
        assert running.serial() == serial(old)
        await running.close()
        assert daemon.process.returncode is None and daemon.process.pid == pid
    finally:
        assert await daemon.stop() == 0


@pytest.mark.parametrize("broken", ["garbage certificate", "key of another certificate"])
async def test_a_broken_renewal_keeps_the_certificate_in_use(
    tmp_path: Path, tls_ca: trustme.CA, broken: str
) -> None:
    good = tls_ca.issue_cert(NAME)
    install(good, tmp_path)
    daemon, starttls, smtps = await start(tmp_path, tls_ca)
    try:
        if broken == "garbage certificate":
            (tmp_path / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n")
        else:
            (tmp_path / "key.pem").write_bytes(tls_ca.issue_cert(NAME).private_key_pem.bytes())
        workers = max(1, len(daemon.workers()))  # each worker refuses for itself
        await reloaded(daemon, "reload refused", workers)
        refusals = [line for line in daemon.text().splitlines() if "reload refused" in line]
        assert len(refusals) == workers
        assert all("listener[0].tls_" in refusal for refusal in refusals)
        for port, implicit in ((starttls, False), (smtps, True)):
            session = await Session.open(port, tls_ca, implicit=implicit)
            assert session.serial() == serial(good)
            await session.close()
    finally:
        assert await daemon.stop() == 0
