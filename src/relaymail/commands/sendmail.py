"""`sendmail` for cron, PHP mail() and scripts: the message goes into the maildrop.

Like Postfix's postdrop, it never opens the queue (which other users' mail is
in) and needs no running daemon: the message is durable in the maildrop when
this exits 0 (relaymail.maildrop), and the daemon queues it within a second,
or at its next start. The flags are sendmail's own, not GNU style (-fsender,
-oi), so they are parsed here by hand; unknown -o and -b options that other
MTAs accept are ignored, as Postfix does.
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
import time

from ..canonical import split_header_section
from ..errors import HeaderValueError
from ..headers import display_name
from ..postdrop import DIRECTORY_NAME, SYSTEM_QUEUE, drop, file_content, local_address
from .exits import EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE, stop

TYPE_CHECKING = False  # typing loads re and enum (see main)
if TYPE_CHECKING:
    from collections.abc import Callable

# A name, not a paragraph: each of its words must fit a header line (998 octets).
MAX_FULL_NAME = 256
USAGE = "usage: sendmail [-t] [-i] [-f sender] [-F name] [-C config] [recipient ...]"
HELP = f"""{USAGE}

Queue a message read from standard input for relaymail. It goes into the
maildrop of the configured queue; the daemon (relaymail serve) delivers it,
now or when it next starts.

  -t            recipients from To:, Cc: and Bcc: as well (Bcc: is removed);
                -t, -i and -v may be clustered as getopt allows (-ti, -tif ADDR)
  -i, -oi       a line with a single dot does not end the message
  -f ADDR       envelope sender (also -r); honoured for root and the daemon's
                user only, others send as user@local domain
  -F NAME       full name for the From: header added when there is none
  -N never|success,failure,delay
                when to get a delivery status notification (DSN, RFC 3461)
  -R full|hdrs  what a failure report returns: the message, or its headers
  -V ENVID      the envelope id the reports name (printable text)
  -B TYPE       accepted and ignored
  -bm           deliver (the default)
  -bv           check the recipients, print each as it would be queued, send nothing
  -bi           rebuild the aliases (relaymail newaliases), send nothing
  -bp           list the queue (mailq, relaymail queue list)
  -C FILE       configuration file
  -oem -oee -odq -odb -odi, other -o options, -v
                accepted and ignored: errors always come back by mail or exit
                status, delivery is always in the background
  -bs -bd -bt and every other -b mode, -q
                refused (not taken for -bm): use relaymail serve and relaymail queue
  --help        this text

