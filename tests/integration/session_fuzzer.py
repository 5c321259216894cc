"""A seeded generator of hostile SMTP sessions, for the inbound fuzz test.

A session is what one client sends: command lines drawn from every verb aiosmtpd or we
implement (and some nobody does), arguments built from the fragments that broke parsers
before (a lone "<", "SIZE=²", undecodable octets, NUL, source routes, overlong lines),
line ends that are sometimes wrong, all split into writes at random points; and how it
ends: QUIT, a half-close, an abrupt close, STARTTLS followed by bytes that are not TLS, or
a real TLS session that goes on with more of the same. Session ``n`` of seed ``s`` is always
the same bytes, so a finding can be replayed on its own.
"""

from __future__ import annotations

import base64
import enum
import itertools
import random
from dataclasses import dataclass

VERBS = (
    "HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
    "HELP", "AUTH", "STARTTLS", "BDAT", "TURN", "XCLIENT", "mail from:", "rcpt to:", "ehlo",
)  # fmt: skip
ADDRESSES = (
    "<a@client.example>", "<b@elsewhere.example>", "<>", "<postmaster>", "<Postmaster>",
    "<@a.example,@b.example:user@c.example>", "<", ">", "<<>>", "<a@>", "<@b>", "<a@b",
    'a@b.example', '<"quoted local"@b.example>', '<"\\">"@b.example>', "<üser@bücher.example>",
    "<a@[127.0.0.1]>", "<a@[IPv6:::1]>", "<a%b@inbound.example>", "<a@b.example.>",
    "<a@-b.example>", "<a@" + "x" * 300 + ".example>", "<" + "l" * 70 + "@b.example>",
)  # fmt: skip
PARAMS = (
    "SIZE=100", "SIZE=²", "SIZE=", "SIZE=99999999999999999999999", "SIZE=-1", "BODY=8BITMIME",
    "BODY=binarymime", "SMTPUTF8", "SMTPUTF8=yes", "RET=FULL", "ENVID=a+2Bb", "ENVID=\xff",
    "AUTH=<>", "AUTH=a+3D", "NOTIFY=SUCCESS,FAILURE", "NOTIFY=NEVER,DELAY", "NOTIFY=",
    "ORCPT=rfc822;a@b.example", "ORCPT=;", "X-UNKNOWN=1", "=", "==", "SIZE=1 SIZE=2",
)  # fmt: skip
JUNK = (
    "\xff", "\x00", "²", "\udcff", "\x1b[2J", "é", "\u202e", "%s%n", "{}", "\\", '"', ":", "@",
    ",", " ", "\t", "=", "<", ">", "(comment)", "*",
)  # fmt: skip
ENDINGS = (b"\r\n",) * 20 + (b"\n", b"\r", b"\r\r\n", b"\n\r", b"")


class Ending(enum.Enum):
    QUIT = "quit"
    HALF_CLOSE = "half-close"
    ABORT = "abort"
    STARTTLS_GARBAGE = "starttls-garbage"
    TLS = "tls"


@dataclass(frozen=True)
class FuzzSession:
    index: int
    writes: tuple[bytes, ...]
    """What is sent in clear, write by write."""
    ending: Ending
    tls_writes: tuple[bytes, ...] = ()
    """For Ending.TLS: what is sent once TLS is up."""


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(JUNK) for _ in range(rng.randint(1, 6)))


def _argument(rng: random.Random, verb: str) -> str:
    if verb.upper().startswith(("MAIL", "RCPT")):
        address = rng.choice(ADDRESSES)
        if rng.random() < 0.2:
            cut = rng.randint(0, len(address))
            address = address[:cut] + _text(rng) + address[cut:]
        params = " ".join(rng.choice(PARAMS) for _ in range(rng.randint(0, 3)))
        return f"{address} {params}".rstrip()
    if verb == "AUTH":
        mechanism = rng.choice(("PLAIN", "LOGIN", "CRAM-MD5", "plain", "", "PLAIN =", "LOGIN *"))
        token = base64.b64encode(rng.randbytes(rng.randint(0, 40))).decode()
        return rng.choice((mechanism, f"{mechanism} {token}", f"{mechanism} {_text(rng)}"))
    if verb in ("HELO", "EHLO", "ehlo"):
        return rng.choice(("client.example", "[127.0.0.1]", "", _text(rng)))
    return rng.choice(("", "", _text(rng), rng.choice(ADDRESSES), "x" * rng.randint(1, 2000)))


def _line(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.02:
        return b"A" * rng.randint(60_000, 140_000) + b"\r\n"  # past the read window
    if roll < 0.05:
        return rng.randbytes(rng.randint(0, 80)) + b"\r\n"
    if roll < 0.10:
        return base64.b64encode(rng.randbytes(rng.randint(0, 60))) + rng.choice(ENDINGS)
    verb = rng.choice(VERBS)
    argument = _argument(rng, verb)
    separator = "" if verb.endswith(":") else " "
    text = f"{verb}{separator}{argument}" if argument else verb
    return text.encode("utf-8", "surrogateescape") + rng.choice(ENDINGS)


def _message(rng: random.Random) -> bytes:
    body = [b"Subject: fuzz", b""]
    for _ in range(rng.randint(0, 8)):
        body.append(
            rng.choice(
                (b".", b"..", b".\r", b"x" * rng.randint(900, 3000), rng.randbytes(30), b"\n.\n")
            )
        )
    return b"\r\n".join(body) + rng.choice((b"\r\n.\r\n", b"\r\n.\r\n", b"\n.\n", b""))


def _lines(rng: random.Random, count: int) -> bytes:
    out = []
    for _ in range(count):
        line = _line(rng)
        out.append(line)
        if line.upper().startswith(b"DATA") and rng.random() < 0.7:
            out.append(_message(rng))
    return b"".join(out)


def _writes(rng: random.Random, data: bytes) -> tuple[bytes, ...]:
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 3)))
    bounds = [0, *cuts, len(data)]
    return tuple(data[a:b] for a, b in itertools.pairwise(bounds) if b > a)


ENVELOPE = (
    b"EHLO client.example\r\nMAIL FROM:<a@client.example>\r\nRCPT TO:<b@elsewhere.example>\r\n"
)


def session(seed: int, index: int) -> FuzzSession:
    rng = random.Random(f"{seed}:{index}")
    prefix = ENVELOPE if rng.random() < 0.5 else b""
    roll = rng.random()
    if roll < 0.03:
        # a dozen unknown commands in one packet inside TLS, among others
        tls = _lines(rng, rng.randint(0, 14))
        return FuzzSession(index, (b"EHLO client.example\r\nSTARTTLS\r\n",), Ending.TLS, (tls,))
    if roll < 0.06:
        garbage = rng.choice((rng.randbytes(rng.randint(0, 300)), b"\x16\x03\x01\x02\x00\x01"))
        return FuzzSession(index, (b"EHLO c\r\nSTARTTLS\r\n", garbage), Ending.STARTTLS_GARBAGE)
    data = prefix + _lines(rng, rng.randint(1, 12))
    ending = rng.choice((Ending.QUIT, Ending.HALF_CLOSE, Ending.HALF_CLOSE, Ending.ABORT))
    if ending is Ending.QUIT:
        data += b"QUIT\r\n"
    return FuzzSession(index, _writes(rng, data), ending)
