"""The words of a DSN for a person: its text/plain part, and someone else's text made safe.

Pure; dsn.py writes the machine-readable parts and puts the message together.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, NamedTuple

from .headers import foreign_text
from .mime import crlf_lines

if TYPE_CHECKING:
    from .dsn import RecipientReport

__all__ = ["MAX_DIAGNOSTIC", "About", "clean", "human_text"]

# A diagnostic is someone else's text; keep it readable and bounded.
MAX_DIAGNOSTIC = 1000

# RFC 3463 subject.detail codes a sender meets most, in plain words.
_STATUS_WORDS = {
    "1.1": "The mailbox does not exist.",
    "1.2": "The destination domain does not exist or cannot receive mail.",
    "1.10": "The destination domain declares that it accepts no mail (null MX).",
    "2.1": "The mailbox is disabled and not accepting messages.",
    "2.2": "The mailbox is full.",
    "2.3": "The message is larger than the mailbox accepts.",
    "3.4": "The message is larger than the destination server accepts.",
    "4.1": "The destination mail server did not answer.",
    "4.2": "The connection to the destination mail server broke off.",
    "4.4": "No route to the destination could be found.",
    "4.7": "The message could not be delivered within the time allowed.",
    "7.1": "The destination refused the message by its policy.",
    "7.10": "Encryption was required but could not be set up.",
}


def clean(text: str, international: bool) -> str:
    """Someone else's text made safe for one header field or text line.

    A remote reply is decoded with replacement, so it can hold C1 controls and
    U+2028 (line breaks to str.splitlines() readers) once the DSN is 8-bit.
    """
    text = foreign_text(text)
    if not international:
        text = text.encode("ascii", errors="replace").decode("ascii")
    if len(text) > MAX_DIAGNOSTIC:
        text = text[: MAX_DIAGNOSTIC - 3] + "..."
    return text


def _explain(report: RecipientReport, international: bool) -> list[str]:
    lines = []
    reason = clean(report.reason, international) if report.reason else ""
    if report.diagnostic_code:
        answer = clean(report.diagnostic_code.split(";", 1)[1].strip(), international)
        if answer not in reason:  # else the reason already quotes it, with context
            server = report.remote_mta or "the destination mail server"
            lines.append(f"The mail server {server} answered: {answer}")
    if reason:
        lines.append(reason)
    words = _STATUS_WORDS.get(report.status.split(".", 1)[1])
    if words and not report.status.startswith("2."):
        lines.append(f"({words})")
    if not lines:
        lines.append(f"Status {report.status}.")
    return lines


def _paragraphs(
    tag: str, queue_id: str, received: str, retry_until: datetime | None, returned: str
) -> tuple[str, str]:
    """The opening and closing paragraph of a report of kind `tag` (dsn._Kind)."""
    message = f"Your message (queue id {queue_id}, received {received})"
    if tag == "bounce":
        return (
            f"{message} could not be delivered to the recipients listed below. This is"
            " a permanent failure: the mail system has given up and will not try again."
            " The reason is given for each recipient.",
            f"{returned} If you need help, forward this report to your mail administrator.",
        )
    if tag == "relayed":
        return (
            f"{message} was passed on to the recipients' mail servers listed below."
            " You asked to be told of its delivery, but those servers do not offer"
            " delivery notifications (DSN), so this is the last report you will get:"
            " it says the message left this mail system, not that it was delivered.",
            returned,
        )
    until = format_datetime(retry_until) if retry_until is not None else "its lifetime ends"
    return (
        f"{message} has not been delivered yet to the recipients listed below. This is"
        " only a warning: you do not need to send the message again. The mail system"
        f" keeps trying to deliver it until {until}; if it still cannot be delivered"
        " by then, it will be returned to you with another report.",
        returned,
    )


class About(NamedTuple):
    """What a report is about, as both its text and its delivery-status part tell it.

    `mta` is the reporting MTA (IDNA A-labels); `international`: the report is
    8-bit (SMTPUTF8 mail, RFC 6532).
    """

    mta: str
    queue_id: str
    arrival_date: datetime
    recipients: Sequence[RecipientReport]
    retry_until: datetime | None  # a delay warning's
    international: bool


def human_text(tag: str, about: About, returned: str) -> bytes:
    """The text/plain part of a report of kind `tag` (dsn.NoticeKind); `returned` says
    what of the message is attached."""
    mta, queue_id, arrival_date, recipients, retry_until, international = about
    received = format_datetime(arrival_date)
    intro, closing = _paragraphs(tag, queue_id, received, retry_until, returned)
    lines: list[str] = []
    for paragraph in (f"This is the mail system at {mta}.", intro):
        lines += textwrap.wrap(paragraph, width=72)
        lines.append("")
    for report in recipients:
        line = f"<{clean(report.final_recipient, international)}>"
        if report.original_recipient is not None:
            line += f" (you wrote {clean(report.original_recipient.display, international)})"
        lines.append(line)
        for explanation in _explain(report, international):
            lines += textwrap.wrap(
                explanation,
                width=76,
                initial_indent="    ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        lines.append("")
    lines += textwrap.wrap(closing, width=72)
    return crlf_lines(lines)
