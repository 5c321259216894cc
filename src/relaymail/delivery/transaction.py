"""One mail transaction on an open session: MAIL, RCPT, DATA and the message.

With PIPELINING (RFC 2920) the envelope goes in one write and the replies are
read back; each reply is applied by the command it answers (`ReplyEvent.verb`),
so a session that ends early (a 421) leaves exactly the unanswered commands
unapplied. Without PIPELINING each command waits for the one before.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..body import MessageBody
from ..dsn_request import DsnRequest
from ..errors import SessionError
from ..smtp.client import Capabilities, Verb
from ..smtp.reply import Reply
from ..smtp.session import SmtpSession
from ..tls.context import TlsFacts
from .convert import ConversionImpossible
from .results import AttemptResult, Status
from .run import DomainRun, Target


@dataclass(slots=True)
class _Replies:
    """The envelope's replies by the command they answer."""

    mail: Reply | None = None
    rcpts: list[tuple[str, Reply]] = field(default_factory=list)
    data: Reply | None = None
    last: Reply | None = None

    @property
    def mail_accepted(self) -> bool:
        return self.mail is not None and self.mail.is_success

    @property
    def accepted(self) -> list[str]:
        if not self.mail_accepted:
            return []
        return [rcpt for rcpt, reply in self.rcpts if reply.is_success]


async def transaction(
    run: DomainRun, at: Target, session: SmtpSession, caps: Capabilities, tls: TlsFacts,
    data_timeout: float,
) -> None:  # fmt: skip
    """Offer the pending recipients the message; settle each by the replies."""
    hop = at.hop
    rcpts = run.pending
    try:
        body = run.data_for(caps)
    except ConversionImpossible as exc:
        reason = f"{hop.label} does not offer 8BITMIME and conversion to 7-bit failed: {exc}"
        run.settle(rcpts, Status.BOUNCED, reason, host=hop.label, tls=tls, enhanced="5.6.3")
        run.note(at, AttemptResult.EIGHTBITMIME_REFUSED, tls, reason)
        return
    size = body.size
    limit = caps.size_limit
    if limit is not None and size > limit:
        reason = f"message size {size} exceeds the limit of {hop.label} ({limit}, from SIZE)"
        run.settle(rcpts, Status.BOUNCED, reason, host=hop.label, tls=tls)
        run.note(at, AttemptResult.SIZE_REFUSED, tls, reason)
        return
    if run.needs_smtputf8 and "SMTPUTF8" not in caps:
        reason = f"{hop.label} does not offer SMTPUTF8, needed for an international address"
        run.settle(rcpts, Status.BOUNCED, reason, host=hop.label, tls=tls)
        run.note(at, AttemptResult.SMTPUTF8_REFUSED, tls, reason)
        return
    if session.conn.in_transaction:
        reset = await session.command(Verb.RSET)
        if not reset.is_success:
            raise SessionError(f"RSET answered {reset}")
    params = _mail_parameters(caps, size, body, run.needs_smtputf8, run.requiretls)
    # RFC 3461 5.2.1: a next hop that offers DSN gets the parameters as they came;
    # one that does not gets none, and a NOTIFY=SUCCESS recipient a "relayed" report.
    dsn = run.dsn if "DSN" in caps else None
    if dsn is not None:
        params += dsn.mail_wire
    mail = f"FROM:<{run.sender}>{params}"
    replies = await _envelope(session, caps, mail, rcpts, dsn=dsn, smtputf8=run.needs_smtputf8)
    _settle_envelope(run, at, rcpts, replies, tls)
    accepted = replies.accepted
    data_reply = replies.data
    if data_reply is None or data_reply.code == 421:
        # Those accepted, and those a 421 left unanswered (their RCPTs were never read).
        answered = {rcpt for rcpt, _ in replies.rcpts}
        unanswered = [r for r in rcpts if r not in answered] if replies.mail_accepted else []
        if waiting := accepted + unanswered:
            reason = f"{hop.label} ended the session before DATA: {replies.last}"
            run.settle(
                waiting, Status.DEFERRED, reason, host=hop.label, reply=replies.last, tls=tls
            )
        return
    if data_reply.code != 354:
        if accepted:
            status = Status.BOUNCED if data_reply.is_permanent else Status.DEFERRED
            reason = f"{hop.label} refused DATA: {data_reply}"
            run.settle(accepted, status, reason, host=hop.label, reply=data_reply, tls=tls)
            run.note(at, AttemptResult.of_message(status), tls, reason)
        return
    if not accepted:
        # RFC 2920 3.1: a 354 after every RCPT failed still wants data; send none.
        session.write_terminator()
        await session.read_reply()
        return
    final = await session.send_message(body.chunks(), data_timeout, dot_lines=body.dot_lines)
    if final.is_success:
        status, reason = Status.DELIVERED, f"accepted by {hop.label}"
    elif final.is_transient:
        status, reason = Status.DEFERRED, f"{hop.label} deferred the message: {final}"
    else:
        status, reason = Status.BOUNCED, f"{hop.label} rejected the message: {final}"
    run.settle(
        accepted, status, reason, host=hop.label, reply=final, tls=tls,
        dsn_passed_on="DSN" in caps,
    )  # fmt: skip
    run.note(at, AttemptResult.of_message(status), tls, f"{len(accepted)} recipient(s): {final}")


