"""The error types relaymail raises across module borders.

Kept shallow on purpose: each name says whose fault the failure is and what
failed, so callers can catch precisely (the httpx model).
"""

from __future__ import annotations


class RelaymailError(Exception):
    """Base of every error relaymail raises on purpose."""


class ConfigError(RelaymailError):
    """A configuration key has a bad value; names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class AddressError(RelaymailError, ValueError):
    """A mail address that cannot be used in an SMTP envelope."""


class RemoteProtocolError(RelaymailError):
    """The remote SMTP server broke the protocol (malformed or oversized reply)."""


class LocalProtocolError(RelaymailError):
    """relaymail itself tried something the protocol state does not allow (a bug)."""


class QueueFull(RelaymailError):
    """The queue cannot take more mail now (disk full, read-only): answer 452 4.3.1."""


class ListenFailed(RelaymailError):
    """A listener could not bind its address: the system's doing, not the configuration's."""

    def __init__(self, address: str, reason: str, holder: str | None = None) -> None:
        held = f" (held by {holder})" if holder else ""
        super().__init__(f"cannot listen on {address}: {reason}{held}")
        self.address = address
        self.reason = reason
        self.holder = holder
