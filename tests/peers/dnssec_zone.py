"""DNSSEC on loopback: a validating unbound whose whole Internet is a few zones signed per test.

Theory of operation. A test declares zones (`Zone`): their records, and how each is secured
(`Security`). The fixture signs them the way a DNS operator would, with ldns (ldns-keygen
makes a KSK and a ZSK per zone, ldns-signzone signs with NSEC), builds a signed root that
delegates to every zone, with a DS record for each signed one, and starts one unbound that
is both the authority and the validator:

- every zone, the root included, is an `auth-zone` "for upstream": unbound's iterator takes
  its answers from those zone files instead of the network, and hands them to the validator
  module exactly as if they had come over the wire;
- the only trust anchor is the root's DS, so each answer is validated the way a resolver on
  the Internet validates it: root DNSKEY, the DS in the root, the zone's DNSKEY, the RRSIG on
  the answer, NSEC for denials, including the proof that an unsigned zone has no DS;
- `val-permissive-mode: no` and no `domain-insecure`, so a bogus answer is a SERVFAIL, with
  an Extended DNS Error (`ede: yes`) that says why.

So answers from a SIGNED zone carry the AD bit, answers from an UNSIGNED zone do not
(insecure), and an EXPIRED zone or a `forged` name is bogus (SERVFAIL). The signer (ldns) and
the validator (unbound) are both independent of relaymail and of dnspython, which only asks.
As in dns_server.py, `do-not-query-localhost: yes` guarantees that no query ever leaves
unbound: a LAME zone is delegated to 127.0.0.1, which unbound may not ask, so it SERVFAILs
without any DNSSEC involved.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TLSA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA

from tests.peers.binaries import peer_binary

# The process handling, the port probe and the record syntax are dns_server.py's own.
from tests.peers.dns_server import DNSServer, Record, _die_with_parent, _free_port, _rdata

# Validity of good signatures: from an hour ago (clocks differ) to four weeks ahead.
_SIGNED_FROM = dt.timedelta(hours=-1)
_SIGNED_UNTIL = dt.timedelta(days=28)
# Expired signatures: unbound forgives a signature that expired within a tenth of its
# validity, at most a day (val-sig-skew-max), so these expired well before that.
_EXPIRED_FROM = dt.timedelta(days=-40)
_EXPIRED_UNTIL = dt.timedelta(days=-10)

_ALGORITHM = "ECDSAP256SHA256"  # algorithm 13, what most signed zones use today


class Security(enum.Enum):
    """How a zone is secured, and so what a validating resolver says about its answers."""

    SIGNED = "signed"  # DS in the root, valid signatures: answers are secure (AD set)
    UNSIGNED = "unsigned"  # no DS (the root's NSEC proves it), no signatures: insecure
    EXPIRED = "expired"  # DS in the root, every signature expired: bogus (SERVFAIL)
    LAME = "lame"  # delegated to a server that cannot be asked: SERVFAIL, no DNSSEC involved


@dataclass(frozen=True)
class Zone:
    """One zone below the root. `forged` names have their records altered after signing,
    as a man in the middle would alter them: the signatures no longer match (bogus)."""

    origin: str  # e.g. "dane.test."
    records: tuple[Record, ...] = ()
    security: Security = Security.SIGNED
    forged: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        origin = dns.name.from_text(self.origin)
        for record in self.records:
            if not dns.name.from_text(record.name).is_subdomain(origin):
                raise ValueError(f"{record.name} is not in the zone {self.origin}")
        if self.security is Security.LAME and self.records:
            raise ValueError("a lame zone is never asked, so it cannot hold records")
        owners = {dns.name.from_text(record.name) for record in self.records}
        for name in self.forged:
            if dns.name.from_text(name) not in owners:
                raise ValueError(f"forged name {name} has no records in {self.origin}")
        if self.forged and self.security is not Security.SIGNED:
            raise ValueError("only a signed zone's records can be forged")


class DNSSECResolver(DNSServer):
    """unbound validating answers from `zones`, all signed below a signed root.

    Use `with` or start()/stop(), like DNSServer, whose process handling it shares.
    `trust_anchor` is the root's DS record, for a test that wants to show it.
    """

    def __init__(
        self,
        zones: Iterable[Zone],
        *,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
    ) -> None:
        super().__init__((), host=host, workdir=workdir)
        self.zones = tuple(zones)
        origins = [dns.name.from_text(zone.origin) for zone in self.zones]
        for origin in origins:
            if origin == dns.name.root:
                raise ValueError("the root is the fixture's own zone")
            nested = [other for other in origins if other != origin and origin.is_subdomain(other)]
            if nested or origins.count(origin) > 1:
                raise ValueError(f"{origin} overlaps another zone; each zone is the root's child")
        self.trust_anchor = ""

    def start(self, timeout: float = 10.0) -> None:
        """Sign every zone, start unbound, and return once it answers a query."""
        unbound = peer_binary("unbound")
        keygen, signer = peer_binary("ldns-keygen"), peer_binary("ldns-signzone")
        workdir = self._make_workdir()
        now = dt.datetime.now(dt.UTC)
        auth_zones: list[tuple[str, Path]] = []
        delegations: list[str] = []
        for zone in self.zones:
            origin = dns.name.from_text(zone.origin).to_text()
            server = f"ns.{origin}"
            delegations += [f"{origin} IN NS {server}", f"{server} IN A 127.0.0.1"]
            if zone.security is Security.LAME:
                continue
            path = workdir / f"{origin.rstrip('.')}.zone"
            path.write_text(_zone_text(zone))
            if zone.security is not Security.UNSIGNED:
                expired = zone.security is Security.EXPIRED
                keys = _keys(keygen, origin, workdir)
                path = _sign(
                    signer,
                    path,
                    origin,
                    keys,
                    now + (_EXPIRED_FROM if expired else _SIGNED_FROM),
                    now + (_EXPIRED_UNTIL if expired else _SIGNED_UNTIL),
                )
                delegations.append(_ds(keys[0], workdir))
                if zone.forged:
                    _forge(path, zone.forged)
            auth_zones.append((origin, path))
        root = workdir / "root.zone"
        root.write_text(
            "\n".join(
                [
                    "$TTL 300",
                    ". IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300",
                    ". IN NS ns.invalid.",
                    *delegations,
                ]
            )
            + "\n"
        )
        root_keys = _keys(keygen, ".", workdir)
        root = _sign(signer, root, ".", root_keys, now + _SIGNED_FROM, now + _SIGNED_UNTIL)
        self.trust_anchor = _ds(root_keys[0], workdir)
        auth_zones.insert(0, (".", root))

        deadline = time.monotonic() + timeout
        # Another process may take the port between our probe and unbound's bind: retry.
        while True:
            self.port = _free_port(self.host)
            config = workdir / "unbound.conf"
            config.write_text(_config(self.host, self.port, workdir, self.trust_anchor, auth_zones))
            log = workdir / "unbound.log"
            with log.open("wb") as output:
                self._process = subprocess.Popen(
                    [unbound, "-d", "-p", "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            if self._wait_ready(deadline):
                return
            self._process.wait()
            if time.monotonic() > deadline or "bind" not in log.read_text():
                raise RuntimeError(f"unbound did not start:\n{log.read_text()}")

    @property
    def log(self) -> str:
        """unbound's log so far: validation failures are explained there (val-log-level 2)."""
        assert self._workdir is not None
        return (self._workdir / "unbound.log").read_text()

    def _make_workdir(self) -> Path:
        if self._workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="relaymail-dnssec-")
            self._workdir = Path(self._tempdir.name)
        self._workdir.mkdir(parents=True, exist_ok=True)
        return self._workdir


