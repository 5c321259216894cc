"""`relaymail install-system`: the service user, the spool, the configuration, the unit, the links.

First a plan (what the target system lacks), then its steps, one line each;
`--dry-run` prints the plan only. `--root DIR` installs into a staging tree
(packaging, tests): users are added to DIR/etc/passwd with useradd's
--prefix, and paths are made under DIR. Nothing an administrator wrote is
replaced: an existing configuration stays, and a `sendmail` or `mailq` that
another MTA installed is left alone and named.
"""

from __future__ import annotations

import argparse
import enum
import grp
import os
import pwd
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..sendmail_settings import write_cache
from .exits import EX_NOPERM, EX_OK, EX_OSERR
from .service_files import CONFIG, SERVICE_USER, SPOOL, UNIT, example_config, unit_text
from .service_reach import ADVICE, installation_paths, unreachable

__all__ = ["Action", "Step", "missing_account_files", "plan", "run_install"]

# Postfix's maildrop is 1730 with a setgid postdrop; with no setgid helper,
# 1733 lets every local user drop a file, and none read or list the others'.
MAILDROP_MODE = 0o1733
# Others may pass through to the maildrop, not list the spool; the queue files
# themselves are the service user's only (UMask=0077, relaymail.service.become).
SPOOL_MODE = 0o711
LINKS = (("usr/sbin/sendmail", "sendmail"), ("usr/bin/mailq", "mailq"))


class Action(enum.StrEnum):
    CREATE_GROUP = "create group"
    CREATE_USER = "create user"
    MAKE_DIRECTORY = "create directory"
    WRITE = "write"
    LINK = "link"
    LEAVE = "leave"  # something is there that is not ours, or nothing to link to


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    target: str  # a path under the root, or an account name
    detail: str = ""  # the content to write, the link target, a mode, or why it is left
    mode: int = 0

    def __str__(self) -> str:
        if self.action is Action.LINK:
            return f"link {self.target} -> {self.detail}"
        if self.action is Action.LEAVE:
            return f"leave {self.target}: {self.detail}"
        mode = f" (mode {self.mode:o})" if self.mode else ""
        return f"{self.action} {self.target}{mode}"


def _under(root: Path, path: PurePosixPath | str) -> Path:
    return root / str(path).lstrip("/")


def _account(root: Path, database: str, name: str) -> int | None:
    """The id of user or group `name` in the target system, or None."""
    if root == Path("/"):
        try:
            return pwd.getpwnam(name).pw_uid if database == "passwd" else grp.getgrnam(name).gr_gid
        except KeyError:
            return None
    try:
        lines = _under(root, f"/etc/{database}").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name:
            return int(fields[2])
    return None


def _owner_of(path: Path, root: Path) -> str:
    """Which package installed `path`, when the target is this system and dpkg knows it."""
    if root != Path("/"):
        return "it exists"
    try:
        found = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True)
    except OSError:
        return "it exists"
    package = found.stdout.partition(":")[0].strip()
    return f"it belongs to the package {package}" if found.returncode == 0 else "it exists"


def plan(root: Path, scripts: Path) -> list[Step]:
    """What installing into `root` takes, given the entry points in `scripts`."""
    steps: list[Step] = []
    if _account(root, "group", SERVICE_USER) is None:
        steps.append(Step(Action.CREATE_GROUP, SERVICE_USER))
    if _account(root, "passwd", SERVICE_USER) is None:
        steps.append(Step(Action.CREATE_USER, SERVICE_USER))
    for directory, mode in ((SPOOL, SPOOL_MODE), (SPOOL / "maildrop", MAILDROP_MODE)):
        if not _under(root, directory).is_dir():
            steps.append(Step(Action.MAKE_DIRECTORY, str(directory), mode=mode))
    if not _under(root, CONFIG).exists():
        steps.append(Step(Action.WRITE, str(CONFIG), example_config(), 0o644))
    else:
        steps.append(Step(Action.LEAVE, str(CONFIG), "a configuration is there already"))
    unit = unit_text(str(scripts / "relaymail"))
    unit_path = _under(root, UNIT)
    if not unit_path.exists() or unit_path.read_text(encoding="utf-8") != unit:
        steps.append(Step(Action.WRITE, str(UNIT), unit, 0o644))
    for link, entry_point in LINKS:
        target = scripts / entry_point
        path = _under(root, link)
        if not target.exists():
            steps.append(
                Step(Action.LEAVE, f"/{link}", f"no {entry_point} entry point in {scripts}")
            )
        elif path.is_symlink() and Path(os.readlink(path)) == target:
            continue
        elif path.exists() or path.is_symlink():
            reason = f"{_owner_of(path, root)}; another MTA provides {entry_point}"
            steps.append(Step(Action.LEAVE, f"/{link}", reason))
        else:
            steps.append(Step(Action.LINK, f"/{link}", str(target)))
    return steps


