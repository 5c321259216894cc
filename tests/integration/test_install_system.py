"""`relaymail install-system` into a staging root, as a real process, and its unit verified.

The staging root starts with a copy of this system's account files, so the
real useradd/groupadd add the service user there (useradd --prefix) and the
host is left untouched. `systemd-analyze verify` checks the unit it wrote.
"""

from __future__ import annotations

import shutil
import stat
import sysconfig
from pathlib import Path

import pytest

from relaymail.commands.service_reach import ADVICE, installation_paths, unreachable
from relaymail.config import load_config
from relaymail.config_file import read_toml
from relaymail.sendmail_settings import settings_of, submit_settings
from tests.integration.daemon_process import RELAYMAIL, run_command

pytestmark = pytest.mark.timeout(120)

SCRIPTS = Path(sysconfig.get_path("scripts"))
UNIT = "etc/systemd/system/relaymail.service"
WARNING = "relaymail: install-system: warning:"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    staging = tmp_path / "root"
    (staging / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy2(f"/etc/{name}", staging / "etc" / name)
    return staging


async def install(root: Path, *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    code, out, err = await run_command(
        *prefix, RELAYMAIL, "install-system", "--root", str(root), *args
    )
    assert "Traceback" not in err
    return code, out.splitlines() + err.splitlines()


def account(root: Path, database: str, name: str) -> int:
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in {database}")


async def test_install_system_creates_user_spool_config_unit_and_sendmail_link(root: Path) -> None:
    code, lines = await install(root)
    assert code == 0, lines
    uid, gid = account(root, "passwd", "relaymail"), account(root, "group", "relaymail")
    spool = root / "var/spool/relaymail"
    for directory, mode in ((spool, 0o711), (spool / "maildrop", 0o1733)):
        info = directory.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, mode)
    config = load_config(root / "etc/relaymail/relaymail.toml")
    kept = submit_settings(str(root / "etc/relaymail/relaymail.toml"))  # from the copy beside it
    assert (root / "etc/relaymail/relaymail.toml.cache").stat().st_mode & 0o777 == 0o644
    assert kept == settings_of(read_toml(str(root / "etc/relaymail/relaymail.toml")))
    assert config.server.user == "relaymail"
    assert config.queue.directory == Path("/var/spool/relaymail")
    assert [(s.host, s.port) for s in config.listeners()] == [("127.0.0.1", 25)]
    unit = (root / UNIT).read_text()
    assert f"ExecStart={SCRIPTS / 'relaymail'} serve " in unit
    assert "User=relaymail" in unit and "Type=notify" in unit
    assert (root / "usr/sbin/sendmail").readlink() == SCRIPTS / "sendmail"


async def test_systemd_analyze_verify_accepts_the_unit_and_rejects_a_broken_one(
    root: Path,
) -> None:
    assert (await install(root))[0] == 0
    code, out, err = await run_command("systemd-analyze", "verify", "--man=no", str(root / UNIT))
    # verify only warns (exit 0) about a key it cannot parse: no output at all is the bar.
    assert (code, out + err) == (0, "")
    broken = root / "broken.service"
    unit = (root / UNIT).read_text()
    broken.write_text(unit.replace(f"ExecStart={SCRIPTS}", "ExecStart=/nonexistent"))
    code, _, err = await run_command("systemd-analyze", "verify", "--man=no", str(broken))
    assert code != 0 and "/nonexistent/relaymail is not executable" in err


async def test_a_second_run_keeps_the_configuration_and_changes_nothing(root: Path) -> None:
    assert (await install(root))[0] == 0
    config = root / "etc/relaymail/relaymail.toml"
    config.write_text(config.read_text() + "# edited by the administrator\n")
    edited = config.read_text()
    code, lines = await install(root)
    assert code == 0
    assert config.read_text() == edited
    steps = [line for line in lines if not line.startswith(WARNING)]
    assert [line.split()[0] for line in steps] == ["leave"] * len(steps)


async def test_a_sendmail_that_another_mta_installed_is_left_alone(root: Path) -> None:
    theirs = root / "usr/sbin/sendmail"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("#!/bin/sh\n# postfix\n")
    code, lines = await install(root)
    assert code == 0
    assert theirs.read_text() == "#!/bin/sh\n# postfix\n" and not theirs.is_symlink()
    assert any(line.startswith("leave /usr/sbin/sendmail: ") for line in lines)


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)])
async def test_an_installation_the_unit_cannot_start_is_named_last(
    root: Path, dry_run: tuple[str, ...]
) -> None:
    """Where this suite's relaymail lives decides which: a checkout under /tmp or /root,
    an interpreter from pyenv under /root, or a clean /opt or /usr installation."""
    reasons = list(unreachable(installation_paths(SCRIPTS / "relaymail")))
    code, lines = await install(root, *dry_run)
    assert code == 0
    warned = [line for line in lines if line.startswith(WARNING)]
    if reasons:
        assert warned == [f"{WARNING} the unit cannot start relaymail: {'; '.join(reasons)};"
                          f" {ADVICE}"]  # fmt: skip
        assert lines[-1] == warned[0]
    else:
        assert warned == []


async def test_dry_run_prints_the_plan_and_changes_nothing(root: Path) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    passwd = (root / "etc/passwd").read_text()
    code, lines = await install(root, "--dry-run")
    assert code == 0
    assert "would create user relaymail" in lines
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (root / "etc/passwd").read_text() == passwd


async def test_install_system_as_an_ordinary_user_exits_77(root: Path) -> None:
    root.chmod(0o755)
    code, lines = await install(root, prefix=("setpriv", "--reuid", "nobody", "--regid", "nogroup",
                                              "--clear-groups"))  # fmt: skip
    assert code == 77
    assert lines[-1].startswith("relaymail: install-system must run as root")


@pytest.mark.parametrize("staging", ["missing", "empty", "without passwd"])
@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)])
async def test_a_root_without_account_files_is_refused_up_front_and_the_dry_run_says_so(
    tmp_path: Path, staging: str, dry_run: tuple[str, ...]
) -> None:
    root = tmp_path / "root"
    if staging != "missing":
        root.mkdir()
    if staging == "without passwd":
        (root / "etc").mkdir()
        shutil.copy2("/etc/group", root / "etc/group")
    code, lines = await install(root, *dry_run)
    assert code == 71
    wanted = ["group", "passwd"] if staging != "without passwd" else ["passwd"]
    named = ", ".join(str(root / "etc" / name) for name in wanted)
    assert lines == [
        f"relaymail: install-system: no {named} to add the relaymail account to"
        " (useradd --prefix); copy the target system's in first"
    ]
    # Nothing was made: no spool, no configuration, no lock files of groupadd's.
    made = sorted(p.relative_to(root) for p in root.rglob("*")) if root.exists() else []
    assert made == ([Path("etc"), Path("etc/group")] if staging == "without passwd" else [])
