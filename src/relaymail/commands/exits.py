"""Exit statuses, and the one line a command prints when the input it was given is unusable.

The codes are sysexits.h's, as Postfix's and Exim's sendmail use them.
"""

from __future__ import annotations

import sys

from ..errors import ConfigError, MessageInputError

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


def stop(program: str, error: ConfigError | MessageInputError) -> int:
    """Say on standard error why `program` stops, in one line; return its exit status."""
    if isinstance(error, ConfigError):
        print(f"{program}: configuration error: {error}", file=sys.stderr)
        return EX_CONFIG
    print(f"{program}: {error}", file=sys.stderr)
    return error.exit_status  # MessageTooLarge has its own
