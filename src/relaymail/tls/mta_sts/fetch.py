"""Fetching a policy over verified HTTPS (RFC 8461 3.3), through the MTA's own resolver."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.resolver

from ...resolver import lookup_addresses
from ..results import ResultType
from .policy import (
    StsError,
    StsFetchError,
    StsPolicy,
    StsPolicyInvalid,
    parse_policy,
)

if TYPE_CHECKING:
    import httpx  # imported where used: `deliver` and the daemon start without it


MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3: senders may refuse larger bodies
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"


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


async def _addresses(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[str, ...]:
    found = await lookup_addresses(resolver, host)
    if found.error is not None:
        raise StsFetchError(found.error)
    return found.addresses


async def _fetch_body(
    host: str, addresses: tuple[str, ...], port: int, context: ssl.SSLContext
) -> bytes:
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
