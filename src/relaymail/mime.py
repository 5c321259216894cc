"""The multipart/report writer (RFC 6522) for the mail relaymail writes itself: DSNs
(report-type delivery-status, RFC 3464) and TLS reports (report-type tlsrpt, RFC 8460 5.3).

Written by hand rather than with `email.message.EmailMessage`: the stdlib generator
re-folds and re-encodes header fields and treats the blocks of a message/delivery-status
body as sub-messages, while a DSN must carry the original header section byte for byte.
Output is canonical (CRLF, not dot-stuffed) and depends only on its input: the boundary
is derived from the parts, so the same report is the same bytes when it is built again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Part", "crlf_lines", "multipart_report"]

PREAMBLE = b"This is a MIME-encapsulated message.\r\n"


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its header lines (no line ends; folded lines start with a tab) and
    its body, already in CRLF form and in the transfer encoding its headers name."""

    headers: Sequence[str]
    body: bytes


def crlf_lines(lines: Iterable[str]) -> bytes:
    """`lines`, each ended by CRLF, in UTF-8 (ASCII stays ASCII)."""
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def multipart_report(
    headers: Sequence[str],
    report_type: str,
    parts: Sequence[Part],
    *,
    boundary_prefix: str,
    eight_bit: bool = False,
) -> bytes:
    """The message: `headers`, then MIME-Version and the multipart/report Content-Type,
    then `parts`. `report_type` is the parameter as written (a token or a quoted string);
    `eight_bit` declares 8bit content (SMTPUTF8 DSNs, RFC 6532).

    The boundary is `boundary_prefix` and a digest of the bodies; a body that contains
    it (only on purpose) gets a counter added until none does.
    """
    boundary = _boundary(boundary_prefix, [part.body for part in parts])
    top = [
        *headers,
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f'\tboundary="{boundary}"',
    ]
    if eight_bit:
        top.append("Content-Transfer-Encoding: 8bit")
    out = bytearray(crlf_lines(top))
    out += b"\r\n" + PREAMBLE
    for part in parts:
        out += f"\r\n--{boundary}\r\n".encode()
        out += crlf_lines(part.headers)
        out += b"\r\n" + part.body
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


def _boundary(prefix: str, bodies: list[bytes]) -> str:
    digest = hashlib.sha256(b"".join(bodies)).hexdigest()[:16]
    candidate = f"{prefix}={digest}"
    counter = 0
    while any(candidate.encode() in body for body in bodies):
        counter += 1
        candidate = f"{prefix}={digest}.{counter}"
    return candidate
