"""The canonical form of message data: bytes with CRLF line ends, no dot-stuffing.

Message data crosses module borders in this form. The SMTP client stuffs dots
on the way out; the inbound server and `sendmail` normalise bare LF and bare
CR on the way in. Split from message.py (which re-exports it) so that
`sendmail` loads none of the envelope type's imports (config_file.py).
"""

from __future__ import annotations


def canonical_line_ends(raw: bytes) -> bytes:
    """Every bare CR and bare LF in ``raw`` made a CRLF."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") == crlf and raw.count(b"\r") == crlf:
        return raw  # three C-speed counts spare the copies for canonical data (the norm)
    # Each line end (CRLF, else a lone CR or LF) becomes one LF, then a CRLF: a CRLF
    # is never split, since a CR followed by LF is always the CRLF's.
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def canonical_data(raw: bytes) -> bytes:
    """Normalise every line ending to CRLF and make the data end with one."""
    data = canonical_line_ends(raw)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def header_section(data: bytes) -> bytes:
    """The header section of canonical data: its fields with the last CRLF, not the blank line.

    Data that starts with the blank line has none (RFC 5322 2.1); data without
    a blank line is all header section.
    """
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def split_header_section(data: bytes) -> tuple[bytes, bytes]:
    """(header section, body) of canonical data; the blank line between them is dropped."""
    headers = header_section(data)
    return headers, data[len(headers) + 2 :]
