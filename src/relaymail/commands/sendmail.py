"""`sendmail` for cron, PHP mail() and scripts: the message goes straight into the queue.

Like Postfix's postdrop, it needs no running daemon: the message is durable
in the queue when this exits 0, and the daemon picks it up (SUBMIT admin
event) within a second, or at its next start. The flags are sendmail's own,
not GNU style (-fsender, -oi), so they are parsed here by hand; unknown -o
and -b options that other MTAs accept are ignored, as Postfix does.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path

from ..errors import HeaderValueError
from ..headers import display_name, field, mailbox
from ..message import split_header_section
from .exits import EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE, stop

USAGE = "usage: sendmail [-t] [-i] [-f sender] [-F name] [-C config] [recipient ...]"


class _Options:
    def __init__(self) -> None:
        self.extract = False  # -t: recipients from To/Cc/Bcc
        self.dot_ends = True  # without -i, a line with a single dot ends the message
        self.sender: str | None = None
        self.full_name: str | None = None
        self.config: Path | None = None
        self.recipients: list[str] = []
        self.check_aliases = False  # -bi: check the aliases file, send nothing


def parse_args(argv: list[str]) -> _Options:
    options = _Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            options.recipients += args
            break
        if not arg.startswith("-") or arg == "-":
            options.recipients.append(arg)
            continue
        flag, value = arg[:2], arg[2:]
        if flag in ("-f", "-r", "-F", "-C"):
            if not value:
                if not args:
                    raise ValueError(f"{flag} needs a value")
                value = args.pop(0)
            if flag == "-F":
                try:
                    display_name(value)  # refused here, before the message is read
                except HeaderValueError as exc:
                    raise ValueError(f"-F: {exc}") from None
                options.full_name = value
            elif flag == "-C":
                options.config = Path(value)
            else:
                options.sender = value
        elif arg == "-t":
            options.extract = True
        elif arg in ("-i", "-oi"):
            options.dot_ends = False
        elif arg == "-bi":
            options.check_aliases = True
        elif flag in ("-o", "-b", "-v", "-q", "-O", "-N", "-R", "-V", "-X", "-B", "-h"):
            if arg in ("-bs", "-bd", "-bp", "-q"):
                raise ValueError(f"{arg} is not supported: use relaymail serve / relaymail queue")
            if flag in ("-N", "-R", "-V", "-X", "-B", "-h") and not value and args:
                args.pop(0)  # options that take a separate argument we do not use
        else:
            raise ValueError(f"unknown option {arg}")
    return options


def _has_header(headers: bytes, name: bytes) -> bool:
    return any(line.lower().startswith(name.lower() + b":") for line in headers.split(b"\r\n"))


def _rfc5322_date() -> str:
    # strftime's names are English here: Python leaves LC_TIME at "C".
    return time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime())


def _message_id(hostname: str) -> str:
    return f"<{time.time_ns():x}.{os.getpid()}.{os.urandom(4).hex()}@{hostname}>"


def _header_values(headers: bytes, names: tuple[str, ...]) -> list[str]:
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    message = BytesHeaderParser(policy=compat32).parsebytes(headers + b"\r\n")
    values: list[str] = []
    for name in names:
        values += [str(v) for v in message.get_all(name, [])]
    return values


def prepare(data: bytes, options: _Options, sender: str, hostname: str) -> tuple[bytes, list[str]]:
    """Fill in missing headers (as Postfix's cleanup does) and find the recipients.

    `data` is canonical, `sender` a checked address and the -F name checked
    by parse_args.
    """
    headers, body = split_header_section(data)
    recipients = list(options.recipients)
    if options.extract:
        # Imported here: only -t pays for the email package at start-up.
        from email.utils import getaddresses

        recipients += [a for _, a in getaddresses(_header_values(headers, ("to", "cc", "bcc")))]
        # -t: Bcc recipients get the message, nobody sees the Bcc header.
        kept, skipping = [], False
        for line in headers.split(b"\r\n"):
            if line[:1] in (b" ", b"\t") and skipping:
                continue
            skipping = line.lower().startswith(b"bcc:")
            if not skipping:
                kept.append(line)
        headers = b"\r\n".join(kept)
    added = []
    if not _has_header(headers, b"From"):
        # -F is the user's own text: encoded (RFC 2047) or quoted, never pasted in.
        added.append(field("From", mailbox(sender, options.full_name)))
    if not _has_header(headers, b"Date"):
        added.append(field("Date", _rfc5322_date()))
    if not _has_header(headers, b"Message-ID"):
        added.append(field("Message-ID", _message_id(hostname)))
    prefix = "".join(f"{h}\r\n" for h in added).encode()
    headers = headers if headers.endswith(b"\r\n") or not headers else headers + b"\r\n"
    return prefix + headers + b"\r\n" + body, [r for r in recipients if r]


def main(argv: list[str] | None = None) -> int:
    from ..config import find_config, load_config
    from ..errors import (
        AddressError,
        ConfigError,
        MessageInputError,
        MessageTooLarge,
        QueueFull,
        QueueUnusable,
    )
    from ..message import Envelope, canonical_data, check_address
    from .input import read_message, size_limit

    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"sendmail: {exc} ({USAGE})", file=sys.stderr)
        return EX_USAGE
    try:
        config = load_config(find_config(options.config))
        limit = size_limit(config)
    except ConfigError as exc:
        return stop("sendmail", exc)
    if options.check_aliases:
        from .aliases import check_aliases

        return check_aliases(config, None, "sendmail")
    from ..local import AliasTable, qualify

    hostname = config.delivery.helo_name
    domain = config.local.domain
    sender = qualify(options.sender if options.sender is not None else _user(), domain)
    sender = "" if sender in ("<>", "") else sender
    try:
        # Checked before it goes into the From header, not only into the envelope.
        if sender:
            check_address(sender)
        data = canonical_data(read_message("-", limit, dot_ends=options.dot_ends))
        data, recipients = prepare(data, options, sender or f"MAILER-DAEMON@{hostname}", hostname)
        if len(data) > limit:  # the added headers and CRs count too
            raise MessageTooLarge(limit)
        if not recipients:
            print(f"sendmail: no recipients ({USAGE})", file=sys.stderr)
            return EX_USAGE
        # This path writes the queue itself, past the daemon's entry: aliases apply here.
        envelope = Envelope(sender, AliasTable.open(config.local).expand(recipients))
    except ConfigError as exc:
        return stop("sendmail", exc)
    except AddressError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return EX_NOUSER
    except MessageInputError as exc:  # also MessageTooLarge
        return stop("sendmail", exc)
    from ..queue import submit_now

    try:
        queue_id = submit_now(config.queue.directory, envelope, data, time.time())
    except QueueUnusable as exc:
        print(f"sendmail: cannot queue: {exc}", file=sys.stderr)
        return exc.problem.exit_code
    except (OSError, QueueFull) as exc:
        print(f"sendmail: cannot queue in {config.queue.directory}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if os.environ.get("RELAYMAIL_SENDMAIL_VERBOSE"):
        print(f"sendmail: queued as {queue_id}", file=sys.stderr)
    return EX_OK


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "nobody"


if __name__ == "__main__":
    sys.exit(main())
