"""Whether the installed unit can run this relaymail at all.

The unit sandboxes the service (service_files.py): ProtectHome=yes hides /root,
/home and /run/user, PrivateTmp=yes gives it an empty /tmp and /var/tmp, and it
runs as the service user, who owns none of the installation. A relaymail in a
virtualenv under /root, or run by an interpreter built there (pyenv), installs
cleanly and then fails at every start with a bare "No such file or directory"
from systemd. install-system says so while the administrator is still there.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import relaymail

__all__ = ["closed_to_others", "hidden_by_sandbox", "installation_paths", "unreachable"]

# Each directory the unit hides from the service, and the setting that hides it.
HIDDEN = {
    PurePosixPath("/root"): "ProtectHome=yes",
    PurePosixPath("/home"): "ProtectHome=yes",
    PurePosixPath("/run/user"): "ProtectHome=yes",
    PurePosixPath("/tmp"): "PrivateTmp=yes",
    PurePosixPath("/var/tmp"): "PrivateTmp=yes",
}
ADVICE = (
    "install relaymail where every user may read it, outside /root, /home, /run/user,"
    " /tmp and /var/tmp (for example: python3 -m venv /opt/relaymail)"
)


def installation_paths(entry_point: Path) -> dict[str, Path]:
    """What the service needs to start: the entry point, the interpreter it names,
    the standard library and the relaymail package, each as the kernel finds it."""
    return {
        "the entry point": entry_point,
        "its interpreter": Path(os.path.realpath(sys.executable)),
        "the standard library": Path(os.path.realpath(os.path.dirname(os.__file__))),
        "the relaymail package": Path(os.path.realpath(relaymail.__path__[0])),
    }


def hidden_by_sandbox(path: PurePosixPath) -> str | None:
    """The setting that hides `path` from the service, if one does."""
    for top, setting in HIDDEN.items():
        if path == top or top in path.parents:
            return f"{top} ({setting})"
    return None


def closed_to_others(path: Path) -> Path | None:
    """The first directory on the way to `path` (or `path` itself) that a user who
    owns none of it may not pass (directories) or read (the file)."""
    chain = [*reversed(path.parents), path]
    for step in chain:
        try:
            mode = step.stat().st_mode
        except OSError:
            return step
        wanted = stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH
        if not mode & wanted:
            return step
    return None


def unreachable(paths: dict[str, Path]) -> Iterable[str]:
    """One reason per path of `paths` the service could not use."""
    for role, path in paths.items():
        if (hidden := hidden_by_sandbox(PurePosixPath(path))) is not None:
            yield f"{role} {path} is under {hidden}"
        elif (closed := closed_to_others(path)) is not None:
            yield f"{role} {path} is closed to the service user at {closed}"
