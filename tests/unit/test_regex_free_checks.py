"""The checks sendmail runs without `re` accept and refuse exactly what the patterns they
replaced did (kept here as the oracle), on generated input that aims at their edges."""

import ipaddress
import re

import idna
from hypothesis import example, given
from hypothesis import strategies as st

from relaymail.address import check_address, check_mailbox, domain_of
from relaymail.canonical import canonical_line_ends
from relaymail.config_values import host_name, size, text
from relaymail.errors import AddressError, ConfigError
from relaymail.headers import display_name, foreign_text, has_control_characters
from relaymail.inbound.grammar import _MAILBOX as MAILBOX_PATTERN

CONTROL_RUN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")
NOT_IN_PATH = re.compile(f"[<> ]|{CONTROL_RUN.pattern}")
SIZE = re.compile(r"\s*(\d+)\s*([KMG]?)B?\s*", re.I)
ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

# Characters near every boundary the checks draw, and some from everywhere else.
EDGES = st.sampled_from(
    [
        *"aZ09 -.\"\\@<>=?!~_bBkKmMgG\t\n\r\x00\x1f\x7f\x80\x85\x9f\xa0\u2028\u2029\u200b\u212a",
        *("\ud800", "\udfff", "\u0663", "\u00b2", "\u3000", "é", "名"),
    ]
)
TEXT = st.text(EDGES, max_size=12) | st.text(max_size=12)


def _refuses(call, *args) -> bool:  # type: ignore[no-untyped-def]
    try:
        call(*args)
    except (AddressError, ConfigError, ValueError):
        return True
    return False


@given(TEXT)
def test_control_characters_are_the_patterns(value: str) -> None:
    assert has_control_characters(value) == bool(CONTROL_RUN.search(value))
    assert foreign_text(value) == CONTROL_RUN.sub(" ", value).strip()


@given(TEXT)
def test_a_display_name_is_an_atom_exactly_when_the_pattern_says(value: str) -> None:
    if CONTROL_RUN.search(value):
        assert _refuses(display_name, value)
        return
    name = " ".join(value.split())
    if name.isascii() and "=?" not in name:
        assert (display_name(value) == name) == bool(ATOMS.fullmatch(name))


@given(TEXT.map(lambda t: t + "@x.test") | TEXT)
@example("a b@x.test")
@example("a\u2028@x.test")
def test_an_address_is_refused_as_the_pattern_refused_it(value: str) -> None:
    local, _, domain = value.rpartition("@")
    old = (
        "@" not in value
        or not local
        or not domain
        or bool(NOT_IN_PATH.search(value))
        or len(value.encode(errors="surrogatepass")) > 254
    )
    assert _refuses(check_address, value) == old


def _old_size(value: str) -> int | None:
    m = SIZE.fullmatch(value)
    if m is None:
        return None
    unit = m.group(2).upper()
    if unit not in ("", "K", "M", "G"):  # KELVIN SIGN: the pattern took it, its table did not
        return None
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


@given(st.text(st.sampled_from(list(" \t\u3000\u00a00123\u0663\u00b2kKmMgGbBx\u212a")), max_size=8))
@example("10 MB")
@example(" 512k ")
@example("1GB")
@example("10\u212a")
def test_a_size_reads_as_the_pattern_read_it(value: str) -> None:
    old = _old_size(value)
    if old is None or not 0 < old < 2**63:
        assert _refuses(size, value, "k")
    else:
        assert size(value, "k") == old


@given(TEXT)
def test_text_and_host_names_are_refused_as_the_patterns_refused_them(value: str) -> None:
    bad_text = not value.strip() or bool(ASCII_CONTROL.search(value))
    assert _refuses(text, value, "k") == bad_text
    if not bad_text:
        name = value.rstrip(".")
        labels_ok = all(HOST_LABEL.match(label) for label in name.split("."))
        assert _refuses(host_name, value, "k") == (len(name) > 253 or not labels_ok)


@given(st.binary().map(lambda b: bytes(b"a\r\n"[x % 3] for x in b)) | st.binary(max_size=20))
def test_line_ends_are_made_crlf_as_the_pattern_made_them(raw: bytes) -> None:
    assert canonical_line_ends(raw) == re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


MAILBOX_EDGES = st.sampled_from(
    [*'aZ09.@"\\[]-_!~ ,:<>()\t\x7f\x80\xa0\u2028é名', "\ud800", "\U0001f600"]
)
MAILBOX = st.lists(st.text(MAILBOX_EDGES, max_size=4) | st.sampled_from(["xn--", "[1.2.3.4]"]),
                   max_size=5).map("".join)  # fmt: skip


@given(MAILBOX | TEXT.map(lambda t: "a@" + t) | TEXT)
@example("a@b@dest.test")
@example("x@dest..test")
@example('"a\\"b"@x.test')
@example("a@dest.test\xa0")
@example("a@x.test.")
@example("a@[300.1.1.1]")
def test_a_mailbox_is_refused_as_smtp_refuses_it(value: str) -> None:
    # The oracle: the SMTP grammar's mailbox, the path checks, IDNA, and an address
    # literal's address (a local name alone, "<root>", is another rule's: no domain).
    smtp_takes = (
        re.fullmatch(MAILBOX_PATTERN, value) is not None
        and not _refuses(check_address, value)
        and not _refuses(domain_of, value)
        and _literal_holds_an_address(value.rpartition("@")[2])
        and _written_as_idna2008(value.rpartition("@")[2])
    )
    assert _refuses(check_mailbox, value) == (not smtp_takes)


def _literal_holds_an_address(domain: str) -> bool:
    if not (domain.startswith("[") and domain.endswith("]")):
        return True
    inside = domain[1:-1]
    try:
        if inside[:5].lower() == "ipv6:":
            if "%" in inside:  # a zone: ipaddress takes one, RFC 5321 does not
                return False
            ipaddress.IPv6Address(inside[5:])
        else:
            ipaddress.IPv4Address(inside)
    except ValueError:
        return False
    return True


def _written_as_idna2008(domain: str) -> bool:
    """RFC 5891 U-labels as typed: what UTS46 would have to map first is not one."""
    name = domain[:-1] if domain.endswith(".") else domain
    if name.isascii() or name.startswith("["):
        return True
    if any(dot in name for dot in "\u3002\uff0e\uff61"):
        return False
    try:
        idna.encode(name.lower(), uts46=False)
    except idna.IDNAError:
        return False
    return True

