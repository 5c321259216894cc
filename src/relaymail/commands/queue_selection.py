"""The messages `queue hold|release|delete|retry` act on: ids, `-` (stdin), `--all` or filters.

Ids and filters combine (every part must match); `--all` stands alone, and
naming nothing at all is a usage error, so a slip of the keyboard never
deletes the whole queue.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from ..queue.selection import AddressPattern, Selection

# Anything an address in the queue can hold; no controls, no white space.
_ADDRESS = re.compile(r"[^\x00-\x20\x7f]{1,512}")


def _pattern(text: str) -> AddressPattern:
    """An argparse type: `user@domain`, `@domain`, or `""`/`<>` for the null sender."""
    from ..errors import AddressError
    from ..message import lookup_domain

    pattern = AddressPattern.parse(text)
    if pattern.whole_domain:
        try:
            return AddressPattern(lookup_domain(pattern.address), whole_domain=True)
        except AddressError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if pattern.address and not _ADDRESS.fullmatch(pattern.address):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an address")
    return pattern


def _recipient_domain(text: str) -> AddressPattern:
    return _pattern("@" + text)


def _age(text: str) -> float:
    """An argparse type: a duration as the configuration writes one ("2h", "3d")."""
    from ..config_fields import seconds
    from ..errors import ConfigError

    try:
        return seconds(text, "--older-than")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID",
                        help="queue ids; - reads more from stdin (space between)")  # fmt: skip
    parser.add_argument("--all", action="store_true", help="every message in the queue")
    parser.add_argument("--from", dest="sender", type=_pattern, metavar="ADDR|@DOMAIN",
                        help='the sender ("" for the null sender)')  # fmt: skip
    recipient = parser.add_mutually_exclusive_group()
    recipient.add_argument("--to", dest="recipient", type=_pattern, metavar="ADDR|@DOMAIN",
                           help="a recipient still to be delivered")  # fmt: skip
    recipient.add_argument("--domain", dest="recipient", type=_recipient_domain, metavar="DOMAIN",
                           help="a recipient at DOMAIN still to be delivered")  # fmt: skip
    parser.add_argument("--older-than", type=_age, metavar="AGE",
                        help='received longer ago than AGE ("2h", "3d")')  # fmt: skip


class SelectionError(Exception):
    """The command line names no usable set of messages; the text says why."""


def selection_of(args: argparse.Namespace, now: float | None = None) -> Selection:
    """The Selection the arguments name; reads stdin for `-`."""
    ids: list[str] | None = None
    if args.ids:
        ids = [i for i in args.ids if i != "-"]
        if "-" in args.ids:
            ids += _read_ids()
    filters = args.sender is not None or args.recipient is not None or args.older_than is not None
    if args.all and (ids is not None or filters):
        raise SelectionError("--all takes no ids and no filters")
    if not args.all and ids is None and not filters:
        raise SelectionError("name the messages: ids, - (ids on stdin), --all or a filter")
    when = time.time() if now is None else now
    return Selection(
        ids=None if ids is None else tuple(ids),
        sender=args.sender,
        recipient=args.recipient,
        received_before=None if args.older_than is None else when - args.older_than,
    )


def _read_ids() -> list[str]:
    if sys.stdin is None:  # started with stdin closed (<&-)
        raise SelectionError("- reads ids from standard input, which is closed")
    # Undecodable bytes stay as they are: such an id names no message, and says so.
    return sys.stdin.buffer.read().decode("utf-8", "surrogateescape").split()