def _zone_text(zone: Zone) -> str:
    origin = dns.name.from_text(zone.origin).to_text()
    lines = [
        "$TTL 300",
        f"{origin} IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 300",
        f"{origin} IN NS ns.{origin}",
        f"ns.{origin} IN A 127.0.0.1",
    ]
    lines += [f"{dns.name.from_text(r.name)} {r.ttl} IN {_rdata(r)}" for r in zone.records]
    return "\n".join(lines) + "\n"


def _run(command: list[str], workdir: Path) -> str:
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _keys(keygen: str, origin: str, workdir: Path) -> tuple[str, str]:
    """(KSK, ZSK) base names, as ldns-keygen writes them into `workdir`."""
    ksk = _run([keygen, "-a", _ALGORITHM, "-k", origin], workdir)
    zsk = _run([keygen, "-a", _ALGORITHM, origin], workdir)
    return ksk, zsk


def _sign(
    signer: str,
    path: Path,
    origin: str,
    keys: tuple[str, str],
    inception: dt.datetime,
    expiration: dt.datetime,
) -> Path:
    signed = path.with_suffix(".signed")
    _run(
        [
            signer,
            "-o",
            origin,
            "-i",
            f"{inception:%Y%m%d%H%M%S}",
            "-e",
            f"{expiration:%Y%m%d%H%M%S}",
            "-f",
            str(signed),
            str(path),
            *keys,
        ],
        path.parent,
    )
    return signed


