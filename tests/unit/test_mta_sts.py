"""MTA-STS without the network: policy and TXT parsing (RFC 8461 3.1, 3.2), MX matching
(4.1), the result types, and the SQLite cache."""

from __future__ import annotations

import pytest

from relaymail.tls.mta_sts import (
    StsFetchError,
    StsLookup,
    StsMode,
    StsPolicy,
    StsPolicyInvalid,
    StsRecordInvalid,
    parse_policy,
    parse_txt_record,
    select_txt_record,
)
from relaymail.tls.results import ResultType

POLICY = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 86400\n"


def policy(*lines: str, end: str = "\n") -> str:
    return end.join(lines) + end


def invalid(text: str) -> str:
    with pytest.raises(StsPolicyInvalid) as info:
        parse_policy(text)
    assert info.value.result_type is ResultType.STS_POLICY_INVALID
    return info.value.reason


# --- Policy parsing ----------------------------------------------------------------------


def test_a_complete_policy_parses_into_its_fields():
    parsed = parse_policy(POLICY, policy_id="20240101", fetched_at=1000.0)
    assert parsed.mode is StsMode.ENFORCE
    assert parsed.mx == ("mail.example.com", "*.example.net")
    assert parsed.max_age == 86400
    assert parsed.policy_id == "20240101"
    assert parsed.fetched_at == 1000.0 and parsed.expires_at == 87400.0
    assert parsed.text == POLICY  # kept verbatim for TLS-RPT policy-string


def test_crlf_and_lf_line_endings_and_no_final_terminator_all_parse():
    lines = ("version: STSv1", "mode: testing", "mx: mx.example.com", "max_age: 60")
    for text in (policy(*lines, end="\r\n"), policy(*lines), "\n".join(lines)):
        parsed = parse_policy(text)
        assert (parsed.mode, parsed.mx, parsed.max_age) == (
            StsMode.TESTING,
            ("mx.example.com",),
            60,
        )


def test_spaces_and_tabs_around_values_are_allowed():
    parsed = parse_policy("version:STSv1\nmode:\t enforce \t\nmx:   mx.example.com\nmax_age: 5 \n")
    assert parsed.mode is StsMode.ENFORCE and parsed.mx == ("mx.example.com",)


def test_unknown_fields_are_ignored():
    text = policy("version: STSv1", "mode: enforce", "x-future: some value, with spaces",
                  "mx: mx.example.com", "max_age: 86400", "comment_2: ok")  # fmt: skip
    assert parse_policy(text).mx == ("mx.example.com",)


def test_a_repeated_field_counts_the_first_time_except_mx():
    text = policy("version: STSv1", "mode: enforce", "mode: testing", "max_age: 10",
                  "max_age: 20", "mx: a.example.com", "mx: b.example.com")  # fmt: skip
    parsed = parse_policy(text)
    assert (parsed.mode, parsed.max_age) == (StsMode.ENFORCE, 10)
    assert parsed.mx == ("a.example.com", "b.example.com")


def test_mode_none_needs_no_mx():
    parsed = parse_policy(policy("version: STSv1", "mode: none", "max_age: 86400"))
    assert parsed.mode is StsMode.NONE and parsed.mx == ()


@pytest.mark.parametrize("mode", ["enforce", "testing"])
def test_enforce_and_testing_need_at_least_one_mx(mode):
    reason = invalid(policy("version: STSv1", f"mode: {mode}", "max_age: 86400"))
    assert reason == f"mode {mode} needs at least one mx field"


def test_the_version_must_come_first():
    assert "must start with" in invalid(policy("mode: enforce", "version: STSv1",
                                               "mx: mx.example.com", "max_age: 1"))  # fmt: skip
    assert "must start with" in invalid(policy("mode: enforce", "mx: m.example.com", "max_age: 1"))


@pytest.mark.parametrize("version", ["STSv2", "stsv1", "STSv1 extra"])
def test_only_version_stsv1_is_accepted(version):
    reason = invalid(policy(f"version: {version}", "mode: enforce", "mx: m.example.com",
                            "max_age: 1"))  # fmt: skip
    assert 'is not "STSv1"' in reason


