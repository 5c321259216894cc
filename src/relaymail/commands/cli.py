"""The relaymail command line: parse, call, print. No mail logic lives here.

Imports are deferred into each command so that a short-lived command (sendmail
from cron, say) does not pay for the daemon's modules at start-up.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ..errors import RelaymailError
from .exits import (
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOHOST,
    EX_NOINPUT,
    EX_OK,
    EX_OSERR,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    stop,
)
from .output import OutputError, guarded_stdout, output_failed
from .queue_selection import add_selection

T = TypeVar("T")

# SQLite integers are 64-bit; a page of the queue listing beyond this is no page.
MAX_LIST_LIMIT = 100_000
MAX_OFFSET = 2**63 - 1
_MAX_PASSWORD = 1024  # octets; a line from a stray pipe is no password
_INTEGER = re.compile(r"-?[0-9]{1,20}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as every other CLI error: the usage is one --help away.
        self.exit(EX_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a decimal integer within [low, high]."""

    def parse(text: str) -> int:
        # Matched first: int() also takes "²"-like digits, spaces and "_", and
        # raises for more than 4300 digits.
        value = int(text) if _INTEGER.fullmatch(text) else None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number from {low} to {high}")
        return value

    return parse


def _worker(text: str) -> tuple[int, int]:
    """An argparse type: `K/N`, worker K of N."""
    index, _, count = text.partition("/")
    try:
        parsed = _count(0, 255)(index), _count(1, 256)(count)
    except argparse.ArgumentTypeError:
        parsed = (0, 0)
    if not 0 <= parsed[0] < parsed[1]:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not K/N with K below N")
    return parsed