def _ds(ksk: str, workdir: Path) -> str:
    """The DS record ldns-keygen wrote for a KSK, without its comment."""
    text = (workdir / f"{ksk}.ds").read_text()
    return " ".join(text.split(";", 1)[0].split())


def _forge(signed: Path, names: tuple[str, ...]) -> None:
    """Alter the data of `names` in a signed zone file, leaving the signatures as they were."""
    owners = {dns.name.from_text(name) for name in names}
    lines = []
    for line in signed.read_text().splitlines():
        fields = line.split(None, 4)
        if len(fields) == 5 and dns.name.from_text(fields[0]) in owners:
            owner, ttl, rdclass, rdtype, text = fields
            if rdtype not in ("RRSIG", "NSEC"):
                rdata = dns.rdata.from_text(rdclass, rdtype, text)
                line = f"{owner}\t{ttl}\t{rdclass}\t{rdtype}\t{_forged(rdata).to_text()}"
        lines.append(line)
    signed.write_text("\n".join(lines) + "\n")


def _forged(rdata: dns.rdata.Rdata) -> dns.rdata.Rdata:
    """The same record with different data, of the kind an attacker would substitute."""
    match rdata:
        case dns.rdtypes.ANY.TLSA.TLSA(cert=cert):
            return rdata.replace(cert=cert[:-1] + bytes([cert[-1] ^ 0xFF]))
        case dns.rdtypes.IN.A.A(address=address) | dns.rdtypes.IN.AAAA.AAAA(address=address):
            return rdata.replace(address=str(ipaddress.ip_address(address) + 1))
        case dns.rdtypes.ANY.MX.MX(preference=preference):
            return rdata.replace(preference=preference + 1)
        case dns.rdtypes.ANY.TXT.TXT(strings=strings):
            return rdata.replace(strings=(*strings, b"forged"))
        case dns.rdtypes.ANY.CNAME.CNAME(target=target):
            return rdata.replace(target=dns.name.Name((b"forged", *target.labels)))
    raise ValueError(f"no forgery defined for {dns.rdatatype.to_text(rdata.rdtype)} records")


def _config(
    host: str, port: int, workdir: Path, trust_anchor: str, zones: list[tuple[str, Path]]
) -> str:
    auth_zones = "".join(
        f"""\
auth-zone:
  name: "{origin}"
  zonefile: "{path}"
  for-downstream: no
  for-upstream: yes
  fallback-enabled: no
"""
        for origin, path in zones
    )
    return f"""\
server:
  interface: {host}@{port}
  port: {port}
  do-ip4: yes
  do-ip6: {"yes" if ":" in host else "no"}
  so-reuseport: no
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  # One line per validation failure, with the reason: the test's evidence of why.
  val-log-level: 2
  num-threads: 1
  msg-cache-size: 1m
  rrset-cache-size: 1m
  access-control: 127.0.0.0/8 allow
  access-control: ::1/128 allow
  module-config: "validator iterator"
  trust-anchor: "{trust_anchor}"
  val-permissive-mode: no
  # RFC 8914 Extended DNS Errors on SERVFAIL, so a client can say why an answer is bogus.
  ede: yes
  # No queries of our own for the trust anchor (RFC 8145 signalling).
  trust-anchor-signaling: no
  do-not-query-localhost: yes
  local-zone: "test." nodefault
  local-zone: "invalid." nodefault
{auth_zones}remote-control:
  control-enable: no
"""