@pytest.mark.parametrize("missing", ["mode", "max_age"])
def test_mode_and_max_age_are_required(missing):
    lines = {"mode": "mode: enforce", "max_age": "max_age: 86400"}
    del lines[missing]
    reason = invalid(policy("version: STSv1", "mx: mx.example.com", *lines.values()))
    assert reason == f"the {missing} field is missing"


@pytest.mark.parametrize("mode", ["Enforce", "ENFORCE", "strict", "reject"])
def test_mode_values_are_exact_and_case_sensitive(mode):
    assert "is not enforce, testing or none" in invalid(
        policy("version: STSv1", f"mode: {mode}", "mx: mx.example.com", "max_age: 1")
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("-1", "is not 1 to 10 digits"),
        ("1d", "is not 1 to 10 digits"),
        ("1.5", "is not 1 to 10 digits"),
        ("+5", "is not 1 to 10 digits"),
        ("12345678901", "is not 1 to 10 digits"),
        ("31557601", "exceeds 31557600 seconds"),
        ("9999999999", "exceeds 31557600 seconds"),
    ],
)
def test_bad_max_age_values_are_refused(value, why):
    reason = invalid(policy("version: STSv1", "mode: enforce", "mx: mx.example.com",
                            f"max_age: {value}"))  # fmt: skip
    assert why in reason and reason.startswith("line 4:")


@pytest.mark.parametrize("value", ["0", "31557600", "0000000001"])
def test_max_age_bounds_are_accepted(value):
    text = policy("version: STSv1", "mode: enforce", "mx: mx.example.com", f"max_age: {value}")
    assert parse_policy(text).max_age == int(value)


@pytest.mark.parametrize(
    "pattern",
    [
        "*example.com",
        "*.*.example.com",
        "mail.*.example.com",
        "mail..example.com",
        ".example.com",
        "-mail.example.com",
        "mail-.example.com",
        "mx.example.com:25",
        "mx.example.com.",  # the ABNF has no trailing dot
        "mäil.example.com",  # U-labels are not allowed; publish the A-label
        "mx_1.example.com",
        "*",
        "a" * 64 + ".example.com",
    ],
)
def test_malformed_mx_patterns_are_refused(pattern):
    reason = invalid(policy("version: STSv1", "mode: enforce", f"mx: {pattern}", "max_age: 1"))
    assert reason.startswith("line 3: mx")


def test_mx_patterns_are_kept_in_lower_case_without_duplicates():
    text = policy("version: STSv1", "mode: enforce", "mx: MX.Example.COM", "mx: *.Backup.NET",
                  "mx: mx.example.com", "mx: xn--mil-via.example.com", "max_age: 1")  # fmt: skip
    assert parse_policy(text).mx == ("mx.example.com", "*.backup.net", "xn--mil-via.example.com")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the policy is empty"),
        ("\n\n", "the policy is empty"),
        ("version: STSv1\n\nmode: enforce\nmx: m.example.com\nmax_age: 1\n", "line 2: empty"),
        ("version: STSv1\nmode enforce\n", "line 2: 'mode enforce' has no ':'"),
        ("version: STSv1\nmode : enforce\n", "line 2: 'mode ' is not a valid field name"),
        ("version: STSv1\n_x: y\n", "line 2: '_x' is not a valid field name"),
        ("version: STSv1\nmode:\n", "line 2: the mode field has an empty or invalid value"),
        ("version: STSv1\nx: a\x01b\n", "line 2: the x field has an empty or invalid value"),
        ("version: STSv1\rmode: enforce\n", "line 1: the version field has an empty or invalid"),
    ],
)
def test_malformed_lines_are_named_precisely(text, why):
    assert invalid(text).startswith(why)


def test_trailing_blank_lines_are_tolerated():
    assert parse_policy(POLICY + "\n\r\n").mode is StsMode.ENFORCE


def test_utf8_in_extension_values_is_allowed():
    assert parse_policy(POLICY + "note: zürich\n").mode is StsMode.ENFORCE


# --- MX matching (4.1) ----------------------------------------------------------------------


