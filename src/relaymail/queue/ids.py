"""Queue ids: 64-bit numbers shown as 11 Crockford base32 characters that sort like them."""

from __future__ import annotations

import base64

from ..shards import MAX_SHARDS

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_DIGIT = {c: i for i, c in enumerate(_ALPHABET)}
_ID_CHARS = 11  # 55 bits: microseconds until the year 3111
# base64's base32 does the bit work in C; only its alphabet (which does not
# sort like the numbers) is swapped for Crockford's.
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


# Each queue shard (shards.py) issues only ids whose residue modulo this is its index,
# so ids stay unique across the shards of one queue and a message can move between them.
ID_SHARDS = MAX_SHARDS


def shard_id(at_least: int, shard: int) -> int:
    """The smallest id from `at_least` on that shard `shard` may issue."""
    return at_least + (shard - at_least) % ID_SHARDS


def format_queue_id(number: int) -> str:
    # 10 bytes are 16 base32 digits; the last 11 are the low 55 bits.
    digits = base64.b32encode(number.to_bytes(10, "big"))[-_ID_CHARS:]
    return digits.translate(_FROM_RFC4648).decode("ascii")


def parse_queue_id(text: str) -> int | None:
    """The number behind a queue id, or None if `text` is not one (user input)."""
    if len(text) != _ID_CHARS:
        return None
    number = 0
    for char in text.upper():
        digit = _DIGIT.get(char)
        if digit is None:
            return None
        number = number << 5 | digit
    return number
