"""Where the external peer programs live, and the one error for a missing one.

The tests never skip for a missing program: under CI a skipped peer test would pass
while proving nothing, so a missing binary is an error that says how to fix it.
"""

from __future__ import annotations

import os
import shutil

# Debian puts daemons in sbin, which a non-root PATH often lacks.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/bin")


class MissingPeerBinary(RuntimeError):
    """A program a test peer needs is not installed."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} is not installed, and the integration tests need it as a real peer: "
            "run scripts/install-test-peers"
        )
        self.name = name


def peer_binary(name: str) -> str:
    """The absolute path of `name`, or MissingPeerBinary."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    path = shutil.which(name, path=search)
    if path is None:
        raise MissingPeerBinary(name)
    return path