def sts(*mx: str) -> StsPolicy:
    return StsPolicy(StsMode.ENFORCE, tuple(mx), 86400, "1", 0.0, "")


def test_an_exact_pattern_matches_its_host_in_any_case_with_or_without_final_dot():
    rule = sts("mx.example.com")
    assert rule.matches("mx.example.com")
    assert rule.matches("MX.Example.Com")
    assert rule.matches("mx.example.com.")
    assert not rule.matches("mx2.example.com")
    assert not rule.matches("example.com")
    assert not rule.matches("a.mx.example.com")


def test_a_wildcard_matches_exactly_one_leftmost_label():
    rule = sts("*.example.net")
    assert rule.matches("mx1.example.net")
    assert rule.matches("MX1.EXAMPLE.NET.")
    assert not rule.matches("example.net")
    assert not rule.matches("a.b.example.net")
    assert not rule.matches(".example.net")
    assert not rule.matches("mx1.example.network")


def test_any_pattern_may_match():
    rule = parse_policy(POLICY)
    assert rule.matches("mail.example.com") and rule.matches("x.example.net")
    assert not rule.matches("mail.example.org")


def test_expiry_is_fetched_at_plus_max_age():
    rule = StsPolicy(StsMode.TESTING, ("m.example.com",), 100, "1", 1000.0, "")
    assert not rule.is_expired(1099.9)
    assert rule.is_expired(1100.0)


def test_a_lookup_without_a_policy_is_in_mode_none():
    assert StsLookup(None).mode is StsMode.NONE
    assert StsLookup(sts("m.example.com")).mode is StsMode.ENFORCE


# --- The TXT record (3.1) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "policy_id"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1; id=abc", "abc"),
        ("v=STSv1;id=abc;", "abc"),
        ("v=STSv1 ;\tid=abc ; ", "abc"),
        ("v=STSv1; ext=1.2/x; id=A1", "A1"),
        ("v=STSv1; id=first; id=second", "first"),
        ("v=STSv1; id=" + "9" * 32, "9" * 32),
    ],
)
def test_valid_txt_records_give_their_id(text, policy_id):
    assert parse_txt_record(text) == policy_id


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("v=STSv1;", "no id= field"),
        ("v=STSv1", "no id= field"),
        ("v=STSv1; ext=x", "no id= field"),
        ("v=STSv1; id=", "is not a valid field"),
        ("v=STSv1; id=" + "1" * 33, "is not 1 to 32 letters and digits"),
        ("v=STSv1; id=2024-01-01", "is not 1 to 32 letters and digits"),
        ("v=STSv1; id=a b", "is not a valid field"),
        ("v=STSv1;; id=a", "is not a valid field"),
        ("v=STSv2; id=a", 'does not start with "v=STSv1;"'),
        (" v=STSv1; id=a", 'does not start with "v=STSv1;"'),
        ("V=STSv1; id=a", 'does not start with "v=STSv1;"'),
    ],
)
def test_malformed_txt_records_are_refused(text, why):
    with pytest.raises(StsRecordInvalid) as info:
        parse_txt_record(text)
    assert why in info.value.reason
    assert info.value.result_type is None  # no TLS-RPT type: the domain just has no policy


def test_txt_records_that_are_not_sts_records_are_ignored():
    assert select_txt_record([]) is None
    assert select_txt_record(["v=spf1 -all", "google-site-verification=x"]) is None
    assert select_txt_record(["v=STSv10; id=1"]) is None
    assert select_txt_record(["v=spf1 -all", "v=STSv1; id=7"]) == "7"


def test_several_sts_txt_records_mean_no_policy():
    with pytest.raises(StsRecordInvalid, match="2 TXT records start with v=STSv1"):
        select_txt_record(["v=STSv1; id=1", "v=STSv1; id=2"])


def test_fetch_errors_carry_their_tls_rpt_result_type():
    assert StsFetchError("x").result_type == "sts-policy-fetch-error"
    assert StsFetchError("x", ResultType.STS_WEBPKI_INVALID).result_type == "sts-webpki-invalid"
    assert StsPolicyInvalid("x").result_type == "sts-policy-invalid"


# --- The cache --------------------------------------------------------------------------


