"""The MTA-STS cache and the TLS report store on both backends, as two nodes use them: what
one stores the other reads, the counters add up, and one node sends each day's report."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import pytest

from relaymail.config_queue import QueueBackend, QueueSettings
from relaymail.tls.mta_sts import StsCache, parse_policy
from relaymail.tls.reporting import ReportState, TlsReportStore, send_daily_reports
from relaymail.tls.reporting.store import CLAIM_LEASE
from relaymail.tls.results import ResultType
from tests.integration.test_tlsrpt import SUBMITTER, YESTERDAY, Mailer, events, mailed_report
from tests.peers.dns_server import TXT
from tests.peers.smtp_server import Script

POLICY = "version: STSv1\nmode: enforce\nmx: *.example.com\nmax_age: 86400\n"


@pytest.fixture
def two_nodes(state_queue: QueueSettings) -> Iterator[tuple[TlsReportStore, TlsReportStore]]:
    a = TlsReportStore(state_queue)
    b = TlsReportStore(dataclasses.replace(state_queue, node="b"))
    yield a, b
    a.close()
    b.close()


def test_a_policy_one_node_fetched_is_in_the_other_nodes_cache(state_queue) -> None:
    a, b = StsCache(state_queue), StsCache(dataclasses.replace(state_queue, node="b"))
    try:
        assert a.get("example.com") is None
        stored = parse_policy(POLICY, policy_id="abc", fetched_at=1764547200.25)
        a.put("example.com", stored)
        assert b.get("example.com") == stored
        replaced = parse_policy(POLICY.replace("enforce", "testing"), policy_id="d", fetched_at=9)
        b.put("example.com", replaced)
        assert a.get("example.com") == replaced
        assert a.domains() == ["example.com"]
        a.delete("example.com")
        assert b.get("example.com") is None
    finally:
        a.close()
        b.close()
    on_file = (state_queue.directory / "mta-sts.db").is_file()
    assert on_file is (state_queue.backend is QueueBackend.SQLITE)


async def test_the_counters_of_both_nodes_make_one_summary(two_nodes) -> None:
    a, b = two_nodes
    await a.record(events())
    b.record_blocking(events())
    [policy_a, policy_b] = [a.summary(YESTERDAY, "dest.test"), b.summary(YESTERDAY, "dest.test")]
    assert policy_a == policy_b
    counts = sorted((p.successful_sessions, p.failed_sessions) for p in policy_a.policies)
    assert counts == [(2, 0), (2, 2 * len(ResultType))]  # each node's sessions, added
    assert a.domains(YESTERDAY) == ["dest.test"]


def test_one_claim_per_report_until_released_or_its_lease_passes(two_nodes) -> None:
    a, b = two_nodes
    now = time.time()
    assert a.claim(YESTERDAY, "dest.test", "a", now) == "a"
    assert b.claim(YESTERDAY, "dest.test", "b", now + 1) == "a"
    assert a.claim(YESTERDAY, "dest.test", "a", now + 2) == "a"  # a node's own claim renews
    assert b.claim(YESTERDAY, "other.test", "b", now) == "b"  # another domain: another claim
    assert b.claim(YESTERDAY, "dest.test", "b", now + 2 + CLAIM_LEASE + 1) == "b"  # a died
    b.release(YESTERDAY, "dest.test", "b")
    assert a.claim(YESTERDAY, "dest.test", "a", now + CLAIM_LEASE * 3) == "a"


async def report_setting(smtp_peer, dns_server, ca_file):
    """A mailbox for reports, the domain's TLSRPT record asking for them by mail, a mailer."""
    mailbox = await smtp_peer(Script())
    dns = dns_server([TXT("_smtp._tls.dest.test", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test")])
    return mailbox, dns, Mailer(mailbox, ca_file)


async def send(store, dns, mailer, node, **options):
    return await send_daily_reports(
        store, YESTERDAY, dns.resolver(), mailer, organization_name="Sender Inc.",
        submitter=SUBMITTER, node=node, **options,
    )  # fmt: skip


async def test_two_nodes_sending_at_once_send_one_report_with_both_nodes_counts(
    two_nodes, smtp_peer, dns_server, ca_file
) -> None:
    a, b = two_nodes
    mailbox, dns, mailer = await report_setting(smtp_peer, dns_server, ca_file)
    await a.record(events())
    await b.record(events())

    [from_a], [from_b] = await asyncio.gather(send(a, dns, mailer, "a"), send(b, dns, mailer, "b"))

    assert len(mailbox.transactions) == 1
    sent = [o for o in (from_a, from_b) if o.destinations]
    [other] = [o for o in (from_a, from_b) if not o.destinations]
    assert [o.state for o in sent] == [ReportState.SENT]
    # The other node found it claimed, or (if it came second) already settled.
    assert other.claimed_by in ("a", "b") or other.detail == "already done"
    _, report = mailed_report(mailbox)
    totals = [p["summary"]["total-successful-session-count"] for p in report["policies"]]
    assert sorted(totals) == [2, 2]
    for store in (a, b):
        progress = store.progress(YESTERDAY, "dest.test")
        assert progress is not None and progress.state is ReportState.SENT


async def test_a_report_claimed_by_a_node_that_died_is_sent_by_another_after_the_lease(
    two_nodes, smtp_peer, dns_server, ca_file
) -> None:
    a, b = two_nodes
    mailbox, dns, mailer = await report_setting(smtp_peer, dns_server, ca_file)
    await a.record(events())
    now = time.time()
    assert a.claim(YESTERDAY, "dest.test", "a", now) == "a"  # and then node a is killed

    [waiting] = await send(b, dns, mailer, "b", clock=lambda: now + 60)
    assert (waiting.state, waiting.claimed_by) == (None, "a")
    assert not mailbox.transactions

    [taken] = await send(b, dns, mailer, "b", clock=lambda: now + CLAIM_LEASE + 1)
    assert taken.state is ReportState.SENT and len(mailbox.transactions) == 1
