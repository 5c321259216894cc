"""MTA-STS (RFC 8461): which MX hosts a domain vouches for, and whether it insists on TLS.

Theory of operation
-------------------
A domain opts in with two publications:

* a TXT record at `_mta-sts.DOMAIN`, "v=STSv1; id=20240101T000000;", whose id changes
  whenever the policy does (3.1);
* the policy itself at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (3.2, 3.3):
  a mode (enforce, testing, none), the MX patterns allowed, and max_age, the seconds a
  sender may rely on it.

`StsResolver.lookup(domain)` turns that into one `StsLookup` per delivery, following 5.1:

1. TXT query through the MTA's own resolver. None (or none usable: malformed, several
   STSv1 records, a DNS failure) means "no policy now", but an unexpired cached policy
   still applies: that is how a policy outlives an attacker who strips the TXT record.
2. A TXT id equal to the cached policy's id means the cached policy is current: no fetch.
   Past half its max_age the policy is refetched anyway, so a domain that never changes its
   id never sees its policy lapse (the RFC's advice to refresh before expiry, 10.2).
3. Otherwise fetch. A good policy replaces the cached one, whatever its mode: a policy in
   mode none is how a domain withdraws, so it must overwrite an older enforce. A failed
   fetch or an invalid policy leaves the cached one in force, and the failure is returned
   in `error` and `result_type` (the RFC 8460 result type, for TLS reporting).

The fetch trusts nothing it did not check. The name `mta-sts.DOMAIN` is resolved through
the same dnspython resolver the MTA routes with (a test's or an operator's resolver, not
the system's), the connection goes to that address, and the name is used for SNI, the
certificate check and the Host header. Redirects are refused (3.3), only a 200 with media
type text/plain counts, and the body is read as a stream and abandoned past 64 KiB. One
deadline (`fetch_timeout`, 60 s as the RFC suggests) covers DNS, connect, TLS and body.
Each fetch has its own HTTP client: a pooled connection verified for one domain's name
must never carry another domain's request to the same address.

Policies are kept in `StsCache`, a small SQLite file, so they survive restarts: a
restarted MTA that forgot every policy is exactly the window an attacker waits for. The
cache stores the policy text as fetched and parses it again on read, so the stored form
and the parser cannot drift apart.

Two in-memory shortcuts keep the common case cheap. Concurrent lookups of one domain share
one task (one TXT query, at most one fetch). And a lookup that found no policy, or whose
fetch failed, is remembered for `negative_ttl` (5 minutes): a domain without MTA-STS costs
one TXT query per five minutes rather than one per message, and a broken policy host is
not hammered by every queued message.

What a policy means for a delivery (skip MX hosts that do not match, require a verified
certificate for the MX name in mode enforce, only report in mode testing) is the caller's
decision, made from `StsLookup.policy`; this module only finds the policy.
"""

from __future__ import annotations

from .cache import StsCache
from .fetch import MAX_POLICY_SIZE, fetch_policy, https_context
from .lookup import StsResolver
from .policy import (
    NO_POLICY,
    StsError,
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

__all__ = [
    "MAX_POLICY_SIZE",
    "NO_POLICY",
    "StsCache",
    "StsError",
    "StsFetchError",
    "StsLookup",
    "StsMode",
    "StsPolicy",
    "StsPolicyInvalid",
    "StsRecordInvalid",
    "StsResolver",
    "fetch_policy",
    "https_context",
    "parse_policy",
    "parse_txt_record",
    "select_txt_record",
]
