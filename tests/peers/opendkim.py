"""Debian's OpenDKIM as the independent verifier: `opendkim-testmsg`, asking our DNS only.

Theory of operation. opendkim-testmsg takes a message on stdin and verifies its signatures
through libopendkim, which looks the keys up with the C library's resolver: whatever
/etc/resolv.conf names, on port 53, with no option to point it elsewhere. So it runs in
namespaces of its own (`unshare --user --map-root-user --mount --net`): a network with
nothing but its own loopback, where our test DNS server (tests.peers.dns_server, the same
unbound the dns_server fixture runs) answers on 127.0.0.1:53, and a private bind mount of
/etc/resolv.conf naming it. Nothing outside is reachable from there, the Internet's DNS
included, and the host's resolv.conf is untouched.

`opendkim_verify` writes the messages and records into a work directory and runs this
module inside the namespaces (`python -m tests.peers.opendkim WORKDIR`), which starts
unbound, runs opendkim-testmsg once per message and writes the verdicts back as JSON.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.peers.binaries import peer_binary
from tests.peers.dns_server import DNSEntry, DNSServer

_ROOT = Path(__file__).resolve().parents[2]
_SIOCSIFFLAGS = 0x8914  # <linux/sockios.h>
_IFF_UP = 0x1


@dataclass(frozen=True)
class OpenDkimVerdict:
    status: int
    """opendkim-testmsg's exit status: 0 when the signature it judged verified."""
    error: str
    """What it printed (nothing when it passed), e.g. "dkim_eom(): Bad signature"."""

    @property
    def passed(self) -> bool:
        return self.status == 0 and not self.error


def opendkim_verify(
    messages: Sequence[bytes], records: Iterable[DNSEntry], workdir: Path
) -> list[OpenDkimVerdict]:
    """One verdict per message, the keys looked up in `records` (served by unbound)."""
    testmsg = peer_binary("opendkim-testmsg")
    unshare = peer_binary("unshare")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "records.pickle").write_bytes(pickle.dumps(list(records)))
    (workdir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    for i, message in enumerate(messages):
        (workdir / f"message-{i}.eml").write_bytes(message)
    run = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "--net", "--",
         sys.executable, "-m", "tests.peers.opendkim", str(workdir), testmsg, str(len(messages))],
        cwd=_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(_ROOT)},
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"the opendkim namespace failed ({run.returncode}):\n{run.stderr}")
    verdicts = json.loads((workdir / "verdicts.json").read_text())
    return [OpenDkimVerdict(v["status"], v["error"]) for v in verdicts]


def _loopback_up() -> None:
    # A new network namespace has its loopback down; `ip link set lo up` without iproute2.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", _IFF_UP))


def _inside(workdir: Path, testmsg: str, count: int) -> None:
    """Runs in the namespaces: our DNS on 127.0.0.1:53, resolv.conf naming it, the checks."""
    _loopback_up()
    subprocess.run(
        [peer_binary("mount"), "--bind", str(workdir / "resolv.conf"), "/etc/resolv.conf"],
        check=True,
    )
    records = pickle.loads((workdir / "records.pickle").read_bytes())
    verdicts = []
    with DNSServer(records, workdir=workdir / "unbound", port=53):
        for i in range(count):
            with (workdir / f"message-{i}.eml").open("rb") as message:
                run = subprocess.run(
                    [testmsg], stdin=message, capture_output=True, text=True, timeout=30
                )
            error = (run.stdout + run.stderr).strip()
            verdicts.append({"status": run.returncode, "error": error})
    (workdir / "verdicts.json").write_text(json.dumps(verdicts))


if __name__ == "__main__":
    _inside(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
