"""Text from outside (replies, addresses, file names) made safe to show on one line.

A remote server's reply or a sender address can hold control characters;
printed raw, they would forge log lines or drive the admin's terminal.
"""

from __future__ import annotations


def printable(text: str | bytes, limit: int = 200) -> str:
    """``text`` safe for one log line: control and undecodable octets escaped, truncated."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    else:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[: limit + 1])
    return shown[:limit] + "..." if len(shown) > limit else shown