# The account file each account step edits under a staging root (useradd --prefix).
_ACCOUNT_FILES = {Action.CREATE_GROUP: "group", Action.CREATE_USER: "passwd"}


def missing_account_files(root: Path, steps: list[Step]) -> list[Path]:
    """The account files the plan's account steps would edit and the staging root lacks.

    groupadd and useradd --prefix edit DIR/etc/group and DIR/etc/passwd but create
    neither: they fail on a lock file they cannot make. An empty one is not made here
    either: it would be the tree's whole account database (no root, no system users),
    and the service user's uid in it would be a guess at the target system's.
    """
    if root == Path("/"):
        return []
    needed = [_ACCOUNT_FILES[s.action] for s in steps if s.action in _ACCOUNT_FILES]
    return [path for name in needed if not (path := _under(root, f"/etc/{name}")).is_file()]


def _account_command(root: Path, *args: str) -> None:
    prefix = [] if root == Path("/") else ["--prefix", str(root)]
    done = subprocess.run([*args[:1], *prefix, *args[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        said = "; ".join(done.stderr.split("\n")).strip("; ")  # one line, as every error
        raise OSError(f"{args[0]} failed: {said or done.returncode}")


def apply(step: Step, root: Path) -> None:
    """Carry out one step of the plan; OSError when the system refuses."""
    path = _under(root, step.target)
    match step.action:
        case Action.CREATE_GROUP:
            _account_command(root, "groupadd", "--system", step.target)
        case Action.CREATE_USER:
            _account_command(
                root, "useradd", "--system", "--gid", step.target, "--no-create-home",
                "--home-dir", str(SPOOL), "--shell", "/usr/sbin/nologin",
                "--comment", "relaymail MTA", step.target,
            )  # fmt: skip
        case Action.MAKE_DIRECTORY:
            path.mkdir(parents=True, exist_ok=True)
            uid = _account(root, "passwd", SERVICE_USER)
            gid = _account(root, "group", SERVICE_USER)
            assert uid is not None and gid is not None  # created by the steps before
            os.chown(path, uid, gid)
            path.chmod(step.mode)  # after chown, which clears the sticky bit on some systems
        case Action.WRITE:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".new")
            temporary.write_text(step.detail, encoding="utf-8")
            temporary.chmod(step.mode)
            temporary.replace(path)
            if step.target == str(CONFIG):
                write_cache(str(path))  # sendmail starts from it (sendmail_settings.py)
        case Action.LINK:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(step.detail)
        case Action.LEAVE:
            pass


def run_install(args: argparse.Namespace) -> int:
    root = Path(args.root)
    scripts = Path(sysconfig.get_path("scripts"))
    if not args.dry_run and os.geteuid() != 0:
        print("relaymail: install-system must run as root (or try --dry-run)", file=sys.stderr)
        return EX_NOPERM
    try:
        steps = plan(root, scripts)
    except OSError as exc:
        where = exc.filename or root
        print(f"relaymail: install-system: cannot read {where}: {exc.strerror}", file=sys.stderr)
        return EX_OSERR
    # Before any step, and in a dry run too: it is what the run would stop at.
    if missing := missing_account_files(root, steps):
        print(
            f"relaymail: install-system: no {', '.join(map(str, missing))} to add the"
            f" {SERVICE_USER} account to (useradd --prefix); copy the target system's in first",
            file=sys.stderr,
        )
        return EX_OSERR
    if args.dry_run:
        for step in steps:
            print(f"would {step}" if step.action is not Action.LEAVE else str(step))
        _warn_if_unreachable(scripts)
        return EX_OK
    for step in steps:
        try:
            apply(step, root)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            print(
                f"relaymail: install-system: {step.action} {step.target}: {reason}", file=sys.stderr
            )
            return EX_OSERR
        print(step)
    _warn_if_unreachable(scripts)
    return EX_OK


def _warn_if_unreachable(scripts: Path) -> None:
    """A warning, not a refusal: the files are right, the installation is in the wrong place."""
    if reasons := list(unreachable(installation_paths(scripts / "relaymail"))):
        sys.stdout.flush()  # after the steps, also when stdout is a pipe
        print(f"relaymail: install-system: warning: the unit cannot start relaymail:"
              f" {'; '.join(reasons)}; {ADVICE}", file=sys.stderr)  # fmt: skip
