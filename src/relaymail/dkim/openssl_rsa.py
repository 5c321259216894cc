"""dkimpy's RSA signature computed by OpenSSL instead of Python integers.

dkimpy signs RSA with `pow()` on Python integers: 8 to 16 ms per 2048-bit
signature here, most of the cost of signing a small message, against well
under 1 ms in OpenSSL (cryptography). RSASSA-PKCS1-v1_5 is deterministic, so
both give the same octets for the same key and digest (tests/unit/test_dkim.py
checks that). dkimpy calls the module-level function `RSASSA_PKCS1_v1_5_sign(hash,
key)` from its gen_header; `install()` puts ours in its place, once. It is the
one dkimpy internal used, and dkimpy is pinned below 1.2 for it.
"""

from __future__ import annotations

import functools
from typing import Any

import dkim  # type: ignore[import-untyped]

__all__ = ["install", "openssl_rsa_sign"]

_PYTHON_SIGN = dkim.RSASSA_PKCS1_v1_5_sign


@functools.lru_cache(maxsize=64)
def _key(modulus: int, public: int, private: int, p: int, q: int, dp: int, dq: int, qi: int) -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.RSAPrivateNumbers(
        p, q, private, dp, dq, qi, rsa.RSAPublicNumbers(public, modulus)
    )
    return numbers.private_key()


def openssl_rsa_sign(hash: Any, private_key: dict[str, int]) -> bytes:
    """dkim.crypto.RSASSA_PKCS1_v1_5_sign's contract: `hash` is the hashlib object to sign."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    if hash.name != "sha256":  # rsa-sha1 (RFC 8301: not to be used) stays with dkimpy
        return bytes(_PYTHON_SIGN(hash, private_key))
    k = private_key
    key = _key(k["modulus"], k["publicExponent"], k["privateExponent"], k["prime1"],
               k["prime2"], k["exponent1"], k["exponent2"], k["coefficient"])  # fmt: skip
    signature: bytes = key.sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return signature


def install() -> None:
    dkim.RSASSA_PKCS1_v1_5_sign = openssl_rsa_sign
