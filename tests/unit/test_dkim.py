"""DKIM's pure parts: the [dkim] tables, the key checks, the author, the signing decision."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from relaymail.config import parse_config
from relaymail.dkim.keygen import generate_key, record_value, txt_record, write_key
from relaymail.dkim.keys import KeyAlgorithm, check_dkim_keys, read_key
from relaymail.dkim.settings import Canonicalization, DkimKeyFile
from relaymail.dkim.sign import (
    NoSingleAuthor,
    SignOutcome,
    _signed_fields,
    author_domain,
    load_signer,
)
from relaymail.errors import ConfigError
from relaymail.message import Origin

MESSAGE = (
    b"From: Ann <ann@example.org>\r\nTo: u@dest.test\r\nSubject: hi\r\n"
    b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n\r\nHello.\r\n"
)


def dkim_config(tmp_path: Path, **table: Any) -> dict[str, Any]:
    return {"dkim": {"example.org": {"selector": "s1", "key_file": str(tmp_path / "k"), **table}}}


# --------------------------------------------------------------------------- [dkim] tables


def test_defaults_relaxed_relaxed_our_own_origins_from_oversigned(tmp_path):
    [domain] = parse_config(dkim_config(tmp_path)).dkim.values()
    assert (domain.header_canonicalization, domain.body_canonicalization) == (
        Canonicalization.RELAXED, Canonicalization.RELAXED)  # fmt: skip
    assert domain.origins == {Origin.LOCAL, Origin.AUTHENTICATED, Origin.RELAY_NETWORKS}
    assert domain.oversign == ("From",)
    assert {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"} <= set(
        domain.headers
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("relaxed/relaxed", ("relaxed", "relaxed")), ("simple/relaxed", ("simple", "relaxed")),
     ("relaxed", ("relaxed", "simple")), ("SIMPLE/SIMPLE", ("simple", "simple"))],
)  # fmt: skip
def test_canonicalization_reads_as_the_c_tag(tmp_path, value, expected):
    [domain] = parse_config(dkim_config(tmp_path, canonicalization=value)).dkim.values()
    assert (domain.header_canonicalization, domain.body_canonicalization) == expected


def test_a_second_key_is_a_second_signature_with_its_own_selector(tmp_path):
    raw = dkim_config(tmp_path, keys=[{"selector": "ed", "key_file": "/k2"}])
    [domain] = parse_config(raw).dkim.values()
    assert [(k.selector, k.where) for k in domain.keys] == [
        ("s1", 'dkim."example.org".key_file'),
        ("ed", 'dkim."example.org".keys[0].key_file'),
    ]


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ({"sign": ["outside"]}, "sign", "never signed"),
        ({"sign": ["everyone"]}, "sign", "not one of"),
        ({"headers": ["To", "Subject"]}, "headers", "must include From"),
        ({"headers": ["From", "Received"]}, "headers", "must not be signed"),
        ({"headers": ["From", "Bcc"]}, "headers", "must not be signed"),
        ({"headers": ["From", "Bad Name"]}, "headers", "not a header field name"),
        ({"headers": []}, "headers", "must not be an empty list"),
        ({"oversign": ["DKIM-Signature"]}, "oversign", "must not be signed"),
        ({"canonicalization": "loose"}, "canonicalization", "simple or relaxed"),
        ({"canonicalization": "relaxed/loose"}, "canonicalization", "simple or relaxed"),
        ({"selector": "a_b"}, "selector", "not a selector"),
        ({"selector": "-a"}, "selector", "not a selector"),
        ({"selector": ""}, "selector", "must not be empty"),
        ({"key_file": ""}, "key_file", "must not be empty"),
        ({"keys": [{"selector": "s1", "key_file": "/x"}]}, "", "selector 's1' is given twice"),
        ({"keys": [{"selector": "s2"}]}, "keys.key_file", "missing"),
        ({"keys": [{"selector": "s2", "key_file": "/x", "kind": "rsa"}]}, "keys.kind", "unknown"),
        ({"keys": ["s2"]}, "keys", "must be a table"),
        ({"strict": True}, "strict", "unknown key"),
    ],
)  # fmt: skip
def test_a_bad_table_names_its_key(tmp_path, table, key, reason):
    with pytest.raises(ConfigError) as caught:
        parse_config(dkim_config(tmp_path, **table))
    assert caught.value.key == 'dkim."example.org"' + (f".{key}" if key else "")
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        ({"x.org": {"key_file": "/k"}}, 'dkim."x.org".selector', "missing"),
        ({"x.org": {"selector": "s"}}, 'dkim."x.org".key_file', "missing"),
        ({"x.org": {}}, 'dkim."x.org"', "names no key"),
        ({"192.0.2.1": {"selector": "s", "key_file": "/k"}}, 'dkim."192.0.2.1"', "not an address"),
        ({"bad..name": {"selector": "s", "key_file": "/k"}}, 'dkim."bad..name"', "not a valid"),
        ({"x.org": "s"}, 'dkim."x.org"', "must be a table"),
    ],
)
def test_a_bad_domain_entry_names_it(raw, key, reason):
    with pytest.raises(ConfigError) as caught:
        parse_config({"dkim": raw})
    assert (caught.value.key, reason in caught.value.reason) == (key, True)


def test_two_spellings_of_one_domain_are_refused():
    entry = {"selector": "s", "key_file": "/k"}
    with pytest.raises(ConfigError, match="the same domain"):
        parse_config({"dkim": {"example.org": entry, "EXAMPLE.org": entry}})


# --------------------------------------------------------------------------- keys


def _pem(key: Any, form: s.PrivateFormat = s.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(s.Encoding.PEM, form, s.NoEncryption())


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> DkimKeyFile:
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(mode)
    return DkimKeyFile("s1", path, 'dkim."example.org".key_file')


def test_pkcs1_as_opendkim_genkey_writes_it_and_dknewkey_seeds_are_read(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = read_key(_key_file(tmp_path, _pem(private, s.PrivateFormat.TraditionalOpenSSL)))
    assert key.algorithm is KeyAlgorithm.RSA
    seed = ed25519.Ed25519PrivateKey.generate()
    raw = seed.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
    key = read_key(_key_file(tmp_path, base64.b64encode(raw) + b"\n"))
    public = seed.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    assert key.algorithm is KeyAlgorithm.ED25519
    assert key.public_key == base64.b64encode(public).decode()


def test_an_encrypted_key_is_refused_as_such(tmp_path):
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        s.Encoding.PEM, s.PrivateFormat.PKCS8, s.BestAvailableEncryption(b"pass")
    )
    with pytest.raises(ConfigError, match="is encrypted"):
        read_key(_key_file(tmp_path, pem))


def test_a_file_larger_than_any_key_is_refused_unread(tmp_path):
    with pytest.raises(ConfigError, match="larger than any key"):
        read_key(_key_file(tmp_path, b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 70_000))


def test_an_rsa_key_over_4096_bits_is_refused(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=4104)
    with pytest.raises(ConfigError, match="4104 bits"):
        read_key(_key_file(tmp_path, _pem(private)))


def test_check_dkim_keys_lists_every_problem_and_raises_none(tmp_path):
    good = tmp_path / "good.key"
    write_key(good, generate_key(KeyAlgorithm.ED25519)[0])
    config = parse_config({"dkim": {
        "a.example": {"selector": "s", "key_file": str(good)},
        "b.example": {"selector": "s", "key_file": str(tmp_path / "missing.key"),
                      "keys": [{"selector": "t", "key_file": str(tmp_path / "also-missing")}]},
    }})  # fmt: skip
    problems = check_dkim_keys(config)
    assert [p.key for p in problems] == [
        'dkim."b.example".key_file', 'dkim."b.example".keys[0].key_file']  # fmt: skip
    assert all("No such file" in p.reason for p in problems)


def test_the_record_is_cut_into_255_octet_strings():
    _, key = generate_key(KeyAlgorithm.RSA, 4096)
    line = txt_record("example.org", "big", key)
    assert line.startswith('big._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=')
    strings = line.split(" IN TXT ")[1].strip('"').split('" "')
    assert [len(x) for x in strings[:-1]] == [255] * (len(strings) - 1)
    assert "".join(strings) == record_value(key)


def test_write_key_never_replaces_a_file(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"in use")
    with pytest.raises(FileExistsError):
        write_key(path, b"new")
    assert path.read_bytes() == b"in use"


# --------------------------------------------------------------------------- the author


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        (b" Ann <ann@Example.ORG>", "example.org"),
        (b' "Doe, Ann" <ann@example.org>', "example.org"),
        (b" =?utf-8?b?w4Zubg==?= <ann@example.org>", "example.org"),
        (b" ann@example.org (Ann)", "example.org"),
        (b"\r\n\tAnn\r\n <ann@example.org>\r\n", "example.org"),
        (" Ann <ann@b\u00fccher.example>".encode(), "xn--bcher-kva.example"),
        (b" John Q. Public <jqp@example.org>", "example.org"),
    ],
)
def test_the_author_domain(value, domain):
    assert author_domain([(b"From", value)]) == domain


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"From", b" a@example.org"), (b"from", b" b@example.org")],
        [(b"From", b" a@example.org, b@example.org")],
        [(b"From", b" undisclosed-recipients:;")],
        [(b"From", b" Ann")],
        [(b"From", b" <>")],
        [(b"From", b" \xff@example.org")],
        [(b"From", b" a@example.org)<b@bank.example>")],
        [(b"From", b" a@example.org <b@bank.example>")],
        [(b"From", b" Ann <ann@example.org> trailing")],
        [(b"From", b" <")],  # the stdlib parser raises IndexError on these
        [(b"From", b" .:")],
        [(b"From", b" \\@")],
    ],
)
def test_none_or_several_authors_are_no_single_author(headers):
    with pytest.raises(NoSingleAuthor):
        author_domain(headers)


@settings(max_examples=2000, deadline=None)
@given(st.text(st.sampled_from(list('"<>@,;:()[]\\. \t=?abxy\r\n\x00\u00e9')), max_size=40))
def test_any_from_value_is_a_domain_or_no_single_author(value):
    try:
        domain = author_domain([(b"From", value.encode())])
    except NoSingleAuthor:
        return
    assert domain and "@" not in domain


# --------------------------------------------------------------------------- signing


def test_fields_are_signed_as_often_as_present_and_from_once_more():
    present = [(b"From", b""), (b"To", b""), (b"Received", b""), (b"Cc", b""), (b"cc", b"")]
    assert _signed_fields(present, ("From", "To", "Cc", "Subject"), ("From", "Reply-To")) == [
        b"from", b"from", b"to", b"cc", b"cc", b"reply-to"]  # fmt: skip


@pytest.fixture
def signer(tmp_path):
    files = {}
    records = {}
    for selector, algorithm in (("rsa", KeyAlgorithm.RSA), ("ed", KeyAlgorithm.ED25519)):
        pem, key = generate_key(algorithm)
        write_key(path := tmp_path / f"{selector}.key", pem)
        files[selector] = str(path)
        records[f"{selector}._domainkey.example.org.".encode()] = record_value(key).encode()
    config = parse_config({"dkim": {"example.org": {
        "selector": "rsa", "key_file": files["rsa"],
        "keys": [{"selector": "ed", "key_file": files["ed"]}], "sign": ["local", "authenticated"],
    }}})  # fmt: skip
    return load_signer(config), records


def test_both_signatures_verify_and_cover_the_message(signer):
    signer, records = signer
    signing = signer.sign(MESSAGE, Origin.AUTHENTICATED)
    assert (signing.outcome, signing.domain, signing.selectors) == (
        SignOutcome.SIGNED, "example.org", ("rsa", "ed"))  # fmt: skip

    def dns(name: bytes, timeout: float = 5) -> bytes:
        return records[name]

    checker = dkim.DKIM(signing.signatures + MESSAGE)
    assert [checker.verify(idx=i, dnsfunc=dns) for i in (0, 1)] == [True, True]


@pytest.mark.parametrize(
    ("data", "origin", "outcome"),
    [
        (MESSAGE, Origin.OUTSIDE, SignOutcome.NOT_OURS),
        (MESSAGE, Origin.RELAY_NETWORKS, SignOutcome.NOT_OURS),  # left out by `sign`
        (MESSAGE.replace(b"example.org", b"elsewhere.test"), Origin.LOCAL, SignOutcome.NO_KEY),
        (b"To: u@dest.test\r\n\r\nno author\r\n", Origin.LOCAL, SignOutcome.NO_AUTHOR),
        (b" continued\r\n" + MESSAGE, Origin.LOCAL, SignOutcome.FAILED),
        (b"no colon here\r\n" + MESSAGE, Origin.LOCAL, SignOutcome.FAILED),
    ],
)
def test_what_is_not_signed_is_queued_as_it_came(signer, data, origin, outcome):
    signer, _ = signer
    signing = signer.sign(data, origin)
    assert (signing.outcome, signing.signatures) == (outcome, b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(list(Origin)))
def test_signing_never_raises_and_never_changes_the_message(tmp_path_factory, data, origin):
    signer = _SIGNER.get("signer")
    if signer is None:
        directory = tmp_path_factory.mktemp("fuzz")
        write_key(path := directory / "k", generate_key(KeyAlgorithm.ED25519)[0])
        signer = _SIGNER["signer"] = load_signer(
            parse_config({"dkim": {"example.org": {"selector": "s", "key_file": str(path)}}})
        )
    headers = b"From: a@example.org\r\n"
    for message in (data, headers + data):
        signing = signer.sign(message, origin)
        assert (signing.outcome is SignOutcome.SIGNED) == (signing.signatures != b"")


_SIGNER: dict[str, Any] = {}


def test_openssl_gives_the_octets_dkimpy_computes_in_python():
    import hashlib

    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

    from relaymail.dkim.openssl_rsa import openssl_rsa_sign

    for bits in (2048, 3072):
        _, key = generate_key(KeyAlgorithm.RSA, bits)
        private = parse_pem_private_key(key.private)
        for text in (b"", b"a header section", bytes(range(256)) * 10):
            digest = hashlib.sha256(text)
            assert openssl_rsa_sign(digest, private) == RSASSA_PKCS1_v1_5_sign(digest, private)
