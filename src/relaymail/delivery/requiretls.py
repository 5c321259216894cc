"""RFC 8689 in delivery: REQUIRETLS (the sender's "never in clear") and `TLS-Required: No`.

A message sent with REQUIRETLS goes only to a host whose name the policy
authenticates (`verify` by configuration, MTA-STS `enforce`, DANE), over TLS
the policy table's REQUIRETLS column accepted, and that offers REQUIRETLS in
its EHLO reply after TLS; `REQUIRETLS` then goes on MAIL, so the next hop keeps
the promise. No fallback of any kind. When every host was refused for what it
is (not for what may pass: a 4xx, a dropped connection), the recipients bounce
with 5.7.30 (RFC 8689 5); otherwise they are deferred as usual.

The header `TLS-Required: No` asks the opposite, that the recipient domain's
published policies be ignored; with REQUIRETLS on MAIL it is ignored (RFC 8689 4.1).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from ..message import header_section
from ..routing import NextHop
from ..smtp.client import Capabilities
from ..tls.context import TlsFacts
from ..tls.policy import Action, Event, decide
from .plan import HostPolicy, HostRefused
from .results import AttemptResult, Status, TlsStep
from .run import DomainRun

KEYWORD = "REQUIRETLS"
STATUS = "5.7.30"  # RFC 8689 5: "REQUIRETLS support required"

# The results that say a host can never take the message; any other failure may pass.
_REFUSALS = frozenset({AttemptResult.REQUIRETLS_REFUSED, AttemptResult.REQUIRETLS_UNAUTHENTICATED})
_TLS_NOT_REQUIRED = re.compile(rb"(?im)^TLS-Required:[ \t]*No[ \t]*\r?$")


def tls_not_required(data: bytes) -> bool:
    """Whether the header section carries RFC 8689's `TLS-Required: No`."""
    return bool(_TLS_NOT_REQUIRED.search(header_section(data)))


def host_policy(policy: HostPolicy | HostRefused, hop: NextHop) -> HostPolicy | HostRefused:
    """The host's policy for a REQUIRETLS message: its own column, or refused outright.

    RFC 8689 4.2.1: the certificate must match a name the sender can trust; an MX
    name from unsigned DNS proves nothing unless MTA-STS lists it, so under `none`,
    `may` and `encrypt` no session could qualify and none is opened.
    """
    if isinstance(policy, HostRefused):
        return policy
    if not policy.level.requires_verification:
        return HostRefused(
            AttemptResult.REQUIRETLS_UNAUTHENTICATED,
            f"policy {policy.level.value} ({policy.source}) does not authenticate {hop.name}; "
            "the message requires REQUIRETLS (RFC 8689): verify, MTA-STS enforce or DANE",
        )
    return dataclasses.replace(policy, requiretls=True)


def ready_for_mail(
    policy: HostPolicy, tls: TlsFacts, caps: Capabilities, tempfail_fallback: bool
) -> TlsStep | None:
    """The table's refusal of a session that is about to send MAIL; None when it may.

    The STARTTLS step already kept every other cell out; this is where the keyword
    after TLS is looked for, and the last line against a leak when TLS is not verified.
    """
    if not policy.requiretls:
        return None
    if not (tls.used and tls.verified):
        event = Event.UNVERIFIED if tls.used else Event.NOT_OFFERED
    elif KEYWORD not in caps:
        event = Event.REQUIRETLS_NOT_OFFERED
    else:
        return None
    decision = decide(policy.level, tempfail_fallback, event, requiretls=True)
    result = (
        AttemptResult.REQUIRETLS_REFUSED
        if decision.action is Action.REQUIRETLS_REFUSED
        else AttemptResult.TLS_POLICY_FAILED
    )
    return TlsStep(policy.level, event, decision.action, result, decision.reason)


def bounce_if_no_host_can(run: DomainRun, failed: Sequence[AttemptResult], summary: str) -> bool:
    """Bounce the pending recipients with 5.7.30 when every host refused for what it is."""
    if not (run.requiretls and failed and all(r in _REFUSALS for r in failed)):
        return False
    reason = f"no next hop can meet REQUIRETLS (RFC 8689): {summary}"
    run.settle(run.pending, Status.BOUNCED, reason, enhanced=STATUS)
    return True
