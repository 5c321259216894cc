"""Password hashes for AUTH users: format, verification, what the parser refuses."""

from __future__ import annotations

import pytest

from relaymail.accounts import parse_users
from relaymail.passwords import PasswordHash, hash_password, verify_password

# From passlib's documentation for scrypt.hash("password"): hashes made by
# passlib must keep working ("." for "+" in its base64).
PASSLIB_HASH = (
    "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E"
)


def test_hash_password_round_trips_through_parse_and_str() -> None:
    encoded = hash_password("s3cret", log2_n=10)
    assert encoded.startswith("$scrypt$ln=10,r=8,p=1$")
    parsed = PasswordHash.parse(encoded)
    assert str(parsed) == encoded
    assert (parsed.log2_n, parsed.r, parsed.p, len(parsed.salt), len(parsed.digest)) == (
        10,
        8,
        1,
        16,
        32,
    )


def test_default_cost_is_ln_15() -> None:
    assert hash_password("s3cret").startswith("$scrypt$ln=15,r=8,p=1$")


def test_the_right_password_verifies_and_a_wrong_one_does_not() -> None:
    encoded = hash_password("correct horse", log2_n=10)
    assert verify_password("correct horse", encoded)
    assert verify_password(b"correct horse", encoded)
    assert not verify_password("correct horsf", encoded)
    assert not verify_password("", encoded)


def test_each_hash_gets_its_own_salt() -> None:
    assert hash_password("same", log2_n=10) != hash_password("same", log2_n=10)


def test_non_ascii_passwords_are_hashed_as_utf8() -> None:
    encoded = hash_password("pässwörd", log2_n=10)
    assert verify_password("pässwörd".encode(), encoded)
    assert not verify_password("pässwörd".encode("latin-1"), encoded)


def test_a_passlib_hash_verifies() -> None:
    assert verify_password("password", PASSLIB_HASH)
    assert not verify_password("Password", PASSLIB_HASH)


@pytest.mark.parametrize(
    "value",
    [
        "hunter2",  # a plaintext password where a hash belongs
        "",
        "$1$saltsalt$hashhashhashhashhash12",  # md5crypt
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ",  # no digest
        "$scrypt$ln=15,r=8$c2FsdHNhbHRzYWx0$ZGlnZXN0ZGlnZXN0ZGlnZXN0",  # no p
        "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0$not*base64",
        "$scrypt$ln=15,r=8,p=1$c2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0",  # 4-byte salt
        "$scrypt$ln=4,r=8,p=1$c2FsdHNhbHRzYWx0$ZGlnZXN0ZGlnZXN0ZGlnZXN0",  # too cheap
        "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0$ZGlnZXN0ZGlnZXN0ZGlnZXN0",  # 128 GiB
        "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0$ZGlnZXN0ZGlnZXN0ZGlnZXN0$extra",
    ],
)
def test_values_that_are_not_a_recognised_hash_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        PasswordHash.parse(value)


def test_repr_does_not_show_salt_or_digest() -> None:
    parsed = PasswordHash.parse(PASSLIB_HASH)
    assert repr(parsed) == "PasswordHash(ln=16, r=8, p=1)"


def test_parse_users_names_the_user_with_a_bad_entry() -> None:
    good = hash_password("x", log2_n=10)
    users = parse_users({"alice": good}, "example.org")
    assert users["alice"].password.verify("x")
    with pytest.raises(ValueError, match="'bob'"):
        parse_users({"alice": good, "bob": "plaintext"}, "example.org")
    with pytest.raises(ValueError, match="user name"):
        parse_users({"bad name": good}, "example.org")


def test_hash_password_refuses_a_cost_out_of_range() -> None:
    with pytest.raises(ValueError):
        hash_password("x", log2_n=25)
