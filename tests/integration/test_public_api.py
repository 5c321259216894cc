"""The package root is the public API: the README's example runs as written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import relaymail
from relaymail.delivery import Status
from tests.integration.conftest import hop
from tests.peers.smtp_server import SMTPPeer

README = Path(__file__).parents[2] / "README.md"


def readme_api_example() -> str:
    """The indented block of the README that starts with `from relaymail import`."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    from relaymail import "))
    block = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


async def test_the_readme_api_example_delivers_to_a_loopback_sink(smtp_peer, tmp_path):
    peer: SMTPPeer = await smtp_peer()
    path = tmp_path / "relaymail.toml"
    path.write_text(
        '[delivery]\nhelo_name = "client.relaymail.test"\n'
        f'[queue]\ndirectory = "{tmp_path / "state"}"\n'
        f'[routes]\n"y.example" = ["{hop(peer)}"]\n'
    )
    raw_bytes = b"Subject: from the README\n\nHello.\n"
    example = "async def example(path, raw_bytes):\n"
    example += textwrap.indent(readme_api_example(), "    ") + "    return results\n"
    scope: dict[str, object] = {}
    exec(compile(example, str(README), "exec"), scope)

    results = await scope["example"](path, raw_bytes)  # type: ignore[operator]

    assert [(r.recipient, r.status) for r in results] == [("u@y.example", Status.DELIVERED)]
    assert [(t.mail_from, t.recipients) for t in peer.transactions] == [
        ("a@x.example", ("u@y.example",))
    ]
    assert peer.transactions[0].data == b"Subject: from the README\r\n\r\nHello.\r\n"


def test_every_public_name_resolves_to_its_home_module() -> None:
    from relaymail import config, delivery, errors, message, queue_problem

    homes = (config, delivery, errors, message, queue_problem)
    for name in relaymail.__all__:
        value = getattr(relaymail, name)
        assert any(getattr(home, name, None) is value for home in homes), name
    assert sorted(relaymail.__all__) == sorted(set(relaymail.__all__))


def test_importing_the_configuration_leaves_delivery_and_aiosmtpd_unloaded() -> None:
    # sendmail's path: the package root must not import what its API names until asked.
    probe = (
        "import sys, relaymail, relaymail.config, relaymail.commands.sendmail, relaymail.maildrop;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('aiosmtpd', 'asyncio', 'dns', 'sqlite3', 'cryptography')"
        " or m.startswith(('relaymail.delivery', 'relaymail.inbound', 'relaymail.smtp'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded == "[]\n"