def _domain(text: str) -> str:
    """An argparse type: a domain name, in its lookup form."""
    from ..errors import AddressError
    from ..message import lookup_domain

    try:
        return lookup_domain(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _global_options() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name.

    A parent of every (sub)parser. SUPPRESS keeps an option a subparser was
    not given out of the namespace, so it cannot overwrite the value given
    before the subcommand's name (`relaymail --json queue list`).
    """
    common = _Parser(add_help=False)
    unset = argparse.SUPPRESS
    common.add_argument("-C", "--config", type=Path, default=unset, help="TOML configuration file")
    common.add_argument("--json", action="store_true", default=unset, help="JSON output")
    common.add_argument("--log-json", action="store_true", default=unset,
                        help="log one JSON object per line")  # fmt: skip
    common.add_argument("--log-level", default=unset, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING (default INFO)")  # fmt: skip
    return common


# What a global option is when it was given nowhere on the line.
GLOBAL_DEFAULTS = {"config": None, "json": False, "log_json": False, "log_level": "INFO"}


def _selector(text: str) -> str:
    """An argparse type: a DKIM selector (the reader of [dkim] ... selector)."""
    from ..dkim.settings import selector
    from ..errors import ConfigError

    try:
        return selector(text, "SELECTOR")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = _Parser(prog="relaymail", description="relaymail mail transfer agent",
                     parents=[common])  # fmt: skip
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(group: Any, name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=text, parents=[common])
        return sub

    deliver = command(commands, "deliver", "deliver one message now, in the foreground")
    deliver.add_argument("--from", dest="sender", required=True, help="envelope sender ('' for <>)")
    deliver.add_argument("--to", dest="recipients", action="append", required=True)
    deliver.add_argument("message", nargs="?", default="-", help="message file, or - for stdin")

    probe = command(commands, "probe", "show how mail to DOMAIN would go, sending none")
    probe.add_argument("domain", type=_domain)

    serve = command(commands, "serve", "run the mail server (listeners, queue, delivery)")
    # Internal: how the supervisor starts worker K of N ([server] processes), and the
    # pipe the worker says READY on.
    serve.add_argument("--worker", type=_worker, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=_count(3, 65535), help=argparse.SUPPRESS)
    command(commands, "check", "check the configuration as serve would, then exit")

    queue = command(commands, "queue", "look at and steer the queue")
    actions = queue.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listing = command(actions, "list", "queued messages, oldest first, with their recipients")
    listing.add_argument("--state", choices=["queued", "deferred"], help="only with recipients so")
    listing.add_argument("--limit", type=_count(1, MAX_LIST_LIMIT), default=100)
    listing.add_argument("--offset", type=_count(0, MAX_OFFSET), default=0)
    command(actions, "stats", "counts, sizes, the oldest message's age, the daemon")
    command(actions, "show", "one message: recipients, attempts, last replies, TLS").add_argument(
        "id"
    )
    cat = command(actions, "cat", "a message's content, as queued")
    cat.add_argument("id")
    part = cat.add_mutually_exclusive_group()
    part.add_argument("--headers", action="store_true", help="the header section only")
    part.add_argument("--body", action="store_true", help="the body only")
    for name, text in [
        ("hold", "keep messages from delivery until released"),
        ("release", "let held messages be delivered again"),
        ("delete", "remove messages without delivering or bouncing them"),
        ("retry", "make waiting recipients due now"),
    ]:
        add_selection(command(actions, name, text))

    tls = command(commands, "tls", "downgrade memory: a domain's remembered TLS level")
    tls_actions = tls.add_subparsers(dest="action", required=True, parser_class=_Parser)
    command(tls_actions, "show", "the TLS level remembered for DOMAIN, since when").add_argument(
        "domain", type=_domain
    )
    command(tls_actions, "forget", "accept mail in clear to DOMAIN again").add_argument(
        "domain", type=_domain
    )

    tlsrpt = command(commands, "tlsrpt", "TLS reports (RFC 8460)")
    tlsrpt_actions = tlsrpt.add_subparsers(dest="action", required=True, parser_class=_Parser)
    show = command(tlsrpt_actions, "show", "what would be reported for today so far")
    show.add_argument("domain", nargs="?", type=_domain)

    dkim = command(commands, "dkim", "DKIM keys")
    dkim_actions = dkim.add_subparsers(dest="action", required=True, parser_class=_Parser)
    keygen = command(
        dkim_actions, "keygen", "write a new key (mode 0600) and print the DNS TXT record"
    )
    keygen.add_argument("domain", type=_domain)
    keygen.add_argument("selector", type=_selector)
    keygen.add_argument("--type", choices=["rsa", "ed25519"], default="rsa")
    keygen.add_argument("--bits", type=_count(2048, 4096), help="RSA only (default 2048)")
    keygen.add_argument(
        "--dir", type=Path, help="write DIR/DOMAIN.SELECTOR.key (default .; else -C's key_file)"
    )

    install = command(
        commands, "install-system", "create the service user, spool, configuration and unit"
    )
    install.add_argument("--root", default="/", help="install into this staging root")
    install.add_argument("--dry-run", action="store_true", help="print what would be done")
    newaliases = command(commands, "newaliases", "check the aliases file ([local] aliases)")
    newaliases.add_argument("file", nargs="?", type=Path, help="default: [local] aliases")

    command(commands, "sendmail", "queue a message from stdin (sendmail -t -i -f ...)")
    command(commands, "passwd", "hash a password for [users] (read from stdin)")
    return parser


class _Version(argparse.Action):
    """--version, looked up only when asked: importlib.metadata and the search of the
    installed distributions take a tenth of a command's start-up otherwise."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("relaymail")
        except PackageNotFoundError:  # run from a source tree that was never installed
            text = "unknown"
        print(f"relaymail {text}")  # to stdout, as argparse's own version action
        parser.exit()


def mailq() -> int:
    """The `mailq` entry point: `relaymail queue list`, as sendmail's -bp is elsewhere."""
    return main(["queue", "list", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sendmail"]:
        # sendmail's flags are not GNU style: its own parser takes the rest.
        from .sendmail import main as sendmail

        return sendmail(argv[1:])
    plain = sys.stdout
    if plain is not None:
        sys.stdout = guarded_stdout(plain)  # --help and --version write while parsing
    try:
        args = _parse(argv)
    except OutputError as exc:
        return output_failed(exc)
    if args.command == "serve":
        sys.stdout = plain  # the daemon's output is its log, on stderr
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    _setup_logging(args.log_level, args.log_json)
    if args.command != "serve" and sys.stdout is None:  # started with stdout closed (>&-)
        print("relaymail: cannot write output: standard output is closed", file=sys.stderr)
        return EX_IOERR
    handler = {
        "check": _check,
        "deliver": _deliver,
        "newaliases": _newaliases,
        "probe": _probe,
        "serve": _serve,
        "queue": _queue,
        "passwd": _passwd,
        "tls": _tls,
        "dkim": _dkim,
        "tlsrpt": _tlsrpt,
        "install-system": _install_system,
    }[args.command]
    try:
        code = handler(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, where a failure is caught, not at interpreter exit
        return code
    except KeyboardInterrupt:
        return EX_TEMPFAIL
    except RelaymailError as exc:
        return _state_failed(exc)
    except OutputError as exc:
        return output_failed(exc)


def _parse(argv: list[str]) -> argparse.Namespace:
    """The arguments; what --help or --version wrote is flushed before they exit, so a
    failed write is an OutputError here, not a traceback at interpreter exit."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        if sys.stdout is not None:
            sys.stdout.flush()
        raise


def _state_failed(exc: RelaymailError) -> int:
    """A state database (state_db.py) that stopped a command: one line, never a traceback."""
    from ..state_db import StateSchemaNewer, StateUnavailable

    if isinstance(exc, StateUnavailable):
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if isinstance(exc, StateSchemaNewer):
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_CONFIG
    raise exc


def _setup_logging(level: str, as_json: bool) -> None:
    from ..logs import setup_logging

    try:
        setup_logging(level, as_json)
    except ValueError as exc:
        print(f"relaymail: --log-level: {exc}", file=sys.stderr)
        sys.exit(EX_USAGE)


def _config(path: Path | None):  # type: ignore[no-untyped-def]
    from ..config import find_config, load_config
    from ..errors import ConfigError

    try:
        return load_config(find_config(path))
    except ConfigError as exc:
        sys.exit(stop("relaymail", exc))


def _check(args: argparse.Namespace) -> int:
    from .check import run_check

    config = _config(args.config)
    _write_sendmail_cache(config.source)
    return run_check(config, as_json=args.json)


def _deliver(args: argparse.Namespace) -> int:
    from ..delivery import Status, deliver
    from ..errors import AddressError, ConfigError, MessageInputError, MessageTooLarge
    from ..message import Envelope, canonical_data
    from .input import read_message, size_limit

    config = _config(args.config)
    sender = "" if args.sender in ("", "<>") else args.sender
    try:
        envelope = Envelope(sender, tuple(args.recipients))
    except AddressError as exc:
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        data = canonical_data(read_message(args.message, limit := size_limit(config)))
        if len(data) > limit:
            raise MessageTooLarge(limit)
    except (ConfigError, MessageInputError) as exc:  # also MessageTooLarge
        return stop("relaymail", exc)
    results = _run(deliver(envelope, data, config))
    for result in results:
        print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
    statuses = {r.status for r in results}
    if Status.DEFERRED in statuses:
        return EX_TEMPFAIL
    if Status.BOUNCED in statuses:
        return EX_UNAVAILABLE
    return EX_OK


def _newaliases(args: argparse.Namespace) -> int:
    from .aliases import check_aliases

    return check_aliases(_config(args.config), args.file, "newaliases")


def _probe(args: argparse.Namespace) -> int:
    from .probe import print_report, probe_domain

    config = _config(args.config)
    report = _run(probe_domain(args.domain, config))
    print_report(report, as_json=args.json)
    if report.routing_permanent:
        return EX_NOHOST  # what delivery bounces (NXDOMAIN, null MX), not "try again"
    return EX_OK if report.reachable else EX_TEMPFAIL


def _serve(args: argparse.Namespace) -> int:
    from ..daemon_lock import DaemonRunning
    from ..errors import ConfigError, ListenFailed, QueueUnusable
    from ..preflight import PreflightFailed
    from ..supervisor import Supervisor, WorkerFailed, die_with_parent

    if args.worker is not None:
        die_with_parent()
    config = _config(args.config)
    _write_sendmail_cache(config.source)  # before the daemon drops root, if it has it
    try:
        if args.worker is None and config.server.processes > 1:
            _run(Supervisor(config, _logging_options(args)).run())
        else:
            from ..daemon import Daemon

            worker, processes = args.worker or (0, 1)
            _run(Daemon(config, worker=worker, processes=processes, ready_fd=args.ready_fd).run())
    except WorkerFailed as failed:
        return failed.status  # the worker said why on stderr
    except PreflightFailed as failed:
        for problem in failed.problems:
            kind = "" if problem.queue else "configuration error: "
            print(f"relaymail: {kind}{problem}", file=sys.stderr)
        return failed.exit_code
    except ConfigError as exc:
        return stop("relaymail", exc)
    except QueueUnusable as exc:
        print(f"relaymail: {exc.key}: {exc}", file=sys.stderr)
        return exc.problem.exit_code
    except (ListenFailed, DaemonRunning) as exc:
        # EX_OSERR, not EX_CONFIG: the same file works once the port (or the queue) is free.
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_OSERR
    return EX_OK


def _write_sendmail_cache(source: Path | None) -> None:
    """sendmail's settings beside the configuration file (sendmail_settings.py), if we may."""
    from ..sendmail_settings import write_cache

    if source is not None:
        write_cache(str(source))


def _logging_options(args: argparse.Namespace) -> list[str]:
    """The global options a worker must get as the supervisor got them."""
    return ["--log-level", args.log_level, *(["--log-json"] if args.log_json else [])]


def _install_system(args: argparse.Namespace) -> int:
    from .install import run_install

    return run_install(args)


def _queue(args: argparse.Namespace) -> int:
    from .queue import run_queue_command

    return run_queue_command(_config(args.config), args)


def _tls(args: argparse.Namespace) -> int:
    from .tls import forget, show

    if args.action == "show":
        return show(_config(args.config), args.domain, as_json=args.json)
    return forget(_config(args.config), args.domain)


def _dkim(args: argparse.Namespace) -> int:
    from .dkim import keygen

    if args.config and args.dir:
        print("relaymail dkim keygen: --config and --dir name two places for the key",
              file=sys.stderr)  # fmt: skip
        return EX_USAGE
    # Only --config is read: the key's place must not depend on $RELAYMAIL_CONFIG.
    return keygen(args, _config(args.config) if args.config else None)


def _tlsrpt(args: argparse.Namespace) -> int:
    from .tls import show_reports

    return show_reports(_config(args.config), args.domain)


def _passwd(args: argparse.Namespace) -> int:
    import getpass

    from ..passwords import hash_password

    if sys.stdin is None:  # started with stdin closed (<&-)
        print("relaymail: cannot read the password: standard input is closed", file=sys.stderr)
        return EX_NOINPUT
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("relaymail: the passwords differ", file=sys.stderr)
            return EX_USAGE
    else:
        line = sys.stdin.buffer.readline(_MAX_PASSWORD + 2).rstrip(b"\r\n")
        if len(line) > _MAX_PASSWORD:
            print(f"relaymail: password longer than {_MAX_PASSWORD} octets", file=sys.stderr)
            return EX_DATAERR
        try:
            password = line.decode("utf-8")
        except UnicodeDecodeError:
            print("relaymail: the password is not UTF-8 text", file=sys.stderr)
            return EX_DATAERR
    if not password:
        print("relaymail: empty password", file=sys.stderr)
        return EX_USAGE
    print(hash_password(password))
    return EX_OK


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
