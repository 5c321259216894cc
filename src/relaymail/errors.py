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


class UnsafeCommandError(LocalProtocolError):
    """A command line would carry CR, LF or NUL: refused before it reaches the wire."""


class HeaderValueError(RelaymailError, ValueError):
    """A value cannot go into a header field (control characters, line breaks)."""


class MessageInputError(RelaymailError):
    """A message to submit cannot be read: no standard input, a missing or unreadable file."""

    exit_status = 66  # EX_NOINPUT: the commands that read a message exit with this


class MessageTooLarge(MessageInputError):
    """Message input is over the size limit; read no further than the limit."""

    exit_status = 65  # EX_DATAERR

    def __init__(self, limit: int) -> None:
        super().__init__(f"message larger than the limit of {limit} octets")
        self.limit = limit


class QueueFull(RelaymailError):
    """The queue cannot take more mail now (disk full, read-only): answer 452 4.3.1."""
