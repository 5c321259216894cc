"""Where an installation must not be for the unit to start it (service_reach.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from relaymail.commands.service_reach import closed_to_others, hidden_by_sandbox, unreachable


@pytest.mark.parametrize(
    ("path", "hidden"),
    [
        ("/root/.pyenv/versions/3.11.7/bin/python3.11", "/root (ProtectHome=yes)"),
        ("/root", "/root (ProtectHome=yes)"),
        ("/home/ann/venv/bin/relaymail", "/home (ProtectHome=yes)"),
        ("/run/user/1000/venv/bin/python3", "/run/user (ProtectHome=yes)"),
        ("/tmp/ci/.venv/bin/relaymail", "/tmp (PrivateTmp=yes)"),
        ("/var/tmp/x/python3", "/var/tmp (PrivateTmp=yes)"),
        ("/opt/relaymail/bin/relaymail", None),
        ("/usr/bin/python3.11", None),
        ("/rootfs/bin/python3", None),  # a name that starts like /root is not under it
        ("/homer/venv/bin/relaymail", None),
        ("/run/users/x", None),
    ],
)
def test_what_the_sandbox_hides(path: str, hidden: str | None) -> None:
    assert hidden_by_sandbox(PurePosixPath(path)) == hidden


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may reach: pytest's own base directory is closed (0700)."""
    made = Path(tempfile.mkdtemp(prefix="relaymail-reach-", dir="/dev/shm"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made)


def test_a_closed_directory_on_the_way_is_named(open_dir: Path) -> None:
    top = open_dir / "venv"
    (top / "bin").mkdir(parents=True)
    script = top / "bin" / "relaymail"
    script.write_text("#!/bin/sh\n")
    top.chmod(0o755)
    (top / "bin").chmod(0o755)
    script.chmod(0o755)
    assert closed_to_others(script) is None
    top.chmod(0o700)  # as a virtualenv made by root with umask 077
    assert closed_to_others(script) == top
    top.chmod(0o755)
    script.chmod(0o700)
    assert closed_to_others(script) == script
    assert closed_to_others(top / "bin" / "missing") == top / "bin" / "missing"


def test_each_unusable_path_gives_one_reason_the_sandbox_first(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    reasons = list(
        unreachable(
            {
                "the entry point": Path("/opt/relaymail-that-is-not-there/bin/relaymail"),
                "its interpreter": Path("/root/.pyenv/bin/python3"),
                "the library": closed,
            }
        )
    )
    assert reasons == [
        "the entry point /opt/relaymail-that-is-not-there/bin/relaymail is closed to the"
        " service user at /opt/relaymail-that-is-not-there",
        "its interpreter /root/.pyenv/bin/python3 is under /root (ProtectHome=yes)",
        f"the library {closed} is under /tmp (PrivateTmp=yes)",
    ]