Exit status: 0 in the maildrop, 64 usage, 65 message too large, 66 no input,
67 bad address, 75 try again later, 78 configuration (no relaymail queue)."""


_NO_VALUE = "tiv"  # the flags without a value, which may lead a cluster


class _Options:
    def __init__(self) -> None:
        self.extract = False  # -t: recipients from To/Cc/Bcc
        self.dot_ends = True  # without -i, a line with a single dot ends the message
        self.sender: str | None = None
        self.full_name: str | None = None
        self.config: str | None = None
        self.recipients: list[str] = []
        self.flags: list[tuple[str, str]] = []  # -N -R -B -V, kept for the daemon
        self.verify = False  # -bv
        self.rebuild_aliases = False  # -bi
        self.list_queue = False  # -bp: mailq
        self.help = False


def parse_args(argv: list[str]) -> _Options:
    options = _Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            options.recipients += args
            break
        if arg == "--help":
            options.help = True
            continue
        if not arg.startswith("-") or arg == "-":
            options.recipients.append(arg)
            continue
        if len(arg) > 2 and arg[1] in _NO_VALUE and arg[2] != "-":  # "-t-" is no cluster
            # getopt's clusters, as every sendmail takes them: -ti is -t -i, -tf ADDR -t -f ADDR.
            args.insert(0, "-" + arg[2:])
            arg = arg[:2]
        flag, value = arg[:2], arg[2:]
        if flag in ("-f", "-r", "-F", "-C"):
            if not value:
                if not args:
                    raise ValueError(f"{flag} needs a value")
                value = args.pop(0)
            if flag == "-F":
                if len(value) > MAX_FULL_NAME:
                    raise ValueError(f"-F: longer than {MAX_FULL_NAME} characters")
                try:
                    display_name(value)  # refused here, before the message is read
                except HeaderValueError as exc:
                    raise ValueError(f"-F: {exc}") from None
                options.full_name = value
            elif flag == "-C":
                options.config = value
            else:
                options.sender = value
        elif arg == "-t":
            options.extract = True
        elif arg in ("-i", "-oi"):
            options.dot_ends = False
        elif arg in ("-bv", "-bi", "-bp", "-bm"):
            options.verify = options.verify or arg == "-bv"
            options.rebuild_aliases = options.rebuild_aliases or arg == "-bi"
            options.list_queue = options.list_queue or arg == "-bp"
        elif flag in ("-N", "-R", "-V", "-B"):
            if not value:
                if not args:
                    raise ValueError(f"{flag} needs a value")
                value = args.pop(0)
            if not value.isascii() or not value.isprintable() or " " in value:
                raise ValueError(f"{flag}: not a printable word")
            _check_dsn_flag(flag, value)
            options.flags.append((flag[1], value))
        elif flag in ("-o", "-v", "-q", "-O", "-X", "-h", "-b"):
            # Any other mode (-bs SMTP on stdin, -bd, -bt, -bh, -bP, ...) would be taken
            # for -bm and send the input as mail: refused, as queue runs (-q) are.
            if flag in ("-b", "-q"):
                raise ValueError(f"{arg} is not supported: use relaymail serve / relaymail queue")
            if flag in ("-X", "-h") and not value and args:
                args.pop(0)  # options that take a separate argument we do not use
        else:
            raise ValueError(f"unknown option {arg}")
    return options


def _check_dsn_flag(flag: str, value: str) -> None:
    """-N, -R and -V as the daemon will read them (pickup.dsn_request): refused here, 64."""
    from ..dsn_request import parse_envid, parse_notify, parse_ret, xtext_encode

    try:
        if flag == "-N":
            parse_notify(value)
        elif flag == "-R":
            parse_ret(value)
        elif flag == "-V":
            parse_envid(xtext_encode(value))
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def _header_values(headers: bytes, names: tuple[str, ...]) -> list[str]:
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    message = BytesHeaderParser(policy=compat32).parsebytes(headers + b"\r\n")
    values: list[str] = []
    for name in names:
        values += [str(v) for v in message.get_all(name, [])]
    return values


def prepare(data: bytes, options: _Options) -> tuple[bytes, list[str]]:
    """The recipients (arguments, and with -t the To/Cc/Bcc fields) and the data without Bcc.

    `data` is canonical. Missing From/Date/Message-ID are added at pickup
    (inbound.cleanup.fix_up_headers), from the sender the daemon settles on.
    """
    headers, body = split_header_section(_with_header_end(data))
    recipients = list(options.recipients)
    if options.extract:
        # Imported here: only -t pays for the email package at start-up.
        from email.utils import getaddresses

        recipients += [a for _, a in getaddresses(_header_values(headers, ("to", "cc", "bcc")))]
    # Bcc recipients get the message, nobody sees the Bcc header; with or without -t,
    # as Postfix's cleanup and sendmail remove it.
    kept, skipping = [], False
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        name, colon, _ = line.partition(b":")
        skipping = bool(colon) and name.rstrip(b" \t").lower() in (b"bcc", b"resent-bcc")
        if not skipping:
            kept.append(line)
    headers = b"\r\n".join(kept)
    headers = headers if headers.endswith(b"\r\n") or not headers else headers + b"\r\n"
    return headers + b"\r\n" + body, [r for r in recipients if r]


def _with_header_end(data: bytes) -> bytes:
    """`data` with a blank line where its header section ends: at the first line that is
    no field ("Name: value", or its continuation), which starts the body. Input piped in
    without a header section (`echo text | sendmail`) is then body, not a header line the
    added Message-ID would run into; a leading mbox "From " line is dropped."""
    if data.startswith(b"From ") and not data[5:].lstrip(b" \t").startswith(b":"):
        data = data[data.find(b"\r\n") + 2 :] if b"\r\n" in data else b""  # not "From :"
    start = 0
    while start < len(data):
        end = data.find(b"\r\n", start)
        line = data[start:] if end < 0 else data[start:end]
        if not line:
            return data  # the blank line is there
        name, colon, _ = line.partition(b":")
        name = name.rstrip(b" \t")  # "Name :" is RFC 5322's obsolete form, still a field
        continued = start > 0 and line[:1] in (b" ", b"\t")
        if not continued and not (colon and name and all(33 <= c <= 126 for c in name)):
            return data[:start] + b"\r\n" + data[start:]
        if end < 0:
            return data
        start = end + 2
    return data


def main(argv: list[str] | None = None) -> int:
    # Everything sendmail imports is chosen for its start-up cost: of the standard
    # library only os, pwd, stat, sys, time and itertools, no re, typing or enum
    # (tests/unit/test_config_file.py pins the list).
    from ..address import check_mailbox, check_submission, qualify
    from ..canonical import canonical_data
    from ..config_file import find_config_file
    from ..errors import AddressError, ConfigError, MessageInputError, MessageTooLarge
    from ..sendmail_settings import submit_settings
    from .input import read_message

    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"sendmail: {exc} ({USAGE})", file=sys.stderr)
        return EX_USAGE
    if options.help:
        return _show(HELP)
    try:
        path = find_config_file(options.config)
        if options.rebuild_aliases:
            return _rebuild_aliases(path)
        if options.list_queue:
            from .cli import main as relaymail

            return relaymail(["queue", "list", *(["--config", path] if path else [])])
        settings = submit_settings(path)
        maildrop, maildrop_owner = _maildrop(path, settings.queue_directory)
    except ConfigError as exc:
        return stop("sendmail", exc)
    except _NoMaildrop as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        print(f"sendmail: uid {os.getuid()} has no user name", file=sys.stderr)
        return EX_NOUSER
    domain, limit = settings.local_domain, settings.max_message_size
    own = local_address(user, domain)
    # The daemon takes -f only from root and its own user (the maildrop's owner);
    # for anyone else it uses `own`: checked here as the pickup will settle it.
    trusted = os.getuid() in (0, maildrop_owner)
    requested = (
        None if options.sender is None
        else "" if options.sender == "<>"
        else qualify(options.sender, domain)
    )  # fmt: skip
    sender = own if requested is None or not trusted else requested
    try:
        # Checked here, not only at pickup: a bad -f gets its exit status now.
        for address in (sender, requested):
            if address:
                check_mailbox(address)
        if options.verify:
            named = tuple(qualify(r, domain) for r in options.recipients)
            check_submission(sender, named)
            return _show("\n".join(named))
        data = canonical_data(read_message("-", limit, dot_ends=options.dot_ends))
        data, recipients = prepare(data, options)
        if len(data) > limit:  # the CRs canonical form added count too
            raise MessageTooLarge(limit)
        if not recipients:
            print(f"sendmail: no recipients ({USAGE})", file=sys.stderr)
            return EX_USAGE
        # Bare names (cron's "root") are ours; the daemon expands aliases at pickup.
        qualified = tuple(qualify(r, domain) for r in recipients)
        check_submission(sender, qualified)
    except AddressError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return EX_NOUSER
    except MessageInputError as exc:  # also MessageTooLarge
        return stop("sendmail", exc)
    content = file_content(
        qualified, data, time.time(), requested, options.full_name, tuple(options.flags)
    )
    try:
        name = drop(maildrop, content)
    except OSError as exc:  # a full disk, a quota, a maildrop made read-only
        print(f"sendmail: cannot write to {maildrop}: {exc.strerror or exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if os.environ.get("RELAYMAIL_SENDMAIL_VERBOSE"):
        print(f"sendmail: in the maildrop as {name}", file=sys.stderr)
    return EX_OK


def _rebuild_aliases(path: str | None) -> int:
    """-bi: check the aliases file, as `relaymail newaliases` does (the whole configuration)."""
    from pathlib import Path

    from ..config import load_config
    from .aliases import check_aliases

    return _shown(lambda: check_aliases(load_config(None if path is None else Path(path)),
                                        None, "sendmail"))  # fmt: skip


def _show(text: str) -> int:
    def write() -> int:
        print(text)
        return EX_OK

    return _shown(write)


def _shown(write: Callable[[], int]) -> int:
    """`write`'s exit status, or EX_IOERR (74) and one line if its output fails (a full
    disk, a closed pipe); loaded only by the modes that print, not by a submission."""
    from .output import OutputError, guarded_stdout, output_failed

    if sys.stdout is None:
        return write()  # print() to a closed stdout writes nothing and fails not
    sys.stdout = guarded_stdout(sys.stdout)
    try:
        code = write()
        sys.stdout.flush()
        return code
    except OutputError as exc:
        return output_failed(exc, "sendmail")


class _NoMaildrop(Exception):
    """The queue is there but its maildrop is not (yet): the daemon makes it at start."""


def _maildrop(config_file: str | None, queue: str) -> tuple[str, int]:
    """The maildrop to write to and its owner (the daemon's user); ConfigError when no
    relaymail queue is known.

    Never creates anything: a maildrop is made by the daemon that reads it. Without
    a configuration file, the embedded default ./relaymail-data counts only if a
    daemon already made its maildrop; then the system queue, if installed.
    """
    from ..errors import ConfigError

    candidates = (queue,) if config_file is not None else (queue, SYSTEM_QUEUE)
    for candidate in candidates:
        maildrop = os.path.join(candidate, DIRECTORY_NAME)
        try:
            found = os.stat(maildrop)
        except OSError:
            continue
        if stat.S_ISDIR(found.st_mode):
            return maildrop, found.st_uid
    if config_file is None:
        raise ConfigError(
            "queue.directory",
            f"no relaymail queue is configured (no configuration file, no {SYSTEM_QUEUE})",
        )
    if not os.path.isdir(queue):
        raise ConfigError("queue.directory", f"{queue}: no relaymail queue there")
    raise _NoMaildrop(f"{maildrop}: no maildrop yet (relaymail serve makes it at start)")


if __name__ == "__main__":
    sys.exit(main())
