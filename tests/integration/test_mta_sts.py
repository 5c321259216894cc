"""MTA-STS lookups against real peers: unbound serving the TXT and address records, an HTTPS
server on loopback serving the policy with certificates from the test CA."""

from __future__ import annotations

import asyncio
import time

import pytest

from relaymail.tls.mta_sts import (
    MAX_POLICY_SIZE,
    StsCache,
    StsMode,
    StsResolver,
    fetch_policy,
)
from relaymail.tls.results import ResultType
from tests.peers.certs import (
    DEFAULT_CERT_NAMES,
    client_context,
    expired_server_context,
    server_context,
    unknown_ca_server_context,
)
from tests.peers.dns_server import TXT, A, ServFail
from tests.peers.https_server import NOT_FOUND, HTTPSServer, Response

DOMAIN = "dest.test"
STS_HOST = "mta-sts.dest.test"
PATH = "/.well-known/mta-sts.txt"
ENFORCE = (
    "version: STSv1\nmode: enforce\nmx: mx.dest.test\nmx: *.backup.dest.test\nmax_age: 86400\n"
)
TESTING = "version: STSv1\r\nmode: testing\r\nmx: mx2.dest.test\r\nmax_age: 3600\r\n"
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def https_server():
    """`await https_server({path: Response})` starts an HTTPS server for mta-sts.dest.test."""
    servers: list[HTTPSServer] = []

    async def start(routes=None, *, context=None) -> HTTPSServer:
        server = HTTPSServer(routes, context=context or server_context((STS_HOST,)))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
def cache(tmp_path):
    cache = StsCache(tmp_path / "sts")
    yield cache
    cache.close()


@pytest.fixture
def clock():
    return Clock()


def sts_dns(dns_server, policy_id: str | None = "1", *extra):
    records = [A(STS_HOST, "127.0.0.1"), *extra]
    if policy_id is not None:
        records.append(TXT(f"_mta-sts.{DOMAIN}", f"v=STSv1; id={policy_id};"))
    return dns_server(records)


def sts_resolver(dns, server, cache, clock, **options) -> StsResolver:
    return StsResolver(
        dns if not hasattr(dns, "resolver") else dns.resolver(),
        cache,
        https_port=server.port,
        ssl_context=client_context(),
        clock=clock,
        **options,
    )


def point_at(resolver: StsResolver, dns) -> None:
    """Make the resolver the StsResolver holds ask another unbound (new zone contents)."""
    resolver._resolver.nameservers = dns.resolver().nameservers


async def test_policy_is_fetched_from_the_address_our_dns_gives_with_the_name_for_sni_and_host(
    dns_server, https_server, cache, clock
):
    served = Response(body=ENFORCE, content_type="text/plain; charset=utf-8")
    server = await https_server({PATH: served})
    result = await sts_resolver(sts_dns(dns_server, "20240101"), server, cache, clock).lookup(
        "Dest.Test."
    )
    assert result.error is None and result.result_type is None
    assert not result.from_cache
    policy = result.policy
    assert policy is not None
    assert (policy.mode, policy.mx, policy.max_age) == (
        StsMode.ENFORCE, ("mx.dest.test", "*.backup.dest.test"), 86400,
    )  # fmt: skip
    assert (policy.policy_id, policy.fetched_at, policy.text) == ("20240101", clock.now, ENFORCE)
    [request] = server.requests
    assert (request.method, request.path) == ("GET", PATH)
    assert request.host == f"{STS_HOST}:{server.port}"
    assert request.sni == STS_HOST
    assert cache.get(DOMAIN) == policy


async def test_an_unchanged_txt_id_uses_the_cached_policy_without_fetching(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=ENFORCE)})
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    first = await resolver.lookup(DOMAIN)
    clock.advance(3600)
    second = await resolver.lookup(DOMAIN)
    assert not first.from_cache and second.from_cache
    assert second.policy == first.policy and second.error is None
    assert len(server.requests) == 1


async def test_a_changed_txt_id_fetches_the_new_policy(dns_server, https_server, cache, clock):
    server = await https_server({PATH: Response(body=ENFORCE)})
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    assert (await resolver.lookup(DOMAIN)).mode is StsMode.ENFORCE
    server.serve(PATH, Response(body=TESTING))
    point_at(resolver, sts_dns(dns_server, "2"))
    clock.advance(60)
    result = await resolver.lookup(DOMAIN)
    assert not result.from_cache
    assert result.policy is not None
    assert (result.policy.mode, result.policy.mx, result.policy.policy_id) == (
        StsMode.TESTING, ("mx2.dest.test",), "2",
    )  # fmt: skip
    assert len(server.requests) == 2
    assert cache.get(DOMAIN) == result.policy


