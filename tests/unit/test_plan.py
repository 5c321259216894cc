"""The precedence config > DANE > MTA-STS > default, row by row, without DNS or sockets."""

from __future__ import annotations

import pytest

from relaymail.delivery import AttemptResult
from relaymail.delivery.plan import (
    DomainPlan,
    HostPolicy,
    HostRefused,
    plan,
    published_policies_apply,
)
from relaymail.routing import HopSource, NextHop
from relaymail.tls.dane import TlsaLookup, TlsaRecord
from relaymail.tls.mta_sts import StsMode, StsPolicy
from relaymail.tls.policy import DEFAULT_SOURCE, Level

MX = NextHop("mx.example.test", 25, ("127.0.0.1",), HopSource.MX)
OTHER_MX = NextHop("other.example.net", 25, ("127.0.0.2",), HopSource.MX)
ROUTE = NextHop("smarthost.test", 25, ("127.0.0.3",), HopSource.ROUTE)
EE = TlsaRecord(3, 1, 1, b"\x01" * 32)


def sts(mode: StsMode) -> StsPolicy:
    return StsPolicy(mode, ("mx.example.test",), 86400, "id1", 0.0, "version: STSv1")


def tlsa(**facts: object) -> TlsaLookup:
    return TlsaLookup("mx.example.test", 25, "found", **facts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "hops", "relaxed", "applies"),
    [
        (DEFAULT_SOURCE, [MX], False, True),
        ("tls.policy entry example.test", [MX], False, False),  # the config's own entry wins
        (DEFAULT_SOURCE, [ROUTE], False, False),  # a static route is not the domain's MX
        (DEFAULT_SOURCE, [MX], True, False),  # TLS-Required: No
    ],
)
def test_published_policies_apply_only_to_the_domains_own_mx_by_default(
    source, hops, relaxed, applies
):
    assert published_policies_apply(source, hops, relaxed) is applies


def test_config_entry_wins_over_mta_sts_and_dane():
    domain = plan(Level.ENCRYPT, "config", published=False, sts=sts(StsMode.ENFORCE), dane=True)
    assert domain == DomainPlan(Level.ENCRYPT, "config")
    assert domain.host(tlsa(records=(EE,))) == HostPolicy(Level.ENCRYPT, "config")
    assert domain.mx_mismatch(OTHER_MX) is None


def test_mta_sts_enforce_makes_the_domain_verify():
    policy = sts(StsMode.ENFORCE)
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=policy, dane=False)
    assert (domain.level, domain.source) == (Level.VERIFY, "MTA-STS enforce (policy id id1)")
    assert domain.sts == policy
    assert domain.host(None) == HostPolicy(Level.VERIFY, domain.source)


def test_mta_sts_testing_keeps_the_level_and_names_the_policy():
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=sts(StsMode.TESTING), dane=False)
    assert domain.level is Level.MAY
    assert domain.source == f"{DEFAULT_SOURCE}; MTA-STS testing (policy id id1)"


def test_mta_sts_none_or_absent_leaves_the_default():
    for found in (None, sts(StsMode.NONE)):
        domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=found, dane=True)
        assert domain == DomainPlan(Level.MAY, DEFAULT_SOURCE, dane=True)


def test_mta_sts_mx_list_names_the_allowed_hosts():
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=sts(StsMode.ENFORCE), dane=False)
    assert domain.mx_mismatch(MX) is None
    assert domain.mx_mismatch(OTHER_MX) == (
        "other.example.net is not in the MTA-STS policy's mx list (('mx.example.test',))"
    )


def test_dane_records_decide_the_host_over_mta_sts():
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=sts(StsMode.ENFORCE), dane=True)
    found = tlsa(records=(EE,), secure=True)
    assert domain.host(found) == HostPolicy(Level.DANE, "DANE: found", found)


def test_dane_secure_without_usable_records_means_encrypt():
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=None, dane=True)
    found = tlsa(secure=True, unusable=(TlsaRecord(0, 0, 1, b"\x02"),))
    assert domain.host(found) == HostPolicy(Level.ENCRYPT, "DANE without usable records: found")


def test_a_failed_tlsa_lookup_rules_the_host_out():
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=None, dane=True)
    assert domain.host(tlsa(error="bogus")) == HostRefused(
        AttemptResult.DANE_UNUSABLE, "TLSA lookup failed: found"
    )


def test_no_tlsa_records_leave_the_domain_policy():
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=None, dane=True)
    assert domain.host(tlsa()) == HostPolicy(Level.MAY, DEFAULT_SOURCE)


def test_dane_off_ignores_tlsa_records():
    domain = plan(Level.MAY, DEFAULT_SOURCE, published=True, sts=None, dane=False)
    assert domain.host(tlsa(records=(EE,))) == HostPolicy(Level.MAY, DEFAULT_SOURCE)
