"""The test PKI: one CA that every peer's default certificate chains to.

Certificates come from trustme, so they are real X.509 with SubjectAltNames and real
signatures: a client that verifies against `peer_ca()` passes or fails for the same reasons
it would on the Internet (wrong name, expired, unknown issuer), never because a test
switched verification off.
"""

from __future__ import annotations

import datetime
import functools
import ssl

import trustme

# IP addresses go in as iPAddress SANs (trustme decides by syntax): a client that connects
# to 127.0.0.1 with no MX name to check, such as a smarthost route by address, still
# gets a certificate that matches.
DEFAULT_CERT_NAMES: tuple[str, ...] = ("mx.example.test", "localhost", "127.0.0.1", "::1")


@functools.cache
def peer_ca() -> trustme.CA:
    """The CA behind every default peer certificate; one per test process."""
    return trustme.CA(organization_name="relaymail test CA")


@functools.cache
def untrusted_ca() -> trustme.CA:
    """A CA no client in the tests trusts: its certificates must fail verification."""
    return trustme.CA(organization_name="relaymail unknown CA")


# Issuing costs an ECDSA key generation; many peers share the same few name sets.
@functools.cache
def _leaf(
    ca: trustme.CA,
    names: tuple[str, ...],
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> trustme.LeafCert:
    return ca.issue_cert(*names, not_before=not_before, not_after=not_after)


def server_context(
    names: tuple[str, ...] = DEFAULT_CERT_NAMES,
    *,
    ca: trustme.CA | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> ssl.SSLContext:
    """A fresh server-side context whose certificate covers `names`, issued by `ca`.

    Each call returns a new context, so a test may narrow it (say `maximum_version`)
    without touching other tests.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _leaf(ca or peer_ca(), tuple(names), not_before, not_after).configure_cert(context)
    return context


def expired_server_context(names: tuple[str, ...] = DEFAULT_CERT_NAMES) -> ssl.SSLContext:
    """A certificate from the trusted CA that expired a day ago (and covered a year)."""
    # Midnight, so every call in a run hits the same cached certificate.
    now = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return server_context(
        names,
        not_before=now - datetime.timedelta(days=366),
        not_after=now - datetime.timedelta(days=1),
    )


def unknown_ca_server_context(names: tuple[str, ...] = DEFAULT_CERT_NAMES) -> ssl.SSLContext:
    """A certificate for the right names from a CA that nobody trusts."""
    return server_context(names, ca=untrusted_ca())


def client_context(ca: trustme.CA | None = None) -> ssl.SSLContext:
    """A verifying client context (hostname check on) that trusts `ca`, default `peer_ca()`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    (ca or peer_ca()).configure_trust(context)
    return context