async def test_a_policy_past_half_its_max_age_is_refreshed_even_with_the_same_id(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=ENFORCE)})
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    await resolver.lookup(DOMAIN)
    clock.advance(86400 / 2)
    result = await resolver.lookup(DOMAIN)
    assert not result.from_cache and result.policy is not None
    assert result.policy.fetched_at == clock.now
    assert len(server.requests) == 2


async def test_the_cached_policy_stays_in_force_when_a_refresh_fails(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=ENFORCE)})
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    fetched = (await resolver.lookup(DOMAIN)).policy
    server.serve(PATH, NOT_FOUND)
    point_at(resolver, sts_dns(dns_server, "2"))
    clock.advance(60)
    result = await resolver.lookup(DOMAIN)
    assert result.policy == fetched and result.from_cache
    assert result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error is not None and "HTTP 404" in result.error
    assert "cached policy (id 1) stays in force" in result.error
    # The failure is remembered: the next message does not knock again at once.
    again = await resolver.lookup(DOMAIN)
    assert again == result and len(server.requests) == 2
    clock.advance(301)
    await resolver.lookup(DOMAIN)
    assert len(server.requests) == 3


async def test_an_expired_cached_policy_is_not_used(dns_server, https_server, cache, clock):
    server = await https_server({PATH: Response(body=TESTING)})  # max_age 3600
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    assert (await resolver.lookup(DOMAIN)).policy is not None
    server.serve(PATH, Response(500, b"oops"))
    clock.advance(3600)
    result = await resolver.lookup(DOMAIN)
    assert result.policy is None and not result.from_cache
    assert result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error is not None and "HTTP 500, not 200" in result.error
    assert cache.get(DOMAIN) is None


async def test_a_cached_policy_outlives_its_txt_record_until_max_age(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=TESTING)})
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    fetched = (await resolver.lookup(DOMAIN)).policy
    point_at(resolver, sts_dns(dns_server, None))  # the TXT record is gone
    clock.advance(1000)
    kept = await resolver.lookup(DOMAIN)
    assert kept.policy == fetched and kept.from_cache and kept.error is None
    clock.advance(2600)
    assert (await resolver.lookup(DOMAIN)).policy is None
    assert len(server.requests) == 1


async def test_a_policy_in_mode_none_replaces_an_enforced_one(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=ENFORCE)})
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    assert (await resolver.lookup(DOMAIN)).mode is StsMode.ENFORCE
    server.serve(PATH, Response(body=NONE))
    point_at(resolver, sts_dns(dns_server, "2"))
    result = await resolver.lookup(DOMAIN)
    assert result.mode is StsMode.NONE and result.policy is not None
    cached = cache.get(DOMAIN)
    assert cached is not None and cached.mode is StsMode.NONE


async def test_the_cache_survives_a_new_resolver_and_a_new_cache_object(
    dns_server, https_server, tmp_path, clock
):
    server = await https_server({PATH: Response(body=ENFORCE)})
    dns = sts_dns(dns_server, "1")
    first_cache = StsCache(tmp_path / "state")
    fetched = (await sts_resolver(dns, server, first_cache, clock).lookup(DOMAIN)).policy
    first_cache.close()

    second_cache = StsCache(tmp_path / "state")
    try:
        clock.advance(600)
        result = await sts_resolver(dns, server, second_cache, clock).lookup(DOMAIN)
    finally:
        second_cache.close()
    assert result.from_cache and result.policy == fetched
    assert len(server.requests) == 1


async def test_redirects_are_not_followed(dns_server, https_server, cache, clock):
    server = await https_server()
    server.serve(PATH, Response.redirect(f"https://{STS_HOST}:{server.port}/elsewhere.txt"))
    server.serve("/elsewhere.txt", Response(body=ENFORCE))
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.policy is None
    assert result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error is not None and "HTTP 301 redirect" in result.error
    assert "refused (RFC 8461 3.3)" in result.error
    assert server.paths == [PATH]


