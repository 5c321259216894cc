"""Where an installation must not be for the unit to start it (service_reach.py)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from relaymail.commands import install
from relaymail.commands.service_reach import (
    ADVICE,
    Needed,
    closed_to_others,
    hidden_by_sandbox,
    installation_paths,
    unreachable,
)


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
    assert closed_to_others(script, executable=True) is None
    top.chmod(0o700)  # as a virtualenv made by root with umask 077
    assert closed_to_others(script) == f"is closed to the service user at {top}"
    top.chmod(0o755)
    script.chmod(0o744)  # readable, not runnable by others
    assert closed_to_others(script) is None
    assert closed_to_others(script, executable=True) == f"is closed to the service user at {script}"
    script.chmod(0o700)
    assert closed_to_others(script) == f"is closed to the service user at {script}"
    assert closed_to_others(top / "bin" / "missing") == "does not exist"
    assert (
        closed_to_others(top / "gone" / "python3") == f"does not exist ({top / 'gone'} is missing)"
    )


def test_each_unusable_path_gives_one_reason_the_sandbox_first(open_dir: Path) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    reasons = list(
        unreachable(
            (
                Needed("the entry point", Path("/opt/relaymail-that-is-not-there/bin/relaymail")),
                Needed("its interpreter", Path("/root/.pyenv/bin/python3"), executable=True),
                Needed("the standard library", Path("/var/tmp/relaymail-absent/lib")),
                Needed("the relaymail package", closed),
            )
        )
    )
    assert reasons == [
        "the entry point /opt/relaymail-that-is-not-there/bin/relaymail does not exist"
        " (/opt/relaymail-that-is-not-there is missing)",
        "its interpreter /root/.pyenv/bin/python3 is under /root (ProtectHome=yes)",
        "the standard library /var/tmp/relaymail-absent/lib is under /var/tmp (PrivateTmp=yes)",
        f"the relaymail package {closed} is closed to the service user at {closed}",
    ]


def test_a_link_into_a_hidden_directory_is_followed(open_dir: Path) -> None:
    link = open_dir / "relaymail"
    link.symlink_to("/root/venv/bin/relaymail")
    paths = installation_paths(link)
    roles = {item.role: item.path for item in paths}
    assert roles["the entry point's target"] == Path("/root/venv/bin/relaymail")
    assert "the entry point's target /root/venv/bin/relaymail is under /root (ProtectHome=yes)" in (
        list(unreachable(paths))
    )


def test_the_warning_comes_after_the_plan_and_the_exit_stays_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy2(f"/etc/{name}", root / "etc" / name)
    hidden = (Needed("its interpreter", Path("/root/.pyenv/versions/3.11.7/bin/python3.11")),)
    monkeypatch.setattr(install, "installation_paths", lambda _entry: hidden)
    code = install.run_install(argparse.Namespace(root=str(root), dry_run=True))
    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines()[0] == "would create group relaymail"
    assert err == (
        "relaymail: install-system: warning: the unit cannot start relaymail: its interpreter"
        " /root/.pyenv/versions/3.11.7/bin/python3.11 is under /root (ProtectHome=yes); "
        f"{ADVICE}\n"
    )
