"""Password hashes for SMTP AUTH users: scrypt in a PHC-style string.

The configuration never holds a password, only its hash:

    $scrypt$ln=15,r=8,p=1$<salt>$<digest>

salt and digest are base64 without padding (the PHC string format). passlib
writes the same layout with "." in place of "+"; both spellings are read, so
hashes made by passlib's ``scrypt.hash()`` work unchanged.

Cost: ln=15, r=8 is 2**15 * 128 * 8 bytes = 32 MiB and tens of milliseconds
per check. The inbound server runs checks off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

DEFAULT_LOG2_N = 15
DEFAULT_R = 8
DEFAULT_P = 1
_SALT_BYTES = 16
_DIGEST_BYTES = 32

# Bounds on what a configuration may ask for: below them a hash is too cheap
# to mean anything, above them a single AUTH could exhaust memory or CPU.
_LOG2_N_RANGE = range(10, 21)
_R_RANGE = range(1, 33)
_P_RANGE = range(1, 17)

_HASH_FORMAT = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/.]+)\$(?P<digest>[A-Za-z0-9+/.]+)"
)


@dataclass(frozen=True, slots=True, repr=False)
class PasswordHash:
    """A parsed scrypt password hash; ``str()`` gives back the encoded form."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, encoded: str) -> PasswordHash:
        """Read ``$scrypt$ln=..,r=..,p=..$salt$digest``; ValueError says what is wrong."""
        match = _HASH_FORMAT.fullmatch(encoded.strip())
        if match is None:
            raise ValueError(
                "not a recognised password hash (expected $scrypt$ln=N,r=N,p=N$salt$digest;"
                " make one with `relaymail passwd`)"
            )
        log2_n, r, p = int(match["ln"]), int(match["r"]), int(match["p"])
        if log2_n not in _LOG2_N_RANGE or r not in _R_RANGE or p not in _P_RANGE:
            raise ValueError(
                f"scrypt cost ln={log2_n},r={r},p={p} outside the accepted range"
                f" ln {_LOG2_N_RANGE.start}..{_LOG2_N_RANGE.stop - 1},"
                f" r {_R_RANGE.start}..{_R_RANGE.stop - 1}, p {_P_RANGE.start}..{_P_RANGE.stop - 1}"
            )
        salt, digest = _b64decode(match["salt"]), _b64decode(match["digest"])
        if len(salt) < 8 or len(digest) < 16:
            raise ValueError("scrypt salt or digest too short")
        return cls(log2_n=log2_n, r=r, p=p, salt=salt, digest=digest)

    def __str__(self) -> str:
        return (
            f"$scrypt$ln={self.log2_n},r={self.r},p={self.p}"
            f"${_b64encode(self.salt)}${_b64encode(self.digest)}"
        )

    def __repr__(self) -> str:
        # The digest is not secret in the cryptographic sense, but it has no
        # business in logs or tracebacks either.
        return f"PasswordHash(ln={self.log2_n}, r={self.r}, p={self.p})"

    def verify(self, password: str | bytes) -> bool:
        """True if ``password`` hashes to this digest; the comparison is constant-time."""
        secret = password.encode("utf-8") if isinstance(password, str) else password
        candidate = _scrypt(secret, self.salt, self.log2_n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)


def hash_password(password: str, *, log2_n: int = DEFAULT_LOG2_N) -> str:
    """Hash ``password`` with a fresh random salt; the result goes into the configuration."""
    if log2_n not in _LOG2_N_RANGE:
        raise ValueError(f"log2_n must be in {_LOG2_N_RANGE.start}..{_LOG2_N_RANGE.stop - 1}")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password.encode("utf-8"), salt, log2_n, DEFAULT_R, DEFAULT_P, _DIGEST_BYTES)
    return str(PasswordHash(log2_n=log2_n, r=DEFAULT_R, p=DEFAULT_P, salt=salt, digest=digest))


def verify_password(password: str | bytes, encoded: str) -> bool:
    """Check ``password`` against an encoded hash; ValueError if ``encoded`` is not one."""
    return PasswordHash.parse(encoded).verify(password)


def _scrypt(secret: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    # hashlib refuses anything over 32 MiB by default; scrypt needs 128*r*n*p
    # bytes plus its V array, so give it room for exactly the cost asked for.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    padded = text.replace(".", "+") + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("scrypt salt or digest is not valid base64") from None
