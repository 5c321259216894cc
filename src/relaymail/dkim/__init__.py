"""DKIM signing (RFC 6376, RFC 8463) of our own mail, once, as it enters the queue.

settings.py reads the [dkim."domain"] tables (no key files: the configuration
is loaded by commands that may not read them); keys.py reads and judges the
keys when `serve` starts or reloads; sign.py decides and signs; keygen.py
makes a key and the DNS record to publish. The daemon's queue entry calls
`Signer.sign` before the store prepends our Received: header, so the trace
field, which is not signed anyway, stays outside what was signed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .keys import check_dkim_keys, load_domain_keys
from .sign import Signer, Signing, SignOutcome

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["SignOutcome", "Signer", "Signing", "check_dkim_keys", "load_signer"]


def load_signer(config: Config) -> Signer:
    """The signer of `config`, every key read; ConfigError names the first bad one."""
    return Signer(config.dkim, load_domain_keys(config))
