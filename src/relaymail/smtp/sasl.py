"""SASL for SMTP AUTH as a client (RFC 4954): which mechanism, and the lines it sends.

Pure: the delivery step (delivery/auth.py) sends what these functions compute.
Only PLAIN (RFC 4616) and LOGIN (the draft every submission server still speaks)
are offered: both send the password itself, which is why the client connection
refuses AUTH outside TLS.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Set
from dataclasses import dataclass, field


class Mechanism(enum.Enum):
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"


# PLAIN first: one round trip with the initial response (RFC 4954 4), and a standard.
PREFERENCE = (Mechanism.PLAIN, Mechanism.LOGIN)


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one login sends: the AUTH argument, then one line per 334 in order."""

    mechanism: Mechanism
    # Both carry credentials (PLAIN's in the argument): never in a repr or a log.
    argument: str = field(repr=False)
    responses: tuple[str, ...] = field(repr=False)


def choose(offered: Set[str]) -> Mechanism | None:
    """The preferred mechanism among those the server offers; None when none is known."""
    return next((m for m in PREFERENCE if m.value in offered), None)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def exchange(mechanism: Mechanism, username: str, password: str) -> Exchange:
    if mechanism is Mechanism.PLAIN:
        # RFC 4616 2: [authzid] NUL authcid NUL passwd, with an empty authzid.
        message = "\0".join(("", username, password))
        return Exchange(mechanism, f"PLAIN {_b64(message)}", ())
    # LOGIN: the server asks "Username:" then "Password:", each in its own 334.
    return Exchange(mechanism, "LOGIN", (_b64(username), _b64(password)))


# RFC 4954 4: a line of "*" cancels the exchange; the server answers 501.
CANCEL = "*"
