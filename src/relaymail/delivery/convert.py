"""8-bit message data made 7-bit for a next hop that does not offer 8BITMIME (RFC 6152 3).

A pure function over canonical data (CRLF lines). As Postfix does, only what must change
changes: every MIME leaf whose body holds 8-bit octets is encoded quoted-printable (RFC 2045
6.7) and its Content-Transfer-Encoding header rewritten; multiparts are walked recursively,
their 7-bit parts, boundaries and every other header kept byte for byte. Where no encoding
can express the message unchanged it raises ConversionImpossible, and delivery bounces with
5.6.3 instead of sending raw 8-bit:
- 8-bit octets in a header (they need SMTPUTF8, RFC 6532), in a multipart's preamble or
  epilogue, or in a multipart without a boundary;
- 8-bit octets inside a message/* part (RFC 2046 5.2: no encoding but 7bit, 8bit or binary);
- 8-bit octets in a body that claims to be encoded already (quoted-printable, base64).
"""

from __future__ import annotations

import email.message
import re

from ..errors import RelaymailError
from ..message import split_header_section

CRLF = b"\r\n"
# RFC 2045 6.7 rule 5: encoded lines are at most 76 characters, the soft break's "=" included.
_MAX_QP_LINE = 76
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
_CTE = re.compile(rb"(?i)content-transfer-encoding[ \t]*:")


class ConversionImpossible(RelaymailError):
    """The message cannot be made 7-bit without changing what it says (bounce: 5.6.3)."""


def to_7bit(data: bytes, *, utf8_headers: bool = False) -> bytes:
    """`data` with every 8-bit MIME body quoted-printable; `utf8_headers`: SMTPUTF8 is offered."""
    return _entity(data, "text/plain", utf8_headers=utf8_headers, top=True)


def _entity(entity: bytes, default_type: str, *, utf8_headers: bool, top: bool) -> bytes:
    head, body = split_header_section(entity)
    if not head.isascii() and not utf8_headers:
        raise ConversionImpossible("8-bit octets in a header, and the next hop lacks SMTPUTF8")
    if body.isascii():
        return entity
    fields = _fields(head)
    mime = email.message.Message()  # for its Content-Type parameter parsing (RFC 2231 too)
    if "content-type" in fields:
        mime["Content-Type"] = fields["content-type"].decode("ascii", "replace")
    mime.set_default_type(default_type)
    content_type = mime.get_content_type()
    encoding = fields.get("content-transfer-encoding", b"").decode("ascii", "replace")
    encoding = encoding.strip().lower()
    if content_type.startswith("multipart/"):
        if encoding not in _IDENTITY:
            raise ConversionImpossible(f"a {content_type} part encoded as {encoding!r}")
        boundary = mime.get_boundary()
        if not boundary:
            raise ConversionImpossible(f"8-bit octets in a {content_type} without a boundary")
        inner = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
        body = _multipart(body, boundary.encode("ascii", "replace"), inner, utf8_headers)
        # Its parts are 7-bit now; an "8bit" label on the multipart itself would be false.
        return (_with_encoding(head, "7bit") if encoding else head + CRLF) + body
    if content_type.startswith("message/"):
        raise ConversionImpossible(f"8-bit octets inside a {content_type} part")
    if encoding not in _IDENTITY:
        raise ConversionImpossible(f"8-bit octets in a body already encoded as {encoding!r}")
    added = []
    if top and "mime-version" not in fields:
        # A message without MIME-Version is not MIME (RFC 2045 4): the encoding needs one,
        # and its text a charset, which an absent Content-Type would declare US-ASCII.
        added.append(b"MIME-Version: 1.0")
        if "content-type" not in fields:
            charset = "utf-8" if _is_utf8(body) else "unknown-8bit"  # RFC 1428
            added.append(f"Content-Type: text/plain; charset={charset}".encode())
    return _with_encoding(head, "quoted-printable", added) + quoted_printable(body)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fields(head: bytes) -> dict[str, bytes]:
    """Header field values by lower-case name (the first of each), unfolded."""
    fields: dict[str, bytes] = {}
    name = ""
    for line in head.split(CRLF):
        if line[:1] in (b" ", b"\t") and name:
            fields[name] += b" " + line.strip()
        elif b":" in line:
            raw_name, _, value = line.partition(b":")
            name = raw_name.strip().decode("ascii", "replace").lower()
            if name in fields:
                name = ""  # a repeated field: the first one counts
            else:
                fields[name] = value.strip()
    return fields


