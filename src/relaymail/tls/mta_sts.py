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

import asyncio
import enum
import logging
import re
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.rdtypes.ANY.TXT
import dns.resolver
import idna

from ..errors import RelaymailError
from ..resolver import describe_dns_error, is_ip
from .results import ResultType

if TYPE_CHECKING:
    import httpx  # imported where used: `deliver` and the daemon start without it

log = logging.getLogger("relaymail.mta_sts")

MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3: senders may refuse larger bodies
MAX_MAX_AGE = 31_557_600  # RFC 8461 3.2: one year
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"


class StsMode(enum.StrEnum):
    ENFORCE = "enforce"  # deliver only to matching MX hosts over verified TLS
    TESTING = "testing"  # deliver as usual; report what enforce would have refused
    NONE = "none"  # the domain has withdrawn its policy


class StsError(RelaymailError):
    """MTA-STS information could not be obtained; `reason` says why in a person's words."""

    result_type: ResultType | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StsRecordInvalid(StsError):
    """The `_mta-sts` TXT record is malformed or ambiguous: the domain has no policy now."""


class StsPolicyInvalid(StsError):
    """The policy text breaks RFC 8461 3.2."""

    result_type = ResultType.STS_POLICY_INVALID


class StsFetchError(StsError):
    """The policy could not be fetched; `result_type` tells a certificate problem apart."""

    def __init__(
        self, reason: str, result_type: ResultType = ResultType.STS_POLICY_FETCH_ERROR
    ) -> None:
        super().__init__(reason)
        self.result_type = result_type


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: StsMode
    mx: tuple[str, ...]  # patterns as published, lower case: "mx.example.com", "*.example.net"
    max_age: int  # seconds
    policy_id: str  # the TXT record's id when the policy was fetched
    fetched_at: float  # seconds since the epoch
    text: str  # the policy as served, for TLS-RPT `policy-string`

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def matches(self, mx_host: str) -> bool:
        """Whether `mx_host` is one of the policy's MX hosts (RFC 8461 4.1)."""
        host = mx_host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                # The wildcard stands for exactly one whole leftmost label.
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


@dataclass(frozen=True, slots=True)
class StsLookup:
    """What `StsResolver.lookup` found for one domain."""

    policy: StsPolicy | None  # None: deliver as if the domain had no MTA-STS
    from_cache: bool = False
    error: str | None = None  # what went wrong, even when a cached policy still applies
    result_type: ResultType | None = None  # the TLS-RPT result type for that failure

    @property
    def mode(self) -> StsMode:
        """The mode in force: NONE when there is no policy."""
        return self.policy.mode if self.policy is not None else StsMode.NONE


NO_POLICY = StsLookup(None)

# --- Parsing -------------------------------------------------------------------------

_WSP = " \t"
_MODES = frozenset(mode.value for mode in StsMode)
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
# RFC 5321 sub-domain in A-labels only: U-labels are not allowed in policies (3.2).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Extension values: printable ASCII or UTF-8, inner spaces only (sts-policy-ext-value).
_EXT_VALUE = re.compile(r"[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_FIELD = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,31})=(?P<value>[\x21-\x3a\x3c\x3e-\x7e]+)"
)
_TXT_VERSION = re.compile(r"v=STSv1(?:[ \t;]|$)")


