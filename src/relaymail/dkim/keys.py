"""DKIM private keys: read, judged, and put in the form dkimpy signs with.

A key is refused at start, with its configuration key and the reason, when
its file cannot be read, is readable or writable by group or others (a
shared secret signs for anyone who has it), holds no private key, or holds
one DKIM cannot use: RSA under 2048 bits (RFC 8301 3.2: verifiers may treat
1024-bit keys as unsigned; large receivers do) or over 4096 (verifiers need
not handle them), or a key that is neither RSA nor Ed25519 (RFC 8463).

Files are PEM (PKCS#8 "PRIVATE KEY", or PKCS#1 "RSA PRIVATE KEY" as openssl
and opendkim-genkey write it); an Ed25519 key may also be the base64 32-octet
seed dkimpy's dknewkey writes.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..config_fields import secret_file
from ..errors import ConfigError
from .settings import DkimDomain, DkimKeyFile

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "KeyAlgorithm",
    "SigningKey",
    "check_dkim_keys",
    "load_domain_keys",
    "private_key",
    "read_key",
]

MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 4096
_ED25519_SEED: Final = 32
# A 4096-bit PEM key is 3.3 KB; a log file named by mistake is not read whole.
_MAX_KEY_FILE: Final = 64 * 1024


class KeyAlgorithm(enum.StrEnum):
    """The k= of the DNS record, and the a= of the signature."""

    RSA = "rsa"
    ED25519 = "ed25519"

    @property
    def signature_algorithm(self) -> bytes:
        return b"rsa-sha256" if self is KeyAlgorithm.RSA else b"ed25519-sha256"


@dataclass(frozen=True, slots=True)
class SigningKey:
    selector: str
    algorithm: KeyAlgorithm
    public_key: str
    """The p= of the DNS record (RFC 6376 3.6.1; RFC 8463 4 for Ed25519)."""
    private: bytes = field(repr=False)
    """In dkimpy's form: PKCS#1 PEM for RSA, the base64 seed for Ed25519."""


def private_key(algorithm: KeyAlgorithm, private: object) -> SigningKey:
    """A cryptography private key in dkimpy's form, with its public half; selector unset."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm is KeyAlgorithm.RSA:
        assert isinstance(private, rsa.RSAPrivateKey)
        der = private.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
        form = private.private_bytes(
            s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()
        )
        return SigningKey("", algorithm, base64.b64encode(der).decode("ascii"), form)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    raw = private.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    seed = private.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
    return SigningKey("", algorithm, base64.b64encode(raw).decode("ascii"), base64.b64encode(seed))


def read_key(entry: DkimKeyFile) -> SigningKey:
    """The key `entry` names, checked; ConfigError naming `entry.where` and the reason."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = entry.where
    file = secret_file(str(entry.key_file), key)
    try:
        with file.open("rb") as stream:
            content = stream.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {file}: {exc.strerror or exc}") from None
    if len(content) > _MAX_KEY_FILE:
        raise ConfigError(key, f"{file} is larger than any key ({_MAX_KEY_FILE // 1024} KiB)")
    private: object
    if b"-----BEGIN" in content:
        try:
            private = serialization.load_pem_private_key(content, password=None)
        except TypeError:
            raise ConfigError(key, f"{file} is encrypted; a passphrase cannot be given") from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigError(key, f"{file} holds no PEM private key") from None
    else:
        private = _seed(content, file, key)
    if isinstance(private, rsa.RSAPrivateKey):
        bits = private.key_size
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise ConfigError(
                key,
                f"{file}: an RSA key of {bits} bits; DKIM needs {MIN_RSA_BITS} to"
                f" {MAX_RSA_BITS} (RFC 8301 3.2)",
            )
        algorithm = KeyAlgorithm.RSA
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        algorithm = KeyAlgorithm.ED25519
    else:
        kind = type(private).__name__.removeprefix("_").replace("PrivateKey", "")
        raise ConfigError(key, f"{file}: a {kind} key; DKIM signs with RSA or Ed25519 only")
    signing = private_key(algorithm, private)
    return SigningKey(entry.selector, algorithm, signing.public_key, signing.private)


def _seed(content: bytes, file: Path, key: str) -> object:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        seed = base64.b64decode(content.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != _ED25519_SEED:
        raise ConfigError(key, f"{file} holds no private key (PEM, or an Ed25519 seed in base64)")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def load_domain_keys(config: Config) -> dict[str, tuple[SigningKey, ...]]:
    """Every [dkim] key, read and checked; the first problem raises ConfigError."""
    return {name: tuple(map(read_key, domain.keys)) for name, domain in config.dkim.items()}


def check_dkim_keys(config: Config) -> list[ConfigError]:
    """Every problem with every [dkim] key (missing, unreadable, too weak, ...), none raised.

    For `relaymail check`: each ConfigError names the key (dkim."d".key_file) and the reason.
    """
    problems = []
    domains: Mapping[str, DkimDomain] = config.dkim
    for domain in domains.values():
        for entry in domain.keys:
            try:
                read_key(entry)
            except ConfigError as exc:
                problems.append(exc)
    return problems
