"""The 7-bit conversion for next hops without 8BITMIME: what it changes, what it refuses."""

from __future__ import annotations

import email
import email.message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaymail.delivery.convert import ConversionImpossible, quoted_printable, to_7bit

MULTIPART = (
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
    b"preamble\r\n--=_b\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n%s\r\n--=_b\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding:\r\n binary\r\n\r\n"
    b"%s\r\n--=_b--\r\nepilogue\r\n"
)


def leaves(data: bytes) -> list[tuple[str, bytes]]:
    """(content type, decoded body) of every leaf, as a MIME reader sees them."""
    message = email.message_from_bytes(data)
    result = []
    for part in message.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            result.append((part.get_content_type(), payload))
    return result


# Canonical text: lines of any octets but CR and LF, joined by CRLF; no line looks like a
# delimiter of the boundary used above.
lines = st.lists(
    st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=8,
).map(lambda ls: [line for line in ls if not line.startswith(b"--")])
texts = lines.map(b"\r\n".join)


@given(texts)
def test_quoted_printable_round_trip_and_line_length(text):
    import binascii

    encoded = quoted_printable(text)
    assert encoded.isascii()
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert not any(line.endswith((b" ", b"\t")) for line in encoded.split(b"\r\n"))
    assert binascii.a2b_qp(encoded) == text


@given(texts)
def test_a_plain_message_decodes_to_the_same_text(text):
    data = b"Subject: test\r\nFrom: a@example.test\r\n\r\n" + text + b"\r\n"
    converted = to_7bit(data)
    assert converted.isascii()
    assert [body for _, body in leaves(converted)] == [text + b"\r\n"]


@given(texts, texts)
def test_multipart_parts_decode_to_the_same_content(first, second):
    data = MULTIPART % (first, second)
    converted = to_7bit(data)
    assert converted.isascii()
    assert leaves(converted) == leaves(data)


def test_only_8bit_parts_change():
    data = MULTIPART % ("naïve".encode(), b"plain ascii")
    converted = to_7bit(data)
    assert converted.startswith(MULTIPART.split(b"preamble")[0] + b"preamble\r\n--=_b\r\n")
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n--=_b" in converted
    assert converted.count(b"Content-Transfer-Encoding") == 2  # the 8bit one replaced, not added
    assert b"Content-Transfer-Encoding:\r\n binary\r\n\r\nplain ascii\r\n--=_b--\r\nepilogue" in (
        converted
    )


def test_7bit_data_is_returned_unchanged():
    data = MULTIPART % (b"ascii", b"also")
    assert to_7bit(data) is data


def test_a_non_mime_message_gets_the_headers_that_make_it_mime():
    converted = to_7bit("Subject: x\r\n\r\ncafé\r\n".encode())
    message = email.message_from_bytes(converted)
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_charset() == "utf-8"
    assert message.get_payload(decode=True) == "café\r\n".encode()
    latin1 = email.message_from_bytes(to_7bit(b"Subject: x\r\n\r\ncaf\xe9\r\n"))
    assert latin1.get_content_charset() == "unknown-8bit"


def test_nested_multipart_is_converted_recursively():
    inner = (
        b'Content-Type: multipart/alternative; boundary="in"\r\n\r\n'
        b"--in\r\nContent-Type: text/plain\r\n\r\n\xc3\xa9t\xc3\xa9\r\n--in--\r\n"
    )
    data = b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="out"\r\n\r\n'
    data += b"--out\r\n" + inner + b"\r\n--out--\r\n"
    converted = to_7bit(data)
    assert converted.isascii()
    assert leaves(converted) == leaves(data) == [("text/plain", "été".encode())]


IMPOSSIBLE = {
    "8bit-header": b"Subject: caf\xc3\xa9\r\n\r\nbody\r\n",
    "8bit-part-header": MULTIPART.replace(b"charset=utf-8", b"name=\xc3\xa9") % (b"x\xff", b"y"),
    "message-rfc822": (
        b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\n\r\n\xc3\xa9\r\n"
    ),
    "digest-default-part": (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary="d"\r\n\r\n'
        b"--d\r\n\r\nSubject: inner\r\n\r\n\xc3\xa9\r\n--d--\r\n"
    ),
    "base64-with-8bit": (
        b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n\xc3\xa9\r\n"
    ),
    "8bit-preamble": MULTIPART.replace(b"preamble", b"pr\xc3\xa9amble") % (b"x", b"y"),
    "multipart-without-boundary": (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n\xc3\xa9\r\n"
    ),
}


@pytest.mark.parametrize("data", IMPOSSIBLE.values(), ids=IMPOSSIBLE)
def test_what_no_encoding_can_express_is_refused(data):
    with pytest.raises(ConversionImpossible):
        to_7bit(data)


def test_8bit_headers_stay_when_the_next_hop_offers_smtputf8():
    converted = to_7bit("Subject: café\r\n\r\nnaïve\r\n".encode(), utf8_headers=True)
    assert converted.startswith("Subject: café\r\n".encode())
    assert converted.endswith(b"\r\n\r\nna=C3=AFve\r\n")
