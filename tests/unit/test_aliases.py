"""The aliases(5) parser, its checks, and expansion: pure, no files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaymail.local import MAX_EXPANSION, Aliases, AliasProblem, expand, parse_aliases, qualify
from relaymail.local.aliases import MAX_DEPTH

DOMAIN = "example.org"


def parsed(text: str) -> Aliases:
    aliases, problems = parse_aliases(text, DOMAIN)
    assert problems == ()
    return aliases


def problem_lines(text: str) -> list[int]:
    return [p.line for p in parse_aliases(text, DOMAIN)[1]]


def test_qualify_adds_the_local_domain_to_bare_names_only():
    assert qualify("root", DOMAIN) == "root@example.org"
    assert qualify("a@b.example", DOMAIN) == "a@b.example"
    assert qualify("", DOMAIN) == ""  # the null sender stays null


def test_lists_continuations_comments_and_blank_lines():
    aliases = parsed(
        "# the system's mail\n"
        "root: admin@example.net, ops\n"
        "\n"
        "ops:\talice@example.net,\n"
        "  # Carol joined later\n"
        "\tbob@example.net\r\n"
        "    , carol@example.net,\n"
    )
    assert expand(["root"], aliases, DOMAIN) == (
        "admin@example.net",
        "alice@example.net",
        "bob@example.net",
        "carol@example.net",
    )


def test_names_match_case_insensitively_bare_or_at_the_local_domain():
    aliases = parsed("Root: admin@example.net\n")
    for recipient in ("root", "ROOT", "root@example.org", "rOOt@EXAMPLE.ORG"):
        assert expand([recipient], aliases, DOMAIN) == ("admin@example.net",)
    # Another domain's root is not ours; a bare name without alias is only qualified.
    assert expand(["root@other.example", "www-data"], aliases, DOMAIN) == (
        "root@other.example",
        "www-data@example.org",
    )


def test_nested_aliases_and_targets_at_the_local_domain_expand_again():
    aliases = parsed("root: sysadmins@example.org\nsysadmins: ann, bob@example.net\n")
    assert expand(["root"], aliases, DOMAIN) == ("ann@example.org", "bob@example.net")


def test_duplicates_are_removed_domain_case_ignored():
    aliases = parsed("a: x@example.net, X@EXAMPLE.NET\nb: x@Example.Net, a\n")
    assert expand(["a", "b", "x@example.net"], aliases, DOMAIN) == (
        "x@example.net",
        "X@EXAMPLE.NET",
    )


def test_a_name_listing_itself_keeps_that_address_as_in_sendmail():
    aliases = parsed("alice: alice, backup@example.net\n")
    assert expand(["alice"], aliases, DOMAIN) == ("alice@example.org", "backup@example.net")


def test_backslash_name_is_not_expanded_again():
    aliases = parsed("root: \\root, admin@example.net\n")
    assert expand(["root"], aliases, DOMAIN) == ("root@example.org", "admin@example.net")


def test_quoted_names_and_angle_brackets():
    aliases = parsed('"help desk": <ann@example.net>, "b,c"@example.net\n')
    assert expand(['"help desk"@example.org'], aliases, DOMAIN) == (
        "ann@example.net",
        '"b,c"@example.net',
    )


def test_a_loop_through_two_names_is_refused_with_the_cycle_named():
    _, problems = parse_aliases("a: b\nb: c\nc: a, x@example.net\n", DOMAIN)
    assert problems == (AliasProblem(1, "alias loop: a -> b -> c -> a"),)


def test_a_loop_through_the_local_domain_form_is_a_loop_too():
    assert problem_lines("a: b@EXAMPLE.org\nb: a@example.org\n") == [1]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("root: |/usr/bin/procmail\n", 1),
        ('root: "|/usr/bin/procmail -a x"\n', 1),
        ("# x\nroot: /var/mail/root\n", 2),
        ("root: :include:/etc/mail/list\n", 1),
        ("root: ok@example.net,\n :INCLUDE:/etc/mail/list\n", 1),
    ],
)
def test_local_delivery_targets_are_refused_naming_the_line(text: str, line: int):
    assert problem_lines(text) == [line]


@pytest.mark.parametrize(
    "text",
    [
        "root admin@example.net\n",  # no colon
        ": admin@example.net\n",  # no name
        "root:\n",  # no target
        "root: , ,\n",
        "root@example.org: admin@example.net\n",  # a key is a local part
        '"root: admin@example.net\n',  # unclosed quote
        "root: <a b>@example.net\n",
        "root: admin@\n",
        "root: a\x00b@example.net\n",
        "   admin@example.net\n",  # continuation before any alias
        "root: a@example.net\nROOT: b@example.net\n",  # duplicate, any case
        "root: " + "x" * 65 + "@example.net\n",
    ],
)
def test_malformed_entries_are_problems_not_aliases(text: str):
    assert problem_lines(text)


def test_every_problem_is_reported_with_its_own_line():
    text = "a: |x\nb: ok@example.net\nc\nd: /f\nb: again@example.net\n"
    assert problem_lines(text) == [1, 3, 4, 5]


def test_expansion_is_bounded_even_when_it_doubles_at_each_level():
    # Each level lists the next twice: 2**12 addresses before duplicates are removed.
    text = "".join(f"l{i}: l{i + 1}, l{i + 1}@example.org\n" for i in range(12)) + "l12: x@e.net\n"
    _, problems = parse_aliases(text, DOMAIN)
    assert len(problems) == 1 and f"more than {MAX_EXPANSION}" in problems[0].reason


def test_nesting_is_bounded_and_a_long_chain_does_not_recurse_without_end():
    text = "".join(f"n{i}: n{i + 1}\n" for i in range(5000)) + "n5000: x@example.net\n"
    _, problems = parse_aliases(text, DOMAIN)
    # Reported once, where the chain first gets too deep, not for every name above it.
    assert [p.line for p in problems] == [5001 - MAX_DEPTH]
    assert f"more than {MAX_DEPTH} levels" in problems[0].reason


def test_a_thousand_addresses_is_within_the_bound():
    text = "big: " + ", ".join(f"u{i}@example.net" for i in range(MAX_EXPANSION)) + "\n"
    assert len(expand(["big"], parsed(text), DOMAIN)) == MAX_EXPANSION


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(':,#"\\<>@|/ \t\nab.-xyz\x00é')), max_size=200))
def test_the_parser_never_raises_on_arbitrary_text(text: str):
    aliases, problems = parse_aliases(text, DOMAIN)
    if not problems:
        for name in aliases.entries:
            assert len(expand([name], aliases, DOMAIN)) <= MAX_EXPANSION


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_the_parser_never_raises_on_any_unicode(text: str):
    parse_aliases(text, DOMAIN)
