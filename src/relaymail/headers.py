"""Header fields built from outside strings: encoded or refused, never injected.

A value from the command line (sendmail -F, -f), the configuration or a remote
server's reply that reaches a header field we write goes through here. The
trap is not only CR and LF: a bare LF is normalised to CRLF further on, so
"x\\n.\\nMAIL FROM:<...>" turns into a lone dot line and a second message for a
lax next hop; C1 controls and U+2028/U+2029 are line breaks to readers that
split with str.splitlines() (Python's own email package among them); a lone
surrogate (undecodable argv bytes) makes the later UTF-8 encode raise.
"""

from __future__ import annotations

import itertools

from .errors import HeaderValueError

# Characters no header value we write may carry: C0 and C1 controls, DEL,
# Unicode line and paragraph separators, and (_is_control) lone surrogates.
# Sets and str methods, not `re`: sendmail checks -F and -f here, and importing
# re (with enum, which it stands on) would be a third of its start-up.
_CONTROLS = frozenset(map(chr, (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)))

# RFC 5322 3.2.3 atext: a phrase made only of these (and spaces) needs no quoting.
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~ -"
)
# RFC 2047 2: an encoded-word is at most 75 characters; "=?utf-8?b?" and "?=" take 12,
# leaving 63 base64 characters, which carry 45 octets (whole characters only, 2047 5).
_WORD_OCTETS = 45


def display_name(name: str) -> str:
    """`name` as the phrase of a mailbox ("phrase <addr>"), RFC 5322 3.4.

    ASCII atoms stay as they are, other ASCII becomes a quoted-string with
    quotes and backslashes escaped (so '"' cannot close it and forge an
    address), anything else becomes RFC 2047 encoded-words. A name that
    contains "=?" is encoded too: readers would decode it as an encoded-word.
    Raises HeaderValueError for control characters.
    """
    if has_control_characters(name):
        raise HeaderValueError(f"{name!r}: contains control characters or line breaks")
    name = " ".join(name.split())
    if not name.isascii() or "=?" in name:
        return " ".join(_encoded_words(name))
    if name and _ATEXT.issuperset(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox(address: str, name: str | None = None) -> str:
    """An RFC 5322 mailbox: `name <address>`, or `<address>` without a name.

    The address must already be a valid envelope address (message.check_address).
    """
    phrase = display_name(name) if name else ""
    return f"{phrase} <{address}>" if phrase else f"<{address}>"


def field(name: str, value: str) -> str:
    """One header line "Name: value" (no CRLF); refuses a value that could start another."""
    if has_control_characters(value):
        raise HeaderValueError(f"{name}: {value!r} contains control characters or line breaks")
    return f"{name}: {value}"


def foreign_text(text: str) -> str:
    """Someone else's text (a remote reply, say) made one line: each run of controls a space."""
    if not has_control_characters(text):
        return text.strip()
    runs = itertools.groupby(text, _is_control)
    return "".join(" " if control else "".join(run) for control, run in runs).strip()


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a character no header value may carry (see _CONTROLS)."""
    # Each of them is unprintable, so printable text (nearly all) takes one C-speed call.
    return not text.isprintable() and any(map(_is_control, text))


def _is_control(char: str) -> bool:
    return char in _CONTROLS or "\ud800" <= char <= "\udfff"


def _encoded_words(text: str) -> list[str]:
    words, chunk, size = [], "", 0
    for char in text:
        octets = len(char.encode("utf-8"))
        if size + octets > _WORD_OCTETS:
            words.append(chunk)
            chunk, size = "", 0
        chunk += char
        size += octets
    words.append(chunk)
    import binascii  # only a name that needs encoding pays for loading it

    return [f"=?utf-8?b?{binascii.b2a_base64(w.encode(), newline=False).decode()}?=" for w in words]
