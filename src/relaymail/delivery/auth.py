"""The login step of a session to a credentialed smarthost (SMTP AUTH, RFC 4954).

It runs after the EHLO that follows TLS and before MAIL. Credentials make a
route's TLS level at least their own (`credentialed_policy`), so the STARTTLS
step has already failed the host when TLS is missing; the client connection
refuses AUTH in clear as a last guard. A refused login defers: the password is
fixed by an admin, not by bouncing the mail (RFC 4954 6 calls 535 permanent for
that exchange only). The failure is logged once per burst per host, not once per
message that meets it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import RelayAuth
from ..smtp.client import AUTH_CONTINUE, Capabilities, Verb
from ..smtp.sasl import CANCEL, choose, exchange
from ..smtp.session import SmtpSession
from ..tls.policy import Level
from .plan import HostPolicy
from .results import AttemptResult

log = logging.getLogger("relaymail.delivery.auth")

# Weakest first; DANE only ever comes from TLSA records.
_STRENGTH = (Level.NONE, Level.MAY, Level.ENCRYPT, Level.VERIFY, Level.DANE)
# RFC 4954 6: 535 authentication credentials invalid.
_BAD_CREDENTIALS = 535
_SUCCESS = 235


def credentialed_policy(policy: HostPolicy, host: str, auth: RelayAuth) -> HostPolicy:
    """The host's policy raised to the credentials' level, whatever the policy table says."""
    if _STRENGTH.index(policy.level) >= _STRENGTH.index(auth.tls):
        return policy
    return HostPolicy(auth.tls, f'relay_auth."{host}": credentials go only over TLS')


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """Why the login did not succeed; the host fails with `result`."""

    result: AttemptResult
    detail: str


async def log_in(session: SmtpSession, caps: Capabilities, auth: RelayAuth) -> LoginRefused | None:
    """AUTH with the preferred mechanism the server offers; None once the server says 235."""
    offered = caps.auth_mechanisms
    if not offered:
        # Postfix would send without AUTH; with credentials configured, a server that
        # does not ask for them is far more likely the wrong host or a broken setup.
        return LoginRefused(AttemptResult.AUTH_NOT_OFFERED, "credentials set, AUTH not offered")
    mechanism = choose(offered)
    if mechanism is None:
        detail = f"no AUTH mechanism in common (offered: {' '.join(sorted(offered))})"
        return LoginRefused(AttemptResult.AUTH_NOT_OFFERED, detail)
    steps = exchange(mechanism, auth.username, auth.password)
    reply = await session.command(Verb.AUTH, steps.argument)
    for response in steps.responses:
        if reply.code != AUTH_CONTINUE:
            break
        reply = await session.command(Verb.AUTH_RESPONSE, response)
    if reply.code == AUTH_CONTINUE:
        # More challenges than the mechanism has answers for: cancel (RFC 4954 4).
        reply = await session.command(Verb.AUTH_RESPONSE, CANCEL)
        detail = f"AUTH {mechanism.value}: the server asked for more than the mechanism has"
        return LoginRefused(AttemptResult.AUTH_REFUSED, f"{detail} ({reply})")
    if reply.code == _SUCCESS:
        return None
    if reply.code == _BAD_CREDENTIALS:
        detail = f"login failed: AUTH {mechanism.value} as {auth.username} answered {reply}"
        return LoginRefused(AttemptResult.AUTH_FAILED, detail)
    return LoginRefused(AttemptResult.AUTH_REFUSED, f"AUTH {mechanism.value} answered {reply}")


class LoginFailureLog:
    """Logs a refused login once per burst per host: not again within `quiet_for` seconds."""

    def __init__(
        self, quiet_for: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._quiet_for = quiet_for
        self._clock = clock
        self._last: dict[str, float] = {}

    def refused(self, host: str, refusal: LoginRefused) -> None:
        now = self._clock()
        last = self._last.get(host)
        if last is not None and now - last < self._quiet_for:
            return
        self._last[host] = now
        log.warning(
            "host=%s result=%s: %s; mail to this host is deferred (logged again after %gs)",
            host, refusal.result, refusal.detail, self._quiet_for,
        )  # fmt: skip
