"""A session's TLS as the policy judged it: the facts for the history, the step for the log."""

from __future__ import annotations

import dataclasses

from ..tls.context import PolicyJudgement, TlsFacts
from ..tls.policy import Event
from .plan import HostPolicy
from .results import TlsStep
from .run import Target
from .starttls import StarttlsOutcome


def judged(tls: TlsFacts, event: Event | None, policy: HostPolicy) -> TlsFacts:
    """The session's TLS facts with what its TLS step saw and the policy that judged it."""
    return dataclasses.replace(tls, judgement=PolicyJudgement(event, policy.level, policy.source))


def tls_step(at: Target, outcome: StarttlsOutcome) -> TlsStep:
    decision = outcome.decision
    return TlsStep(at.policy.level, outcome.event, decision.action, outcome.result, decision.reason)
