"""Text from outside (replies, addresses, file names) made safe to show on one line.

A remote server's reply or a sender address can hold control characters;
printed raw, they would forge log lines or drive the admin's terminal.
"""

from __future__ import annotations


def printable(text: str | bytes, limit: int = 200) -> str:
    """``text`` safe for one log line: control and undecodable octets escaped, truncated."""
    shown = visible(text[: limit + 1])
    return shown[:limit] + "..." if len(shown) > limit else shown


def visible(text: str | bytes) -> str:
    """``text`` with its control and undecodable octets written out (``\\x1b``): what a
    terminal or a page shows of it is what it is, never what it would do."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    else:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
