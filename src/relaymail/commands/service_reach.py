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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import relaymail

__all__ = ["Needed", "closed_to_others", "hidden_by_sandbox", "installation_paths", "unreachable"]

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


@dataclass(frozen=True, slots=True)
class Needed:
    """One file or directory the service needs, and whether it runs it."""

    role: str  # as the warning names it: "its interpreter"
    path: Path
    executable: bool = False


def installation_paths(entry_point: Path) -> tuple[Needed, ...]:
    """What the service needs to start: the entry point (as the unit names it and
    where its links lead), the interpreter, the standard library and the package."""
    target = Path(os.path.realpath(entry_point))
    linked = (Needed("the entry point's target", target, True),) if target != entry_point else ()
    return (
        Needed("the entry point", entry_point, True),
        *linked,
        Needed("its interpreter", Path(os.path.realpath(sys.executable)), True),
        Needed("the standard library", Path(os.path.realpath(os.path.dirname(os.__file__)))),
        Needed("the relaymail package", Path(os.path.realpath(relaymail.__path__[0]))),
    )


def hidden_by_sandbox(path: PurePosixPath) -> str | None:
    """The setting that hides `path` from the service, if one does (also where the
    hidden directory is a link, as /home -> /var/home on image-based systems)."""
    for top, setting in HIDDEN.items():
        for hidden in dict.fromkeys((top, PurePosixPath(os.path.realpath(top)))):
            if path == hidden or hidden in path.parents:
                return f"{hidden} ({setting})"
    return None


def closed_to_others(path: Path, executable: bool = False) -> str | None:
    """Why a user who owns none of it cannot use `path`: the first directory on the
    way that others may not pass, the file itself not readable (or not runnable)
    by others, or nothing there."""
    for step in (*reversed(path.parents), path):
        try:
            mode = step.stat().st_mode
        except FileNotFoundError:
            return f"does not exist ({step} is missing)" if step != path else "does not exist"
        except OSError as exc:
            return f"cannot be checked ({step}: {exc.strerror})"
        if stat.S_ISDIR(mode):
            wanted = stat.S_IXOTH
        else:
            wanted = stat.S_IROTH | (stat.S_IXOTH if executable else 0)
        if mode & wanted != wanted:
            return f"is closed to the service user at {step}"
    return None


def unreachable(needed: Iterable[Needed]) -> Iterable[str]:
    """One reason per needed path the service could not use."""
    for item in needed:
        if (hidden := hidden_by_sandbox(PurePosixPath(item.path))) is not None:
            yield f"{item.role} {item.path} is under {hidden}"
        elif (closed := closed_to_others(item.path, item.executable)) is not None:
            yield f"{item.role} {item.path} {closed}"
