"""A host that cannot take the pending recipients: why, for the next host and the results."""

from __future__ import annotations

import traceback
from pathlib import Path

from ..tls.context import CLEAR, TlsFacts
from .results import AttemptResult, TlsStep


class HostFailed(Exception):
    """This host cannot take the pending recipients; the reason goes to the next one."""

    def __init__(
        self, result: AttemptResult, detail: str, tls: TlsFacts = CLEAR,
        step: TlsStep | None = None,
    ) -> None:  # fmt: skip
        super().__init__(detail)
        self.result = result
        self.detail = detail
        self.tls = tls  # TLS can be up when the host fails (a certificate `verify` refuses)
        self.step = step  # the policy table's refusal, when that is why


def unforeseen(exc: Exception) -> HostFailed:
    """An exception no step expected, as a failed host whose detail says where it came from."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return HostFailed(
        AttemptResult.INTERNAL_ERROR, f"internal error{where}: {type(exc).__name__}: {exc}"
    )