async def test_a_404_is_a_fetch_error(dns_server, https_server, cache, clock):
    server = await https_server()
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.policy is None and result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error == (
        f"https://{STS_HOST}{PATH} at 127.0.0.1:{server.port}: HTTP 404, not 200"
    )


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream", None])
async def test_a_body_that_is_not_text_plain_is_refused(
    dns_server, https_server, cache, clock, content_type
):
    server = await https_server({PATH: Response(body=ENFORCE, content_type=content_type)})
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.policy is None and result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error is not None and "not text/plain" in result.error
    assert repr(content_type or "(none)") in result.error


async def test_an_invalid_policy_is_reported_as_sts_policy_invalid(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body="version: STSv1\nmode: enforce\n")})
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.policy is None
    assert result.result_type is ResultType.STS_POLICY_INVALID
    assert result.error == "the max_age field is missing"


async def test_a_body_of_exactly_64_kib_is_accepted(dns_server, https_server, cache, clock):
    padding = "x-padding: "
    body = ENFORCE + padding + "y" * (MAX_POLICY_SIZE - len(ENFORCE) - len(padding) - 1) + "\n"
    assert len(body) == MAX_POLICY_SIZE
    server = await https_server({PATH: Response(body=body, content_length=False)})
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.error is None and result.mode is StsMode.ENFORCE


@pytest.mark.parametrize("content_length", [True, False])
async def test_an_oversized_body_is_abandoned(
    dns_server, https_server, cache, clock, content_length
):
    body = ENFORCE + "x: " + "y" * (4 * 1024 * 1024) + "\n"
    server = await https_server({PATH: Response(body=body, content_length=content_length)})
    started = time.monotonic()
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert time.monotonic() - started < 1.0
    assert result.policy is None and result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error is not None and f"exceeds {MAX_POLICY_SIZE}" in result.error


async def test_a_certificate_for_another_name_is_a_webpki_failure(
    dns_server, https_server, cache, clock
):
    # Valid for 127.0.0.1, the address we connect to, but not for mta-sts.dest.test: the
    # name check must apply to the policy host's name, not to the address.
    assert "127.0.0.1" in DEFAULT_CERT_NAMES
    server = await https_server(
        {PATH: Response(body=ENFORCE)}, context=server_context(DEFAULT_CERT_NAMES)
    )
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.policy is None
    assert result.result_type is ResultType.STS_WEBPKI_INVALID
    assert result.error is not None
    assert f"certificate not valid for {STS_HOST}: Hostname mismatch" in result.error
    assert server.requests == [] and server.sni_names == [STS_HOST]


@pytest.mark.parametrize(
    ("context", "why"),
    [
        (lambda: unknown_ca_server_context((STS_HOST,)), "unable to get local issuer"),
        (lambda: expired_server_context((STS_HOST,)), "certificate has expired"),
    ],
)
async def test_untrusted_or_expired_certificates_are_webpki_failures(
    dns_server, https_server, cache, clock, context, why
):
    server = await https_server({PATH: Response(body=ENFORCE)}, context=context())
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.result_type is ResultType.STS_WEBPKI_INVALID
    assert result.error is not None and why in result.error
    assert server.requests == []


async def test_a_slow_policy_server_times_out(dns_server, https_server, cache, clock):
    server = await https_server({PATH: Response(body=ENFORCE, delay=5.0)})
    resolver = sts_resolver(sts_dns(dns_server), server, cache, clock, fetch_timeout=0.3)
    started = time.monotonic()
    result = await resolver.lookup(DOMAIN)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert result.policy is None and result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error == f"fetching https://{STS_HOST}{PATH}: timed out after 0.3 s"