def parse_policy(text: str, *, policy_id: str = "", fetched_at: float = 0.0) -> StsPolicy:
    """The policy in `text` (RFC 8461 3.2); StsPolicyInvalid names the first problem.

    Field names and values are case-sensitive. Lines end in CRLF or LF. Unknown fields
    are ignored; a repeated field other than mx counts only the first time (3.2).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the optional final line terminator
    while lines and lines[-1] in ("", "\r"):
        lines.pop()  # trailing blank lines: editors add them, and they change nothing
    if not lines:
        raise StsPolicyInvalid("the policy is empty")
    fields: dict[str, str] = {}
    mx: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r")
        name, value = _policy_field(line, number)
        if number == 1 and name != "version":
            raise StsPolicyInvalid('line 1: the policy must start with "version: STSv1"')
        if name == "version" and value != "STSv1":
            raise StsPolicyInvalid(f'line {number}: version {value!r} is not "STSv1"')
        if name == "mode" and value not in _MODES:
            raise StsPolicyInvalid(f"line {number}: mode {value!r} is not enforce, testing or none")
        if name == "max_age":
            _check_max_age(value, number)
        if name == "mx":
            mx.append(_mx_pattern(value, number))
        else:
            fields.setdefault(name, value)
    for required in ("mode", "max_age"):
        if required not in fields:
            raise StsPolicyInvalid(f"the {required} field is missing")
    mode = StsMode(fields["mode"])
    if not mx and mode is not StsMode.NONE:
        raise StsPolicyInvalid(f"mode {mode.value} needs at least one mx field")
    return StsPolicy(
        mode=mode,
        mx=tuple(dict.fromkeys(mx)),
        max_age=int(fields["max_age"]),
        policy_id=policy_id,
        fetched_at=fetched_at,
        text=text,
    )


def _policy_field(line: str, number: int) -> tuple[str, str]:
    name, colon, rest = line.partition(":")
    if not colon:
        what = "empty" if not line.strip(_WSP) else f"{line[:40]!r} has no ':'"
        raise StsPolicyInvalid(f"line {number}: {what}; expected 'name: value'")
    if not _FIELD_NAME.fullmatch(name):
        raise StsPolicyInvalid(f"line {number}: {name[:40]!r} is not a valid field name")
    value = rest.strip(_WSP)
    if not _EXT_VALUE.fullmatch(value):
        raise StsPolicyInvalid(f"line {number}: the {name} field has an empty or invalid value")
    return name, value


def _check_max_age(value: str, number: int) -> None:
    if not _MAX_AGE.fullmatch(value):
        raise StsPolicyInvalid(f"line {number}: max_age {value!r} is not 1 to 10 digits")
    if int(value) > MAX_MAX_AGE:
        raise StsPolicyInvalid(
            f"line {number}: max_age {value} exceeds {MAX_MAX_AGE} seconds (one year)"
        )


def _mx_pattern(value: str, number: int) -> str:
    domain = value.removeprefix("*.")
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in domain.split(".")):
        raise StsPolicyInvalid(
            f"line {number}: mx {value!r} is not a host name or '*.' and a host name"
        )
    return value.lower()


def parse_txt_record(text: str) -> str:
    """The policy id from a `_mta-sts` TXT record "v=STSv1; id=...;" (RFC 8461 3.1)."""
    fields = re.split(r"[ \t]*;[ \t]*", text)
    if fields[0] != "v=STSv1":
        raise StsRecordInvalid(f'{text[:60]!r} does not start with "v=STSv1;"')
    if fields[-1] == "":
        fields.pop()  # the optional final delimiter
    policy_id: str | None = None
    for field in fields[1:]:
        match = _TXT_FIELD.fullmatch(field)
        if match is None:
            raise StsRecordInvalid(f"{field[:60]!r} is not a valid field in {text[:80]!r}")
        if match["name"] == "id" and policy_id is None:
            if not _TXT_ID.fullmatch(match["value"]):
                raise StsRecordInvalid(
                    f"id {match['value'][:40]!r} is not 1 to 32 letters and digits"
                )
            policy_id = match["value"]
    if policy_id is None:
        raise StsRecordInvalid(f"no id= field in {text[:80]!r}")
    return policy_id


def select_txt_record(texts: Sequence[str]) -> str | None:
    """The id from a `_mta-sts` RRset: None if no record is an STSv1 record.

    Records that do not start with v=STSv1 are discarded; more than one that does makes
    the domain's intent ambiguous, which the RFC treats as no policy (3.1).
    """
    candidates = [text for text in texts if _TXT_VERSION.match(text)]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise StsRecordInvalid(f"{len(candidates)} TXT records start with v=STSv1, not one")
    return parse_txt_record(candidates[0])


# --- Fetching ------------------------------------------------------------------------


def https_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying context for policy fetches: `ca_file`'s CAs, or the system's."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


async def fetch_policy(
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    *,
    policy_id: str,
    https_port: int = 443,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> StsPolicy:
    """Fetch and parse `domain`'s policy (RFC 8461 3.3) within `timeout` seconds.

    Raises StsFetchError (result type sts-policy-fetch-error or sts-webpki-invalid) or
    StsPolicyInvalid.
    """
    context = ssl_context or https_context()
    if not context.check_hostname or context.verify_mode is not ssl.CERT_REQUIRED:
        raise ValueError("an MTA-STS fetch needs a context that verifies the certificate name")
    host = f"mta-sts.{domain}"
    try:
        async with asyncio.timeout(timeout):
            addresses = await _addresses(resolver, host)
            body = await _fetch_body(host, addresses, https_port, context)
    except TimeoutError:
        url = f"https://{host}{WELL_KNOWN_PATH}"
        raise StsFetchError(f"fetching {url}: timed out after {timeout:g} s") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StsPolicyInvalid(f"the policy is not UTF-8 text (byte {exc.start})") from None
    return parse_policy(text, policy_id=policy_id, fetched_at=clock())


async def _addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    answers = await asyncio.gather(
        *(_address_records(resolver, host, rdtype) for rdtype in ("AAAA", "A"))
    )
    addresses = [address for records, _ in answers for address in records]
    if not addresses:
        errors = [error for _, error in answers if error]
        raise StsFetchError(errors[-1] if errors else f"{host} has no address records")
    return addresses


async def _address_records(
    resolver: dns.asyncresolver.Resolver, host: str, rdtype: str
) -> tuple[list[str], str | None]:
    try:
        answer = await resolver.resolve(host, rdtype, search=False)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return [], None
    except dns.exception.DNSException as exc:
        return [], f"{rdtype} lookup for {host} failed: {describe_dns_error(exc)}"
    return [rdata.to_text() for rdata in answer], None


async def _fetch_body(host: str, addresses: list[str], port: int, context: ssl.SSLContext) -> bytes:
    """The body from the first address that answers; connection failures try the next."""
    failure = StsFetchError(f"{host}: no address to connect to")
    for address in addresses:
        try:
            return await _fetch_from(host, address, port, context)
        except _Unreachable as exc:
            failure = StsFetchError(exc.reason)
    raise failure


class _Unreachable(StsError):
    """This address did not take the connection; another address of the host may."""


async def _fetch_from(host: str, address: str, port: int, context: ssl.SSLContext) -> bytes:
    import httpx

    ip_host = f"[{address}]" if ":" in address else address
    where = f"https://{host}{WELL_KNOWN_PATH} at {ip_host}:{port}"
    headers = {
        "Host": host if port == 443 else f"{host}:{port}",
        # A compressed body could expand past any limit before we see it.
        "Accept-Encoding": "identity",
    }
    # trust_env=False: a proxy from the environment would see the request, and would
    # connect by name through the system resolver instead of the address checked here.
    async with httpx.AsyncClient(
        verify=context, trust_env=False, follow_redirects=False, timeout=None
    ) as client:
        try:
            async with client.stream(
                "GET",
                f"https://{ip_host}:{port}{WELL_KNOWN_PATH}",
                headers=headers,
                extensions={"sni_hostname": host},
            ) as response:
                _check_response(response, where)
                return await _read_limited(response, where)
        except httpx.ConnectError as exc:
            certificate = _certificate_error(exc)
            if certificate is not None:
                raise StsFetchError(
                    f"{where}: certificate not valid for {host}: {certificate}",
                    ResultType.STS_WEBPKI_INVALID,
                ) from None
            handshake = _tls_error(exc)
            if handshake is not None:
                raise StsFetchError(f"{where}: TLS handshake failed: {handshake}") from None
            raise _Unreachable(f"{where}: cannot connect: {exc or type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise StsFetchError(f"{where}: {exc or type(exc).__name__}") from None


def _check_response(response: httpx.Response, where: str) -> None:

    if response.is_redirect:
        target = response.headers.get("location", "")
        raise StsFetchError(
            f"{where}: HTTP {response.status_code} redirect to {target[:100]!r} refused "
            "(RFC 8461 3.3)"
        )
    if response.status_code != 200:
        raise StsFetchError(f"{where}: HTTP {response.status_code}, not 200")
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "text/plain":
        raise StsFetchError(
            f"{where}: media type {media_type or '(none)'!r}, not text/plain (RFC 8461 3.2)"
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise StsFetchError(f"{where}: content encoding {encoding!r} was not asked for")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_POLICY_SIZE:
        raise StsFetchError(f"{where}: body of {length} bytes exceeds {MAX_POLICY_SIZE}")


async def _read_limited(response: httpx.Response, where: str) -> bytes:

    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_POLICY_SIZE:
            raise StsFetchError(f"{where}: body exceeds {MAX_POLICY_SIZE} bytes")
    return bytes(body)


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what lies under it: httpx wraps httpcore's error, which carries the
    ssl module's error as its argument (not always as __cause__)."""
    chain: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return chain


