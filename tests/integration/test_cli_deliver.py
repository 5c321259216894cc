"""`relaymail deliver` and `relaymail probe` as a user runs them: a real process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.integration.conftest import hop
from tests.peers.smtp_server import Script

RELAYMAIL = str(Path(sys.executable).parent / "relaymail")


async def run(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        RELAYMAIL, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, ca_file: Path, routes: dict[str, list[str]], **tls: str) -> Path:
    lines = [
        "[delivery]",
        'helo_name = "client.relaymail.test"',
        "command_timeout = 3.0",
        "[tls]",
        f'ca_file = "{ca_file}"',
        "[tls.policy]",
        *[f'"{domain}" = "{level}"' for domain, level in tls.items()],
        "[routes]",
        *[f'"{domain}" = {json.dumps(targets)}' for domain, targets in routes.items()],
    ]
    path = tmp_path / "relaymail.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_deliver_prints_one_json_line_per_recipient_and_exit_codes(
    smtp_peer, ca_file, tmp_path
):
    peer = await smtp_peer(
        Script(
            rcpt_replies={
                "gone@dest.test": "550 5.1.1 unknown",
                "busy@dest.test": "451 4.3.0 later",
            }
        )
    )
    config = write_config(tmp_path, ca_file, {"dest.test": [hop(peer)]})
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: hi\n\nhello\n")

    code, out, _ = await run("deliver", "--config", str(config), "--from", "a@src.test",
                             "--to", "ok@dest.test", str(message))  # fmt: skip
    assert code == 0
    [line] = out.splitlines()
    result = json.loads(line)
    assert result["recipient"] == "ok@dest.test"
    assert result["status"] == "delivered"
    assert result["host"] == hop(peer)
    assert result["reply"].startswith("250 2.0.0")
    assert result["tls"]["used"] is True and result["tls"]["verified"] is True
    assert result["tls"]["version"].startswith("TLSv1.")
    assert isinstance(result["attempts"], list) and result["reason"]

    code, out, _ = await run("deliver", "--config", str(config), "--from", "a@src.test",
                             "--to", "ok@dest.test", "--to", "gone@dest.test", "-",
                             stdin=b"Subject: x\n\nbody\n")  # fmt: skip
    assert code == 69  # some bounced, none deferred
    assert [json.loads(x)["status"] for x in out.splitlines()] == ["delivered", "bounced"]

    code, out, _ = await run("deliver", "--config", str(config), "--from", "a@src.test",
                             "--to", "gone@dest.test", "--to", "busy@dest.test", "-",
                             stdin=b"Subject: x\n\nbody\n")  # fmt: skip
    assert code == 75  # at least one deferred
    assert peer.transactions[0].data == b"Subject: hi\r\n\r\nhello\r\n"


async def test_deliver_usage_and_config_errors(tmp_path, ca_file):
    code, _, err = await run("deliver", "--from", "a@src.test")
    assert code == 64 and "--to" in err
    code, _, err = await run("deliver", "--from", "a@src.test", "--to", "not-an-address", "-")
    assert code == 64 and "not-an-address" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('[tls.policy]\n"bank.example" = "mandatory"\n')
    code, _, err = await run("deliver", "--config", str(bad), "--from", "a@src.test",
                             "--to", "u@bank.example", "-")  # fmt: skip
    assert code == 78
    assert 'tls.policy."bank.example"' in err and "mandatory" in err
    assert "Traceback" not in err


async def test_probe_shows_capabilities_tls_and_the_decision(smtp_peer, ca_file, tmp_path):
    good = await smtp_peer(Script())
    refusing = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    config = write_config(tmp_path, ca_file, {"dest.test": [hop(good), hop(refusing)]},
                          **{"dest.test": "encrypt"})  # fmt: skip
    code, out, err = await run("probe", "dest.test", "--config", str(config), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["policy"] == {"level": "encrypt", "source": '[tls.policy] "dest.test"',
                                "tempfail_fallback": True}  # fmt: skip
    first, second = report["hosts"]
    assert "PIPELINING" in first["capabilities"] and "STARTTLS" in first["capabilities"]
    assert first["tls"]["verified"] is True
    assert "relaymail test CA" in first["tls"]["certificate"]["issuer"]
    assert first["decision"]["action"] == "use TLS"
    assert second["starttls"] == "STARTTLS refused with a 4xx reply"
    assert second["decision"]["action"] == "give up on this host"
    assert not good.transactions and not refusing.transactions  # no mail sent

    code, out, _ = await run("probe", "dest.test", "--config", str(config))
    assert code == 0
    assert "encrypt" in out and "TLSv1" in out and "454 4.7.0" in out


async def test_probe_of_a_domain_that_does_not_exist_says_so_for_good(dns_server, tmp_path):
    # 68 (EX_NOHOST), as delivery bounces it; a lookup that fails for now stays 75.
    from tests.peers.dns_server import NXDomain, ServFail

    dns = dns_server([NXDomain("gone.test"), ServFail("broken.test")])
    config = tmp_path / "relaymail.toml"
    config.write_text(f'[dns]\nnameservers = ["{dns.host}:{dns.port}"]\ntimeout = 3.0\n'
                      f'[queue]\ndirectory = "{tmp_path / "queue"}"\n')  # fmt: skip
    code, out, err = await run("probe", "gone.test", "--config", str(config))
    assert code == 68, err
    assert "NXDOMAIN" in out
    code, _, err = await run("probe", "broken.test", "--config", str(config))
    assert code == 75, err
