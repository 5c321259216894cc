"""The relaymail command line: parse, call, print. No mail logic lives here.

Imports are deferred into each command so that a short-lived command (sendmail
from cron, say) does not pay for the daemon's modules at start-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

# sysexits.h, as Postfix's and Exim's sendmail use them.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_TEMPFAIL = 75
EX_CONFIG = 78


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relaymail", description="relaymail mail transfer agent")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    deliver = commands.add_parser("deliver", help="deliver one message now, in the foreground")
    deliver.add_argument("--config", type=Path, help="TOML configuration file")
    deliver.add_argument("--from", dest="sender", required=True, help="envelope sender ('' for <>)")
    deliver.add_argument("--to", dest="recipients", action="append", required=True)
    deliver.add_argument("message", nargs="?", default="-", help="message file, or - for stdin")

    probe = commands.add_parser("probe", help="show how mail to DOMAIN would go, sending none")
    probe.add_argument("domain")
    probe.add_argument("--config", type=Path)
    probe.add_argument("--json", action="store_true", help="one JSON object instead of a table")

    serve = commands.add_parser("serve", help="run the mail server (listeners, queue, delivery)")
    serve.add_argument("--config", type=Path)

    queue = commands.add_parser("queue", help="look at and steer the queue")
    queue.add_argument("--config", type=Path)
    queue.add_argument("--json", action="store_true", help="JSON instead of tables")
    actions = queue.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listing = actions.add_parser("list", help="queued messages, oldest first")
    listing.add_argument("--state", choices=["queued", "deferred"], help="only with recipients so")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    actions.add_parser("stats", help="counts, sizes and the oldest message's age")
    for name, text in [
        ("show", "one message: recipients, attempts, last replies, TLS"),
        ("hold", "keep a message from delivery until released"),
        ("release", "let a held message be delivered again"),
        ("delete", "remove a message without delivering or bouncing it"),
    ]:
        actions.add_parser(name, help=text).add_argument("id")
    retry = actions.add_parser("retry", help="try deferred mail now")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?")
    target.add_argument("--all", action="store_true")

    tls = commands.add_parser("tls", help="downgrade memory: forget a domain's TLS history")
    tls.add_argument("--config", type=Path)
    tls_actions = tls.add_subparsers(dest="action", required=True, parser_class=_Parser)
    tls_actions.add_parser("forget", help="accept mail in clear to DOMAIN again").add_argument(
        "domain"
    )

    tlsrpt = commands.add_parser("tlsrpt", help="TLS reports (RFC 8460)")
    tlsrpt.add_argument("--config", type=Path)
    tlsrpt_actions = tlsrpt.add_subparsers(dest="action", required=True, parser_class=_Parser)
    show = tlsrpt_actions.add_parser("show", help="what would be reported for today so far")
    show.add_argument("domain", nargs="?")

    commands.add_parser("sendmail", help="queue a message from stdin (sendmail -t -i -f ...)")
    commands.add_parser("passwd", help="hash a password for [users] (read from stdin)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sendmail"]:
        # sendmail's flags are not GNU style: its own parser takes the rest.
        from .sendmail import main as sendmail

        return sendmail(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_json)
    handler = {
        "deliver": _deliver,
        "probe": _probe,
        "serve": _serve,
        "queue": _queue,
        "passwd": _passwd,
        "tls": _tls,
        "tlsrpt": _tlsrpt,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EX_TEMPFAIL


def _setup_logging(level: str, as_json: bool) -> None:
    from .logs import setup_logging

    try:
        setup_logging(level, as_json)
    except ValueError as exc:
        print(f"relaymail: --log-level: {exc}", file=sys.stderr)
        sys.exit(EX_USAGE)


def _config(path: Path | None):  # type: ignore[no-untyped-def]
    from .config import find_config, load_config
    from .errors import ConfigError

    try:
        return load_config(find_config(path))
    except ConfigError as exc:
        print(f"relaymail: configuration error: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)


def _read_message(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        print(f"relaymail: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(EX_USAGE)


def _deliver(args: argparse.Namespace) -> int:
    from .delivery import Status, deliver
    from .errors import AddressError
    from .message import Envelope, canonical_data

    config = _config(args.config)
    sender = "" if args.sender in ("", "<>") else args.sender
    try:
        envelope = Envelope(sender, tuple(args.recipients))
    except AddressError as exc:
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_USAGE
    data = canonical_data(_read_message(args.message))
    results = _run(deliver(envelope, data, config))
    for result in results:
        print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
    statuses = {r.status for r in results}
    if Status.DEFERRED in statuses:
        return EX_TEMPFAIL
    if Status.BOUNCED in statuses:
        return EX_UNAVAILABLE
    return EX_OK


def _probe(args: argparse.Namespace) -> int:
    from .probe import print_report, probe_domain

    config = _config(args.config)
    report = _run(probe_domain(args.domain, config))
    print_report(report, as_json=args.json)
    return EX_OK if report.reachable else EX_TEMPFAIL


def _serve(args: argparse.Namespace) -> int:
    from .daemon import Daemon
    from .errors import ConfigError, ListenFailed

    config = _config(args.config)
    try:
        _run(Daemon(config).run())
    except ConfigError as exc:
        print(f"relaymail: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except ListenFailed as exc:
        # EX_OSERR, not EX_CONFIG: the same file works once the port is free.
        print(f"relaymail: {exc}", file=sys.stderr)
        return EX_OSERR
    return EX_OK


def _queue(args: argparse.Namespace) -> int:
    from .queue_tools import run_queue_command

    return run_queue_command(_config(args.config), args)


def _tls(args: argparse.Namespace) -> int:
    from .message import domain_of
    from .tls.memory import TlsMemory

    config = _config(args.config)
    domain = domain_of(f"x@{args.domain}")
    memory = TlsMemory(config.queue.directory, config.tls.remember_for)
    try:
        forgotten = memory.forget(domain)
    finally:
        memory.close()
    print(f"{domain}: " + ("forgotten" if forgotten else "nothing remembered"))
    return EX_OK


def _tlsrpt(args: argparse.Namespace) -> int:
    from .tls.tlsrpt import TlsReportStore, preview_reports

    config = _config(args.config)
    name = config.delivery.helo_name
    store = TlsReportStore(config.queue.directory)
    try:
        reports = preview_reports(
            store,
            domain=args.domain,
            organization_name=config.tls.report_organization or name,
            contact_info=config.tls.report_contact or f"postmaster@{name}",
        )
    finally:
        store.close()
    print(json.dumps(reports, indent=2))
    return EX_OK


def _passwd(args: argparse.Namespace) -> int:
    import getpass

    from .passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("relaymail: the passwords differ", file=sys.stderr)
            return EX_USAGE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
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
