"""DKIM end to end: `relaymail serve` signs, a loopback sink receives, OpenDKIM verifies.

The verifier is Debian's opendkim-testmsg, not dkimpy judging its own work; it looks the
public keys up in the test DNS server (tests/peers/opendkim.py says how it is kept there).
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import pytest
import trustme

from relaymail.dkim.keygen import generate_key, record_value, write_key
from relaymail.dkim.keys import KeyAlgorithm, SigningKey
from relaymail.passwords import hash_password
from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, free_port, run_command
from tests.integration.test_daemon import make_config, start_daemon, wait_for
from tests.peers.dns_server import TXT
from tests.peers.opendkim import opendkim_verify
from tests.peers.smtp_server import Script, SMTPPeer

pytestmark = pytest.mark.timeout(90)

DOMAIN = "example.org"


def message(author: str = f"Ann <ann@{DOMAIN}>", extra: str = "") -> bytes:
    return (
        f"From: {author}\r\nTo: u@dest.test\r\nSubject: signed at the queue\r\n"
        "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\r\n"
        "Hello.\r\n.a line with a leading dot\r\n\r\ntrailing blank lines\r\n\r\n\r\n"
    ).encode()


def new_key(tmp_path: Path, selector: str, algorithm: KeyAlgorithm) -> tuple[Path, TXT]:
    """A key file for `selector`, and the TXT record that publishes its public half."""
    pem, key = generate_key(algorithm)
    path = tmp_path / f"{selector}.key"
    write_key(path, pem)
    return path, record(selector, key)


def record(selector: str, key: SigningKey) -> TXT:
    return TXT(f"{selector}._domainkey.{DOMAIN}", record_value(key))


def dkim_table(keys: list[tuple[str, Path]], **extra: Any) -> str:
    (selector, key_file), *more = keys
    lines = [f'[dkim."{DOMAIN}"]', f'selector = "{selector}"', f'key_file = "{key_file}"']
    if more:
        entries = ", ".join(f'{{ selector = "{s}", key_file = "{k}" }}' for s, k in more)
        lines.append(f"keys = [{entries}]")
    lines += [f"{name} = {value!r}".replace("'", '"') for name, value in extra.items()]
    return "\n".join(lines) + "\n"


async def send(port: int, data: bytes, tmp_path: Path, *args: str) -> str:
    file = tmp_path / "message.eml"
    file.write_bytes(data)
    code, out, err = await run_command(
        "swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test",
        "--from", "ann@example.org", "--to", "u@dest.test", "--data", str(file), *args,
    )  # fmt: skip
    assert code == 0, out + err
    return out


def signatures(data: bytes) -> list[dict[str, str]]:
    """The tags of each DKIM-Signature field, top first."""
    parsed = email.message_from_bytes(data, policy=email.policy.compat32)
    found = []
    for value in parsed.get_all("DKIM-Signature") or []:
        text = re.sub(r"\s+", "", str(value))
        found.append(dict(tag.split("=", 1) for tag in text.split(";") if tag))
    return found


def without_signature(data: bytes, selector: str) -> bytes:
    """`data` with the DKIM-Signature field of `selector` cut out (the others stay valid)."""
    headers, _, body = data.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", headers)
    mine = re.compile(rb"(?i)dkim-signature:.*\bs=" + re.escape(selector.encode()) + rb";", re.S)
    kept = [f for f in fields if not mine.match(f)]
    assert len(kept) == len(fields) - 1
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


async def relay_one(tmp_path: Path, peer: SMTPPeer, ca_file: Path, dkim: str,
                    data: bytes, **listener: Any) -> tuple[bytes, str]:  # fmt: skip
    """Start serve with `dkim`, send `data` from 127.0.0.1, return it as the sink got it."""
    port = free_port()
    sections: dict[str, Any] = {}
    if listener:
        sections["listener"] = [{"address": f"127.0.0.1:{port}", "mode": "relay", **listener}]
    config = make_config(tmp_path, port, ca_file, {"dest.test": [hop(peer)]}, **sections)
    config.write_text(config.read_text() + dkim)
    daemon = await start_daemon(tmp_path, config, port)
    try:
        await send(port, data, tmp_path)
        await wait_for(lambda: peer.transactions)
    finally:
        await daemon.stop()
    return peer.transactions[0].data, daemon.text()


async def test_rsa_and_ed25519_signatures_of_relay_network_mail_pass_opendkim(
    smtp_peer, ca_file, tmp_path
):
    peer = await smtp_peer(Script())
    rsa_file, rsa_record = new_key(tmp_path, "rsa2026", KeyAlgorithm.RSA)
    ed_file, ed_record = new_key(tmp_path, "ed2026", KeyAlgorithm.ED25519)
    dkim = dkim_table([("rsa2026", rsa_file), ("ed2026", ed_file)])
    received, log = await relay_one(tmp_path, peer, ca_file, dkim, message())

    assert received.startswith(b"Received: from client.test")  # our trace, above the signatures
    rsa, ed = signatures(received)
    assert (rsa["a"], rsa["s"], rsa["d"], rsa["c"]) == (
        "rsa-sha256", "rsa2026", DOMAIN, "relaxed/relaxed")  # fmt: skip
    assert (ed["a"], ed["s"], ed["d"]) == ("ed25519-sha256", "ed2026", DOMAIN)
    signed = rsa["h"].lower().split(":")
    assert signed.count("from") == 2  # oversigned: no second From: can be added
    assert {"to", "subject", "date", "message-id", "mime-version", "content-type"} <= set(signed)
    assert "received" not in signed
    assert re.search(r"dkim id=\S+ signed d=example.org s=rsa2026,ed2026", log)

    tampered = received.replace(b"Hello.", b"Hello!")
    verdicts = opendkim_verify(
        [received, without_signature(received, "ed2026"), without_signature(received, "rsa2026"),
         tampered, without_signature(tampered, "rsa2026")],
        [rsa_record, ed_record], tmp_path / "opendkim",
    )  # fmt: skip
    assert [v.passed for v in verdicts] == [True, True, True, False, False], verdicts
    assert "Bad signature" in verdicts[3].error


async def test_mail_relayed_from_outside_is_not_signed(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    key_file, _ = new_key(tmp_path, "rsa2026", KeyAlgorithm.RSA)
    # 127.0.0.1 is outside relay_networks: it may only send to relay_domains, as any MTA.
    received, log = await relay_one(
        tmp_path, peer, ca_file, dkim_table([("rsa2026", key_file)]), message(),
        relay_networks=["192.0.2.0/24"], relay_domains=["dest.test"],
    )  # fmt: skip
    assert signatures(received) == []
    assert "dkim id=" not in log


async def test_mail_whose_from_domain_has_no_key_is_not_signed(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    key_file, _ = new_key(tmp_path, "rsa2026", KeyAlgorithm.RSA)
    received, log = await relay_one(
        tmp_path, peer, ca_file, dkim_table([("rsa2026", key_file)]),
        message(author="Bob <bob@elsewhere.test>"),
    )  # fmt: skip
    assert signatures(received) == []
    assert re.search(r"dkim id=\S+ not signed: no key for elsewhere.test", log)


async def test_two_authors_are_not_signed_and_the_mail_still_goes(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    key_file, _ = new_key(tmp_path, "rsa2026", KeyAlgorithm.RSA)
    received, log = await relay_one(
        tmp_path, peer, ca_file, dkim_table([("rsa2026", key_file)]),
        message(author=f"ann@{DOMAIN}, eve@{DOMAIN}"),
    )  # fmt: skip
    assert signatures(received) == [] and b"Hello." in received
    assert re.search(r"dkim id=\S+ not signed: 2 addresses in From:", log)


async def test_a_domain_may_leave_relay_network_clients_unsigned(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    key_file, _ = new_key(tmp_path, "rsa2026", KeyAlgorithm.RSA)
    dkim = dkim_table([("rsa2026", key_file)], sign=["local", "authenticated"])
    received, _ = await relay_one(tmp_path, peer, ca_file, dkim, message())
    assert signatures(received) == []


async def test_authenticated_and_local_mail_is_signed(smtp_peer, ca_file, tmp_path, tls_ca):
    from relaymail.inbound.pickup import open_maildrop

    peer = await smtp_peer(Script())
    key_file, key_record = new_key(tmp_path, "ed2026", KeyAlgorithm.ED25519)
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    port = free_port()
    config = make_config(
        tmp_path, port, ca_file, {"dest.test": [hop(peer)]},
        listener=[{"address": f"127.0.0.1:{port}", "mode": "submission",
                   "relay_networks": ["192.0.2.0/24"],
                   "tls_cert_file": tmp_path / "cert.pem", "tls_key_file": tmp_path / "key.pem"}],
        users={"ann": hash_password("secret", log2_n=10)},
        local={"domain": "example.org"},  # ann's own address is ann@example.org
    )  # fmt: skip
    config.write_text(config.read_text() + dkim_table([("ed2026", key_file)]))
    open_maildrop(tmp_path / "queue")
    daemon = await start_daemon(tmp_path, config, port)
    try:
        await send(port, message(), tmp_path, "--tls", "--auth", "PLAIN",
                   "--auth-user", "ann", "--auth-password", "secret")  # fmt: skip
        code, _, err = await run_command(
            RELAYMAIL, "sendmail", "-C", str(config), "-i", "u@dest.test",
            stdin=b"From: cron@example.org\nSubject: from cron\n\nnightly\n",
        )  # fmt: skip
        assert code == 0, err
        await wait_for(lambda: len(peer.transactions) == 2)
    finally:
        await daemon.stop()
    arrived = sorted((t.data for t in peer.transactions), key=lambda d: b"cron" in d)
    assert [s["s"] for d in arrived for s in signatures(d)] == ["ed2026", "ed2026"]
    verdicts = opendkim_verify(arrived, [key_record], tmp_path / "opendkim")
    assert [v.passed for v in verdicts] == [True, True], verdicts


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
async def test_the_record_dkim_keygen_prints_verifies(smtp_peer, ca_file, tmp_path, kind):
    peer = await smtp_peer(Script())
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"dest.test": [hop(peer)]})
    key_file = tmp_path / "keys" / "example.org.key"
    key_file.parent.mkdir()
    config.write_text(config.read_text() + dkim_table([("kg", key_file)]))
    code, out, err = await run_command(
        RELAYMAIL, "dkim", "keygen", DOMAIN, "kg", "--type", kind, "--config", str(config)
    )
    assert code == 0, err
    assert key_file.stat().st_mode & 0o777 == 0o600
    name, strings = re.fullmatch(r'(\S+) IN TXT ((?:"[^"]*" ?)+)\n', out).groups()  # type: ignore[union-attr]
    assert name == f"kg._domainkey.{DOMAIN}."
    parts = re.findall(r'"([^"]*)"', strings)
    assert all(len(p) <= 255 for p in parts) and (len(parts) > 1) == (kind == "rsa")
    published = TXT(name.rstrip("."), "".join(parts))

    again = await run_command(RELAYMAIL, "dkim", "keygen", DOMAIN, "kg", "--config", str(config))
    assert again[0] == 73 and "not overwritten" in again[2]

    daemon = await start_daemon(tmp_path, config, port)
    try:
        await send(port, message(), tmp_path)
        await wait_for(lambda: peer.transactions)
    finally:
        await daemon.stop()
    [verdict] = opendkim_verify([peer.transactions[0].data], [published], tmp_path / "opendkim")
    assert verdict.passed, verdict


def _weak_rsa(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path.write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))


def _ec(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))


def _ed25519(path: Path) -> None:
    path.write_bytes(generate_key(KeyAlgorithm.ED25519)[0])


def _certificate(path: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(path))


@pytest.mark.parametrize(
    ("make", "mode", "reason"),
    [
        (_weak_rsa, 0o600, "an RSA key of 1024 bits; DKIM needs 2048"),
        (_ec, 0o600, "DKIM signs with RSA or Ed25519 only"),
        (_certificate, 0o600, "holds no PEM private key"),
        (lambda p: p.write_text("not a key\n"), 0o600, "holds no private key"),
        (_ed25519, 0o640, "readable or writable by others (mode 0640; chmod 600 it)"),
        (None, 0, "cannot use"),
    ],
)  # fmt: skip
async def test_serve_refuses_an_unusable_key_naming_it(tmp_path, ca_file, make, mode, reason):
    key_file = tmp_path / "bad.key"
    if make is not None:
        make(key_file)
        key_file.chmod(mode)
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"dest.test": ["127.0.0.1:9"]})
    config.write_text(config.read_text() + dkim_table([("s1", key_file)]))
    code, _, err = await run_command(RELAYMAIL, "serve", "--config", str(config))
    assert code == 78
    *_, last = err.splitlines()  # after the listeners' start-up lines
    assert last.startswith(f'relaymail: configuration error: dkim."{DOMAIN}".key_file: '), err
    assert reason in last and "Traceback" not in err


async def test_sighup_takes_a_rotated_key_and_refuses_a_bad_one(smtp_peer, ca_file, tmp_path):
    import signal

    peer = await smtp_peer(Script())
    old_file, old_record = new_key(tmp_path, "old", KeyAlgorithm.ED25519)
    new_file, new_record = new_key(tmp_path, "new", KeyAlgorithm.RSA)
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"dest.test": [hop(peer)]})
    base = config.read_text()
    config.write_text(base + dkim_table([("old", old_file)]))
    daemon = await start_daemon(tmp_path, config, port)
    try:
        await send(port, message(), tmp_path)
        await wait_for(lambda: len(peer.transactions) == 1)
        new_file.chmod(0o644)  # a mistake on the way: refused, the running key stays
        config.write_text(base + dkim_table([("new", new_file)]))
        await daemon.signal(signal.SIGHUP)
        await wait_for(lambda: "reload refused" in daemon.text())
        await send(port, message(), tmp_path)
        await wait_for(lambda: len(peer.transactions) == 2)
        new_file.chmod(0o600)
        await daemon.signal(signal.SIGHUP)
        await wait_for(lambda: "reloaded" in daemon.text())
        await send(port, message(), tmp_path)
        await wait_for(lambda: len(peer.transactions) == 3)
    finally:
        assert await daemon.stop() == 0
    arrived = [t.data for t in peer.transactions]
    assert [[s["s"] for s in signatures(d)] for d in arrived] == [["old"], ["old"], ["new"]]
    assert 'dkim."example.org".key_file' in daemon.text()
    verdicts = opendkim_verify(arrived, [old_record, new_record], tmp_path / "opendkim")
    assert [v.passed for v in verdicts] == [True, True, True], verdicts
