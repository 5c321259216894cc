"""The error types relaymail raises across module borders.

Kept shallow on purpose: each name says whose fault the failure is and what
failed, so callers can catch precisely (the httpx model).
"""

from __future__ import annotations

# Imports nothing at run time: `sendmail` raises these, and its start-up is most of
# its cost (config_file.py). Annotations only below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from .local.aliases import AliasProblem
    from .queue_problem import QueueProblem


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


class SessionError(RelaymailError):
    """The connection failed: refused, timed out, dropped, or the server broke the protocol.

    Raised as itself for a protocol error or a failed TLS handshake; the subclasses
    name the other ways a session ends, so callers catch by type, not by wording.
    """


class ConnectFailed(SessionError):
    """The TCP connection could not be made (refused, unreachable)."""


class ConnectTimeout(ConnectFailed):
    """The TCP connection was not made within the connect timeout."""


class ReplyTimeout(SessionError):
    """The server sent no reply, or stopped reading, within the command timeout."""


class ConnectionLost(SessionError):
    """The server closed the connection, or it dropped, while a reply was due."""


class LocalProtocolError(RelaymailError):
    """relaymail itself tried something the protocol state does not allow (a bug)."""


class UnsafeCommandError(LocalProtocolError):
    """A command line would carry CR, LF or NUL: refused before it reaches the wire."""


class CleartextAuthError(LocalProtocolError):
    """AUTH was about to go out on a session without TLS: refused, the credentials stay here."""


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


class BodyUnreadable(RelaymailError):
    """A queued message's data could not be read (deleted meanwhile, a disk error)."""


class QueueFull(RelaymailError):
    """The queue cannot take more mail now (disk full, read-only): answer 452 4.3.1."""


class QueueUnavailable(QueueFull):
    """The queue's files changed under it or its writer stopped: nothing would be kept."""


class QueueUnusable(RelaymailError):
    """The queue cannot be opened: `problem` for the exit code, the text for the admin.

    `path` is the queue directory, or the database (postgres_connect.describe);
    `key` the configuration key that names it.
    """

    def __init__(
        self, path: Path | str, problem: QueueProblem, detail: str, key: str = "queue.directory"
    ) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.problem = problem
        self.key = key


class MaildropCorrupt(RelaymailError, ValueError):
    """A maildrop file the daemon cannot take as a message: what is wrong with it."""


class ListenFailed(RelaymailError):
    """A listener could not bind its address: the system's doing, not the configuration's."""

    def __init__(self, address: str, reason: str, holder: str | None = None) -> None:
        held = f" (held by {holder})" if holder else ""
        super().__init__(f"cannot listen on {address}: {reason}{held}")
        self.address = address
        self.reason = reason
        self.holder = holder


class AliasFileError(RelaymailError):
    """The aliases file ([local] aliases) cannot be used; `path` names it."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


class AliasFileUnreadable(AliasFileError):
    """The aliases file cannot be read (missing, no permission, too large)."""


class AliasFileInvalid(AliasFileError):
    """The aliases file holds mistakes, each with its line number (`problems`)."""

    def __init__(self, path: Path, problems: tuple[AliasProblem, ...]) -> None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(path, f"{problems[0]}{more}")
        self.problems = problems
