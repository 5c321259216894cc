import email.header
import email.utils

import pytest

from relaymail.errors import HeaderValueError
from relaymail.headers import display_name, field, foreign_text, mailbox


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("Plain Name", "Plain Name"),
        ("Smith, John", '"Smith, John"'),
        ('J "the boss" <a@b>', '"J \\"the boss\\" <a@b>"'),
        ("back\\slash", '"back\\\\slash"'),
        ("  spaced   out ", "spaced out"),
    ],
)
def test_ascii_names_are_atoms_or_escaped_quoted_strings(name: str, phrase: str) -> None:
    assert display_name(name) == phrase


@pytest.mark.parametrize("name", ["Jörg", "=?utf-8?q?admin?=", "名前" * 40, "é" * 23])
def test_other_names_become_encoded_words_of_at_most_75_characters(name: str) -> None:
    phrase = display_name(name)
    words = phrase.split(" ")
    assert all(len(w) <= 75 and w.startswith("=?utf-8?b?") for w in words)
    assert str(email.header.make_header(email.header.decode_header(phrase))) == name


@pytest.mark.parametrize(
    "name", ["a\nb", "a\r\nb", "a\rb", "a\0b", "a\tb", "a\x7fb", "a\x85b", "a\u2028b", "a\udcffb"]
)
def test_names_with_controls_or_line_breaks_are_refused(name: str) -> None:
    with pytest.raises(HeaderValueError):
        display_name(name)
    with pytest.raises(HeaderValueError):
        field("Subject", name)


def test_a_mailbox_parses_back_to_the_one_address() -> None:
    assert email.utils.getaddresses([mailbox("eve@src.test", 'x" <admin@x.test>, "y')]) == [
        ('x" <admin@x.test>, "y', "eve@src.test")
    ]
    assert mailbox("eve@src.test") == "<eve@src.test>"


def test_foreign_text_is_one_line() -> None:
    assert foreign_text(" 550 a\r\nb\x85c\u2029d\x1b ") == "550 a b c d"