def _certificate_error(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or cause)
    return None


def _tls_error(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return str(cause.reason or cause)
    return None


# --- The durable cache -----------------------------------------------------------------


class StsCache:
    """Policies by domain in `<directory>/mta-sts.db`; a policy is good until fetched_at +
    max_age, which the reader checks (`StsPolicy.is_expired`).

    Calls are short synchronous SQLite statements, safe from any thread.
    """

    FILE_NAME = "mta-sts.db"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / self.FILE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A policy lost to a power cut is fetched again; no need for an fsync per put.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS policy ("
            " domain TEXT PRIMARY KEY, policy_id TEXT NOT NULL,"
            " fetched_at REAL NOT NULL, text TEXT NOT NULL)"
        )

    def get(self, domain: str) -> StsPolicy | None:
        """The stored policy for `domain`, expired or not; None if none or unreadable."""
        with self._lock:
            row = self._db.execute(
                "SELECT policy_id, fetched_at, text FROM policy WHERE domain = ?", (domain,)
            ).fetchone()
        if row is None:
            return None
        try:
            return parse_policy(row[2], policy_id=row[0], fetched_at=row[1])
        except StsPolicyInvalid:
            return None  # stored by a laxer version of the parser: as good as absent

    def put(self, domain: str, policy: StsPolicy) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO policy (domain, policy_id, fetched_at, text)"
                " VALUES (?, ?, ?, ?)",
                (domain, policy.policy_id, policy.fetched_at, policy.text),
            )

    def delete(self, domain: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM policy WHERE domain = ?", (domain,))

    def domains(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT domain FROM policy ORDER BY 1")]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --- The resolver ----------------------------------------------------------------------


class StsResolver:
    """MTA-STS lookups for deliveries: TXT check, durable cache, fetch (see the docstring)."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        cache: StsCache,
        *,
        https_port: int = 443,
        ssl_context: ssl.SSLContext | None = None,
        fetch_timeout: float = 60.0,
        negative_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolver = resolver
        self._cache = cache
        self._https_port = https_port
        self._ssl_context = ssl_context or https_context()
        self._fetch_timeout = fetch_timeout
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._in_flight: dict[str, asyncio.Task[StsLookup]] = {}
        self._remembered: dict[str, tuple[float, StsLookup]] = {}

    async def lookup(self, domain: str) -> StsLookup:
        """The MTA-STS policy in force for `domain` (an ASCII or IDNA domain name)."""
        try:
            domain = _normalize(domain)
        except ValueError as exc:
            return StsLookup(None, error=f"no MTA-STS for {domain!r}: {exc}")
        if not domain:
            return NO_POLICY  # an address literal: no domain to have a policy
        remembered = self._remembered.get(domain)
        if remembered is not None:
            until, result = remembered
            if self._clock() < until:
                return result
            del self._remembered[domain]
        task = self._in_flight.get(domain)
        if task is None:
            task = asyncio.create_task(self._lookup(domain), name=f"mta-sts {domain}")
            self._in_flight[domain] = task
            task.add_done_callback(lambda done: self._forget_task(domain, done))
        # Shielded: one caller giving up must not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    def forget(self, domain: str) -> None:
        """Drop what memory holds for `domain` (not the durable cache)."""
        self._remembered.pop(domain.rstrip(".").lower(), None)

    async def close(self) -> None:
        """Cancel lookups in flight; the cache belongs to the caller."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_task(self, domain: str, task: asyncio.Task[StsLookup]) -> None:
        if self._in_flight.get(domain) is task:
            del self._in_flight[domain]

    async def _lookup(self, domain: str) -> StsLookup:
        result = await self._resolve(domain)
        now = self._clock()
        if result.policy is None or result.result_type is not None:
            until = now + self._negative_ttl
            if result.policy is not None:
                until = min(until, result.policy.expires_at)
            self._remember(domain, until, result)
        if result.error:
            log.warning("domain=%s mta-sts=%s: %s", domain, result.mode.value, result.error)
        return result

    async def _resolve(self, domain: str) -> StsLookup:
        cached = self._cache.get(domain)
        if cached is not None and cached.is_expired(self._clock()):
            self._cache.delete(domain)
            cached = None
        try:
            policy_id = await self._txt_id(domain)
        except StsError as exc:
            return StsLookup(cached, from_cache=cached is not None, error=exc.reason)
        if policy_id is None:
            # No TXT record: the cached policy stays in force until it expires (5.1).
            return StsLookup(cached, from_cache=cached is not None)
        if cached is not None and cached.policy_id == policy_id and not self._stale(cached):
            return StsLookup(cached, from_cache=True)
        try:
            policy = await fetch_policy(
                domain,
                self._resolver,
                policy_id=policy_id,
                https_port=self._https_port,
                ssl_context=self._ssl_context,
                timeout=self._fetch_timeout,
                clock=self._clock,
            )
        except StsError as exc:
            if cached is None:
                return StsLookup(None, error=exc.reason, result_type=exc.result_type)
            return StsLookup(
                cached,
                from_cache=True,
                error=f"{exc.reason}; the cached policy (id {cached.policy_id}) stays in force",
                result_type=exc.result_type,
            )
        self._cache.put(domain, policy)
        if cached is None or cached.text != policy.text:
            log.info(
                "domain=%s mta-sts policy id=%s mode=%s mx=%s max_age=%d",
                domain, policy.policy_id, policy.mode.value, ",".join(policy.mx), policy.max_age,
            )  # fmt: skip
        return StsLookup(policy)

    async def _txt_id(self, domain: str) -> str | None:
        name = f"_mta-sts.{domain}"
        try:
            answer = await self._resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return None
        except dns.exception.DNSException as exc:
            raise StsError(f"TXT lookup for {name} failed: {describe_dns_error(exc)}") from None
        texts = [
            b"".join(rdata.strings).decode("utf-8", errors="replace")
            for rdata in answer
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
        ]
        try:
            return select_txt_record(texts)
        except StsRecordInvalid as exc:
            raise StsRecordInvalid(f"{name}: {exc.reason}; treated as no policy") from None

    def _stale(self, policy: StsPolicy) -> bool:
        return self._clock() >= policy.fetched_at + policy.max_age / 2

    def _remember(self, domain: str, until: float, result: StsLookup) -> None:
        if len(self._remembered) >= 10_000:
            now = self._clock()
            self._remembered = {d: v for d, v in self._remembered.items() if v[0] > now}
        self._remembered[domain] = (until, result)


def _normalize(domain: str) -> str:
    """The lower-case A-label form of `domain`; "" for an address literal."""
    domain = domain.rstrip(".").lower()
    if domain.startswith("[") or is_ip(domain):
        return ""
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(f"not a valid IDNA name ({exc})") from None
    if not domain or not all(_LABEL.fullmatch(label) for label in domain.split(".")):
        raise ValueError("not a valid domain name")
    return domain


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