def _with_encoding(head: bytes, encoding: str, added: list[bytes] | None = None) -> bytes:
    """The header section (and blank line) with Content-Transfer-Encoding set to `encoding`."""
    kept: list[bytes] = []
    dropping = False
    for line in head.split(CRLF)[:-1]:
        if line[:1] in (b" ", b"\t") and dropping:
            continue
        dropping = bool(_CTE.match(line))
        if not dropping:
            kept.append(line + CRLF)
    for line in [*(added or []), f"Content-Transfer-Encoding: {encoding}".encode()]:
        kept.append(line + CRLF)
    return b"".join(kept) + CRLF


def _multipart(body: bytes, boundary: bytes, inner: str, utf8_headers: bool) -> bytes:
    """The multipart body with each part converted; delimiter lines kept as they were."""
    delimiter, close = b"--" + boundary, b"--" + boundary + b"--"
    chunks: list[bytes] = []  # preamble, then for each part: delimiter line, part
    current = bytearray()
    closed = False
    for line in body.splitlines(keepends=True):
        bare = line.rstrip(b"\r\n").rstrip(b" \t")  # RFC 2046 5.1.1: transport padding
        if not closed and bare in (delimiter, close):
            chunks += [bytes(current), line]
            current = bytearray()
            closed = bare == close
        else:
            current += line
    chunks.append(bytes(current))
    # chunks: preamble, then a delimiter line and what follows it, for each delimiter.
    preamble, delimiters, parts = chunks[0], chunks[1::2], chunks[2::2]
    epilogue = parts.pop() if closed else b""
    if not preamble.isascii() or not epilogue.isascii():
        raise ConversionImpossible("8-bit octets in a multipart's preamble or epilogue")
    out = [preamble]
    for index, part in enumerate(parts):
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1), not the part.
        followed = closed or index < len(parts) - 1
        content, ending = (part[:-2], CRLF) if followed and part.endswith(CRLF) else (part, b"")
        converted = _entity(content, inner, utf8_headers=utf8_headers, top=False)
        out += [delimiters[index], converted, ending]
    if closed:
        out += [delimiters[-1], epilogue]
    return b"".join(out)


def _qp_table() -> list[bytes]:
    table = [b"=%02X" % octet for octet in range(256)]
    for octet in range(33, 127):
        if octet != ord("="):
            table[octet] = bytes([octet])
    table[ord(" ")], table[ord("\t")] = b" ", b"\t"
    return table


_QP = _qp_table()


def quoted_printable(body: bytes) -> bytes:
    """RFC 2045 6.7 encoding of canonical text: CRLF stays a line break, lines wrap at 76."""
    lines = []
    for line in body.split(CRLF):
        tokens = [_QP[octet] for octet in line]
        if tokens and tokens[-1] in (b" ", b"\t"):
            tokens[-1] = b"=%02X" % line[-1]  # rule 3: no white space before a line break
        lines.append(_wrap(tokens))
    return CRLF.join(lines)


def _wrap(tokens: list[bytes]) -> bytes:
    """Join encoded tokens, with a soft break ("=" CRLF) before a line would exceed 76."""
    out = bytearray()
    width = 0
    for i, token in enumerate(tokens):
        # The last token may use the 76th column; any other leaves room for the "=".
        room = _MAX_QP_LINE if i == len(tokens) - 1 else _MAX_QP_LINE - 1
        if width + len(token) > room:
            out += b"=" + CRLF
            width = 0
        out += token
        width += len(token)
    return bytes(out)
