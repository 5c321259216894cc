"""A new DKIM key: the private key file to keep, the DNS TXT record to publish.

The file is PKCS#8 PEM, created with O_EXCL and mode 0600 (never replacing
a key that may be in use: its selector's record is published) and synced to
disk before the record is printed, so a record is never shown for a key that
was lost. The record is RFC 6376 3.6.1's (RFC 8463 4 for Ed25519), its value
cut into 255-octet character-strings (RFC 1035 3.3.14; a resolver joins them),
which a 2048-bit RSA key needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from .keys import KeyAlgorithm, SigningKey, private_key

__all__ = ["DEFAULT_RSA_BITS", "generate_key", "record_value", "txt_record", "write_key"]

DEFAULT_RSA_BITS: Final = 2048
_STRING: Final = 255  # octets in one DNS character-string


def generate_key(algorithm: KeyAlgorithm, bits: int = DEFAULT_RSA_BITS) -> tuple[bytes, SigningKey]:
    """(the PKCS#8 PEM to store, the key with its public half); `bits` is for RSA only."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm is KeyAlgorithm.RSA:
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    return pem, private_key(algorithm, private)


def record_value(key: SigningKey) -> str:
    """The TXT record's text: "v=DKIM1; k=...; p=..."."""
    return f"v=DKIM1; k={key.algorithm.value}; p={key.public_key}"


def txt_record(domain: str, selector: str, key: SigningKey) -> str:
    """The zone-file line: `selector._domainkey.domain. IN TXT "..." "..."`."""
    value = record_value(key)
    strings = " ".join(f'"{value[i : i + _STRING]}"' for i in range(0, len(value), _STRING))
    return f"{selector}._domainkey.{domain}. IN TXT {strings}"


def write_key(path: Path, pem: bytes) -> None:
    """Create `path` (mode 0600, never over an existing file) holding `pem`, synced.

    OSError as the system gives it: FileExistsError when it exists.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)  # no half-written key left for the next try to trip over
        raise
    os.close(fd)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