async def probe(
    run: DomainRun, at: Target, session: SmtpSession, caps: Capabilities, tls: TlsFacts,
    data_timeout: float,
) -> None:  # fmt: skip
    """MAIL, RCPT and RSET, never DATA: what the next hop says of each pending recipient.

    An accepted recipient is settled DELIVERED (the next hop takes it), a 5xx BOUNCED,
    a 4xx stays pending for the next host; a refused MAIL says nothing of the recipients.
    """
    label = at.hop.label
    rcpts = run.pending
    if session.conn.in_transaction:
        reset = await session.command(Verb.RSET)
        if not reset.is_success:
            raise SessionError(f"RSET answered {reset}")
    replies = await _envelope(session, caps, f"FROM:<{run.sender}>", rcpts, then=Verb.RSET)
    mail = replies.mail
    if mail is None or not mail.is_success:
        reason = f"{label} refused the probe's sender: {mail or replies.last}"
        run.settle(rcpts, Status.DEFERRED, reason, host=label, reply=mail, tls=tls)
        return
    _settle_envelope(run, at, rcpts, replies, tls)
    for rcpt, reply in replies.rcpts:
        if reply.is_success:
            reason = f"{label} accepts the recipient"
            run.settle([rcpt], Status.DELIVERED, reason, host=label, reply=reply, tls=tls)


async def _envelope(
    session: SmtpSession, caps: Capabilities, mail: str, rcpts: list[str],
    then: Verb = Verb.DATA, dsn: DsnRequest | None = None, smtputf8: bool = False,
) -> _Replies:  # fmt: skip
    """Send MAIL, RCPT for each recipient (with its `dsn` parameters) and `then` (DATA);
    collect the replies by command."""
    group = [(Verb.MAIL, mail)]
    if dsn is None:
        group += [(Verb.RCPT, f"TO:<{r}>") for r in rcpts]
    else:
        group += [(Verb.RCPT, f"TO:<{r}>{dsn.of(r).on_wire(smtputf8=smtputf8)}") for r in rcpts]
    group.append((then, ""))
    pipelining = "PIPELINING" in caps
    if pipelining:
        session.write(group)
    replies = _Replies()
    # RCPT replies come back in the order the RCPTs went (RFC 2920 3.1).
    unanswered = deque(rcpts)
    for verb, arg in group:
        if not pipelining:
            if verb is Verb.RCPT and not (replies.mail and replies.mail.is_success):
                break
            if verb is Verb.DATA and not any(r.is_success for _, r in replies.rcpts):
                break
            session.write([(verb, arg)])
        event = await session.read_reply()
        if event.verb is Verb.MAIL:
            replies.mail = event.reply
        elif event.verb is Verb.RCPT:
            replies.rcpts.append((unanswered.popleft(), event.reply))
        elif event.verb is Verb.DATA:
            replies.data = event.reply
        replies.last = event.reply
        if event.reply.code == 421:
            break
    return replies


def _settle_envelope(
    run: DomainRun, at: Target, rcpts: list[str], replies: _Replies, tls: TlsFacts
) -> None:
    """Apply the MAIL and RCPT replies: 5xx bounces, 4xx stays pending for the next host."""
    label = at.hop.label
    mail = replies.mail
    if mail is not None and not mail.is_success:
        status = Status.BOUNCED if mail.is_permanent else Status.DEFERRED
        reason = f"{label} refused the sender: {mail}"
        run.settle(rcpts, status, reason, host=label, reply=mail, tls=tls)
        run.note(at, AttemptResult.of_mail(status), tls, reason)
        return
    for rcpt, reply in replies.rcpts:
        if reply.is_permanent:
            reason = f"{label} refused the recipient: {reply}"
            run.settle([rcpt], Status.BOUNCED, reason, host=label, reply=reply, tls=tls)
            run.note(at, AttemptResult.RCPT_BOUNCED, tls, f"{rcpt}: {reply}")
        elif reply.is_transient:
            reason = f"{label} deferred the recipient: {reply}"
            run.settle([rcpt], Status.DEFERRED, reason, host=label, reply=reply, tls=tls)
            run.note(at, AttemptResult.RCPT_DEFERRED, tls, f"{rcpt}: {reply}")


def _mail_parameters(
    caps: Capabilities, size: int, body: MessageBody, smtputf8: bool, requiretls: bool
) -> str:
    params = []
    if "SIZE" in caps:
        params.append(f" SIZE={size}")
    if "8BITMIME" in caps and body.eight_bit():
        params.append(" BODY=8BITMIME")
    if smtputf8:
        params.append(" SMTPUTF8")
    if requiretls:
        # RFC 8689 4.2.1: the next hop takes on the requirement (it offered the keyword).
        params.append(" REQUIRETLS")
    return "".join(params)
