"""Nothing from the command line or a remote reply can add a header line or a message.

`sendmail` runs as a real process writing the real maildrop (made as the daemon
makes it); the DSN case runs the daemon against a next hop whose reply is built
to inject.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import shutil
import tempfile
from email.message import EmailMessage
from email.policy import Policy
from pathlib import Path

import pytest

from relaymail.config import load_config
from relaymail.inbound.pickup import Pickup, open_maildrop
from relaymail.message import Envelope, Origin
from relaymail.message_data import MessageData
from relaymail.queue.memory import MemoryStore
from relaymail.queue.store import TraceHeader
from tests.integration.daemon_process import RELAYMAIL, free_port, run_command, write_toml
from tests.integration.test_daemon import bounce_for, dsns

pytestmark = pytest.mark.timeout(90)

EX_USAGE, EX_DATAERR, EX_NOUSER = 64, 65, 67
# A -F name that smuggled a second message with a forged sender to a lax next hop.
SMUGGLING = "Eve\n.\nMAIL FROM:<admin@example.org>\nRCPT TO:<victim@dest.test>\nDATA\nforged"


def sendmail_config(tmp_path: Path, *sizes: str) -> Path:
    sections: dict[str, object] = {
        "delivery": {"helo_name": "relay.relaymail.test"},
        "queue": {"directory": tmp_path / "queue"},
    }
    if sizes:
        sections["listener"] = [
            {"address": f"127.0.0.1:{free_port()}", "max_message_size": size} for size in sizes
        ]
    open_maildrop(tmp_path / "queue")
    return write_toml(tmp_path / "relaymail.toml", sections)


async def sendmail(config: Path, *args: str, stdin: bytes = b"Subject: hi\n\nbody\n") -> tuple[
    int, str
]:
    code, _, err = await run_command(RELAYMAIL, "sendmail", "-C", str(config), *args, stdin=stdin)
    assert "Traceback" not in err
    return code, err


def dropped(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "queue" / "maildrop").iterdir() if p.is_file())


async def queued(tmp_path: Path, policy: Policy = email.policy.default) -> list[EmailMessage]:
    """The messages as the daemon's pickup queues them (it adds From, Date, Message-ID).

    The pickup runs on copies, so the maildrop keeps its files for the next look.
    """
    config = load_config(tmp_path / "relaymail.toml")
    spooled: list[bytes] = []

    async def spool(
        envelope: Envelope, data: MessageData, trace: TraceHeader, *, origin: Origin,
        pickup: str, arrived: float,
    ) -> str:  # fmt: skip
        spooled.append(data.read())
        return f"Q{len(spooled)}"

    maildrop = Path(tempfile.mkdtemp(dir=tmp_path))
    for file in dropped(tmp_path):
        shutil.copy(file, maildrop / file.name)
    await Pickup(maildrop, spool, MemoryStore(), lambda: config, frozenset({0})).scan()
    return [
        email.message_from_bytes(data, policy=policy)  # type: ignore[misc]
        for data in spooled
    ]


@pytest.mark.parametrize(
    "name",
    [SMUGGLING, "Eve\r\nBcc: all@dest.test", "Eve\rX: y", "Eve\x85X: y",
     "Eve\u2028X: y", "Eve\tX"],
)  # fmt: skip
async def test_sendmail_refuses_a_full_name_with_line_breaks_or_controls(tmp_path, name):
    config = sendmail_config(tmp_path)
    code, err = await sendmail(config, "-f", "eve@src.test", "-F", name, "u@dest.test")
    assert code == EX_USAGE
    assert len(err.splitlines()) == 1
    assert not dropped(tmp_path)  # nothing was queued


@pytest.mark.parametrize(
    "name",
    ['J "the boss" <admin@example.org>', "Jörg Müller", "Smith, John", "=?utf-8?q?admin?=",
     "back\\slash", "Plain Name", "長い名前" * 12],
)  # fmt: skip
async def test_sendmail_full_name_is_quoted_or_encoded_and_reads_back_as_given(tmp_path, name):
    config = sendmail_config(tmp_path)
    code, err = await sendmail(config, "-f", "eve@src.test", "-F", name, "u@dest.test")
    assert code == 0, err
    [message] = await queued(tmp_path)
    [mailbox] = message["From"].addresses
    assert mailbox.addr_spec == "eve@src.test"  # no other address could be forged
    # decode_header drops the space between adjacent encoded-words (RFC 2047 6.2),
    # which the policy parser's display_name keeps.
    [raw] = await queued(tmp_path, email.policy.compat32)
    phrase, address = email.utils.parseaddr(raw["From"])
    assert address == "eve@src.test"
    assert str(email.header.make_header(email.header.decode_header(phrase))) == name
    assert message["Subject"] == "hi"


@pytest.mark.parametrize("sender", ["eve@src.test\nBcc: all@dest.test", "a@b>, <admin@x.test"])
async def test_sendmail_refuses_a_sender_that_could_inject(tmp_path, sender):
    config = sendmail_config(tmp_path)
    code, err = await sendmail(config, "-f", sender, "u@dest.test")
    assert code == EX_NOUSER
    assert len(err.splitlines()) == 1
    assert not dropped(tmp_path)


async def test_sendmail_t_refuses_a_recipient_header_that_holds_a_control(tmp_path):
    config = sendmail_config(tmp_path)
    message = b"To: =?utf-8?q?u=0D=0A?= <u\x01@dest.test>\nSubject: x\n\nbody\n"
    code, err = await sendmail(config, "-t", "-f", "eve@src.test", stdin=message)
    assert code == EX_NOUSER
    assert len(err.splitlines()) == 1


async def test_sendmail_takes_up_to_the_largest_listener_limit_and_no_more(tmp_path):
    config = sendmail_config(tmp_path, "1K", "4K")
    body = b"x" * 70 + b"\n"
    fits = b"Subject: big\n\n" + body * 50  # 3.6 KB, over the first listener's limit
    code, err = await sendmail(config, "-f", "a@src.test", "u@dest.test", stdin=fits)
    assert code == 0, err
    code, err = await sendmail(config, "-f", "a@src.test", "u@dest.test", stdin=fits + body * 10)
    assert code == EX_DATAERR
    assert len(err.splitlines()) == 1
    # Without -i, the dot ends the message: what follows it is never read or counted.
    code, err = await sendmail(config, "-f", "a@src.test", "u@dest.test",
                               stdin=b"Subject: dot\n\nshort\n.\n" + body * 100)  # fmt: skip
    assert code == 0, err
    assert [m["Subject"] for m in await queued(tmp_path)] == ["big", "dot"]


async def test_sendmail_refuses_more_than_the_default_35m(tmp_path):
    config = sendmail_config(tmp_path)
    code, err = await sendmail(config, "-i", "-f", "a@src.test", "u@dest.test",
                               stdin=b"Subject: huge\n\n" + b"x" * (36 << 20))  # fmt: skip
    assert code == EX_DATAERR
    assert len(err.splitlines()) == 1
    assert not dropped(tmp_path)


async def test_a_hostile_reply_cannot_add_lines_to_the_bounce(smtp_peer, ca_file, tmp_path):
    # C1 NEL and U+2028 are line breaks to str.splitlines() readers; the 8-bit Subject
    # makes the DSN international, so its fields keep non-ASCII text.
    reply = "550 5.1.1 no such user \x85Bcc: all@src.test \u2028X-Forged: yes \x1b[2J\r\n".encode()
    mailbox = await bounce_for(smtp_peer, ca_file, tmp_path, reply, "Grüße")
    [transaction] = [t for t in mailbox.transactions if t.mail_from == ""]
    text = transaction.data.decode("utf-8")
    assert "no such user" in text
    for control in ("\x85", "\u2028", "\x1b"):
        assert control not in text
    [bounce] = dsns(mailbox)
    assert bounce["Bcc"] is None and bounce["X-Forged"] is None
