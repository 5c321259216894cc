"""The maildrop: how `sendmail` hands a message to the daemon without opening the queue.

Postfix's postdrop/pickup model. `sendmail` writes one file per message into
`<queue.directory>/maildrop`, which the daemon creates with mode 1733: anyone
may create a file there, nobody but the daemon may list it, and the sticky
bit keeps users from removing or renaming each other's files. (Postfix's
other choice, 1730 with a `postdrop` group, needs a setgid binary; an entry
point script cannot be setgid, so 1733 is the one that works here.) File
names carry 128 random bits, so a file is only readable by whoever knows its
name: its writer and the daemon.

The daemon (inbound/pickup.py) trusts nothing in a file: the sender comes
from the file's owner, and the content is parsed strictly by `decode_head`.

Format, version 1: header lines `key value` ending in LF, an empty line, then
exactly `size` octets of canonical message data (CRLF lines):

    relaymail-maildrop 1
    submitted-at 1764412345.123456
    sender alice@example.org          at most once; "<>" the null sender; absent: the uid's
    full-name Alice Example           at most once, UTF-8 (-F)
    recipient u@example.org           once per recipient, at least one
    flag N success,failure            sendmail's -N -R -B -V, kept for DSN support
    size 1234

This module is pure and imports only the standard library. `sendmail` does not
import it: it writes its file with postdrop.py, which this module re-exports.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from .errors import MaildropCorrupt
from .postdrop import (
    DIRECTORY_NAME,
    FILE_MODE,
    MAGIC,
    SYSTEM_QUEUE,
    TEMP_PREFIX,
    file_content,
    file_name,
    local_address,
)

__all__ = [
    "CORRUPT_NAME",
    "DIRECTORY_NAME",
    "FILE_MODE",
    "MAX_HEADER",
    "MODE",
    "SYSTEM_QUEUE",
    "TEMP_PREFIX",
    "Head",
    "Submission",
    "decode",
    "decode_head",
    "encode",
    "file_name",
    "is_file_name",
    "local_address",
]

CORRUPT_NAME = "corrupt"  # inside the maildrop: files the daemon could not take
MODE = 0o1733
# Far above any real envelope (1000 recipients of 254 octets is 270 KB).
MAX_HEADER = 4 << 20
FLAGS = ("N", "R", "B", "V")
# Patterns only the daemon's pickup matches (re compiles and caches on first use).
_NAME = r"[0-9a-f]{1,16}\.[0-9]{1,10}\.[0-9a-f]{32}"
# A value: printable, no space for addresses and flags; full-name may hold spaces.
_TOKEN = r"[^\x00-\x20\x7f-\x9f\u2028\u2029]{1,1000}"
_TEXT = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,1000}"


class Submission(NamedTuple):
    """One message handed in by `sendmail`, as its file says (nothing here is trusted).

    The fields, in order, are postdrop.file_content's parameters.
    """

    recipients: tuple[str, ...]
    data: bytes
    submitted_at: float
    sender: str | None = None  # -f/-r as given; "" the null sender
    full_name: str | None = None
    flags: tuple[tuple[str, str], ...] = ()


def is_file_name(name: str) -> bool:
    return re.fullmatch(_NAME, name) is not None


def encode(submission: Submission) -> bytes:
    """The file for `submission` (what sendmail writes, with postdrop.file_content)."""
    return file_content(*submission)


class Head(NamedTuple):
    """A maildrop file's header block: the submission but its data, and where the data is."""

    submission: Submission  # its data empty
    size: int  # octets of message data after the header block
    start: int  # where they start


def decode(raw: bytes) -> Submission:
    """Parse a maildrop file strictly; MaildropCorrupt says what is wrong with it."""
    head = decode_head(raw)
    data = raw[head.start :]
    if len(data) != head.size:
        raise MaildropCorrupt(f"size is not the {len(data)} octets that follow")
    return head.submission._replace(data=data)


def decode_head(raw: bytes) -> Head:
    """Parse the header block at the start of ``raw`` (at least MAX_HEADER octets of the
    file, or all of it) strictly; the data after it is the reader's to take and count."""
    if not raw.startswith(MAGIC):
        raise MaildropCorrupt("not a relaymail maildrop file (version 1)")
    end = raw.find(b"\n\n", len(MAGIC) - 1, MAX_HEADER)
    if end < 0:
        raise MaildropCorrupt("no end to the header block")
    try:
        text = raw[len(MAGIC) : end].decode()
    except UnicodeDecodeError:
        raise MaildropCorrupt("header block is not UTF-8") from None
    fields: dict[str, list[str]] = {}
    for line in text.split("\n"):
        key, _, value = line.partition(" ")
        fields.setdefault(key, []).append(value)
    unknown = set(fields) - {"submitted-at", "sender", "full-name", "recipient", "flag", "size"}
    if unknown:
        raise MaildropCorrupt(f"unknown field {sorted(unknown)[0]!r}")
    size = _one(fields, "size", required=True) or ""
    if not (size.isascii() and size.isdigit()) or str(int(size)) != size:
        raise MaildropCorrupt("size is not a number of octets")
    recipients = tuple(_token(r, "recipient") for r in fields.get("recipient", ()))
    if not recipients:
        raise MaildropCorrupt("no recipient")
    sender = _one(fields, "sender")
    full_name = _one(fields, "full-name")
    if full_name is not None and not re.fullmatch(_TEXT, full_name):
        raise MaildropCorrupt("full-name holds a control character or is empty")
    submission = Submission(
        recipients,
        b"",
        _time(_one(fields, "submitted-at", required=True)),
        None if sender is None else "" if sender == "<>" else _token(sender, "sender"),
        full_name,
        tuple(_flag(value) for value in fields.get("flag", ())),
    )
    return Head(submission, int(size), end + 2)


def _one(fields: dict[str, list[str]], key: str, *, required: bool = False) -> str | None:
    values = fields.get(key, [])
    if len(values) > 1:
        raise MaildropCorrupt(f"{key} given {len(values)} times")
    if required and not values:
        raise MaildropCorrupt(f"no {key}")
    return values[0] if values else None


def _token(value: str, key: str) -> str:
    if not re.fullmatch(_TOKEN, value):
        raise MaildropCorrupt(f"{key} is empty or holds a space or control character")
    return value


def _time(value: str | None) -> float:
    try:
        at = float(value or "")
    except ValueError:
        raise MaildropCorrupt("submitted-at is not a number") from None
    if not math.isfinite(at) or at < 0:
        raise MaildropCorrupt("submitted-at is not a time")
    return at


def _flag(value: str) -> tuple[str, str]:
    name, _, argument = value.partition(" ")
    if name not in FLAGS:
        raise MaildropCorrupt(f"unknown flag {name!r}")
    return name, _token(argument, f"flag {name}")