async def test_a_policy_host_without_addresses_is_a_fetch_error(
    dns_server, https_server, cache, clock
):
    server = await https_server()
    dns = dns_server([TXT(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1")])
    result = await sts_resolver(dns, server, cache, clock).lookup(DOMAIN)
    assert result.policy is None and result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error == f"{STS_HOST} has no address records"


async def test_a_refused_connection_is_a_fetch_error(dns_server, cache, clock):
    server = HTTPSServer()
    await server.start()
    await server.stop()  # the port is now closed
    result = await sts_resolver(sts_dns(dns_server), server, cache, clock).lookup(DOMAIN)
    assert result.policy is None and result.result_type is ResultType.STS_POLICY_FETCH_ERROR
    assert result.error is not None and "cannot connect" in result.error


async def test_a_domain_without_mta_sts_has_no_policy_and_is_remembered(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=ENFORCE)})
    resolver = sts_resolver(sts_dns(dns_server, None), server, cache, clock)
    assert await resolver.lookup(DOMAIN) == (result := await resolver.lookup(DOMAIN))
    assert result.policy is None and result.error is None and result.result_type is None
    # Within five minutes the answer comes from memory: not even the TXT query is sent.
    point_at(resolver, dns_server([ServFail(f"_mta-sts.{DOMAIN}")]))
    clock.advance(299)
    assert (await resolver.lookup(DOMAIN)).error is None
    clock.advance(2)
    failed = await resolver.lookup(DOMAIN)
    assert failed.policy is None and failed.result_type is None
    assert failed.error is not None
    assert failed.error.startswith(f"TXT lookup for _mta-sts.{DOMAIN} failed: ")
    assert failed.error.endswith(" answered SERVFAIL")
    assert server.requests == []


async def test_a_failed_txt_lookup_keeps_the_cached_policy(dns_server, https_server, cache, clock):
    server = await https_server({PATH: Response(body=ENFORCE)})
    resolver = sts_resolver(sts_dns(dns_server, "1"), server, cache, clock)
    fetched = (await resolver.lookup(DOMAIN)).policy
    point_at(resolver, dns_server([ServFail(f"_mta-sts.{DOMAIN}")]))
    result = await resolver.lookup(DOMAIN)
    assert result.policy == fetched and result.from_cache
    assert result.error is not None and "SERVFAIL" in result.error


async def test_several_sts_txt_records_mean_no_policy(dns_server, https_server, cache, clock):
    server = await https_server({PATH: Response(body=ENFORCE)})
    dns = sts_dns(dns_server, "1", TXT(f"_mta-sts.{DOMAIN}", "v=STSv1; id=2"),
                  TXT(f"_mta-sts.{DOMAIN}", "v=spf1 -all"))  # fmt: skip
    result = await sts_resolver(dns, server, cache, clock).lookup(DOMAIN)
    assert result.policy is None and result.result_type is None
    assert result.error is not None and "2 TXT records start with v=STSv1" in result.error
    assert server.requests == []


async def test_concurrent_lookups_of_one_domain_share_one_fetch(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=ENFORCE, delay=0.2)})
    resolver = sts_resolver(sts_dns(dns_server), server, cache, clock)
    results = await asyncio.gather(*(resolver.lookup(DOMAIN) for _ in range(10)))
    assert len(server.requests) == 1
    assert all(r.policy is not None and r.policy == results[0].policy for r in results)


async def test_a_cancelled_lookup_does_not_cancel_the_others(
    dns_server, https_server, cache, clock
):
    server = await https_server({PATH: Response(body=ENFORCE, delay=0.2)})
    resolver = sts_resolver(sts_dns(dns_server), server, cache, clock)
    impatient = asyncio.create_task(resolver.lookup(DOMAIN))
    patient = asyncio.create_task(resolver.lookup(DOMAIN))
    await asyncio.sleep(0.05)
    impatient.cancel()
    result = await patient
    assert result.mode is StsMode.ENFORCE and len(server.requests) == 1


async def test_fetch_policy_alone_checks_the_name_too(dns_server, https_server):
    server = await https_server({PATH: Response(body=TESTING)})
    policy = await fetch_policy(
        DOMAIN, sts_dns(dns_server).resolver(), policy_id="x", https_port=server.port,
        ssl_context=client_context(), timeout=5,
    )  # fmt: skip
    assert policy.mode is StsMode.TESTING and policy.policy_id == "x"
    with pytest.raises(ValueError, match="verifies the certificate name"):
        insecure = client_context()
        insecure.check_hostname = False
        await fetch_policy(DOMAIN, sts_dns(dns_server).resolver(), policy_id="x",
                           https_port=server.port, ssl_context=insecure)  # fmt: skip


async def test_address_literals_have_no_policy(cache, clock, dns_server):
    resolver = StsResolver(dns_server([]).resolver(), cache, clock=clock)
    for literal in ("[127.0.0.1]", "[IPv6:::1]", "127.0.0.1"):
        result = await resolver.lookup(literal)
        assert result.policy is None and result.error is None
