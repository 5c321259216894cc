"""Inbound SMTP: relay control, authentication and limits on top of aiosmtpd.

Theory of operation
-------------------
The work is split the way aiosmtpd intends:

* ``InboundHandler`` (handler.py) is the policy. Its hooks are named after the verb
  (``handle_MAIL``, ``handle_RCPT``, ``handle_DATA``, ``auth_PLAIN``) and return
  the reply: who may relay where, who may authenticate, how many recipients,
  the trace header, loop detection, and the hand-off to the spool.
* ``InboundSMTP`` (connection.py) is the wire: a subclass of aiosmtpd's
  protocol class, through ``CommandLoop`` (protocol.py, the one module that
  touches aiosmtpd's internals; its docstring lists them). It keeps aiosmtpd's
  STARTTLS and AUTH exchanges, and replaces the parts an MTA cannot live with:

  - MAIL/RCPT parameters: aiosmtpd answers 555 to every RCPT parameter and to
    RET/ENVID, and upper-cases values (which corrupts ORCPT xtext). Here the
    RFC 3461 parameters and AUTH= are accepted and checked, values kept as
    sent; DSN is advertised, and RET, ENVID and each recipient's NOTIFY and
    ORCPT go typed into the envelope (relaymail.dsn_request.DsnRequest).
  - DATA is read in large pieces (``readuntil(b".\\r\\n")`` over a 64 KiB window)
    instead of line by line, and never held whole: intake.py unstuffs, makes
    canonical and folds it piece by piece into a MessageData (memory while
    small, an unnamed temporary file in the queue directory after).
  - Command lines must end in CRLF and hold no other CR (aiosmtpd takes a bare
    LF as a line end); the end of data is only CRLF "." CRLF (aiosmtpd's
    smuggling fix, kept). Bare LF inside message data is normalised to CRLF.
  - Every 2xx/4xx/5xx reply carries an RFC 3463 code, so ENHANCEDSTATUSCODES
    can be advertised honestly; PIPELINING is advertised (aiosmtpd already
    processes pipelined input in order).
  - A connection over ``max_connections`` gets 421 instead of the greeting;
    a second STARTTLS gets 503 instead of a TLS layer inside TLS.

The pure parts are apart: checks.py (relay, trusted clients, parameters,
reply codes), grammar.py (paths, ESMTP parameters), intake.py (the data:
canonical lines, folded long lines, the header fields for the loop count and
the fix-up), cleanup.py (trace headers, the fix-up fields);
listener.py starts and stops listeners. Their settings are
relaymail.listener_settings, owned by the configuration.

Nothing here delivers mail. ``handle_DATA`` answers 250 only after the spool
callback has returned, i.e. after the queue says the message is durable.
"""

from .handler import Spool, Users
from .listener import ListenerHandle, server_tls_context, start_listener

__all__ = ["ListenerHandle", "Spool", "Users", "server_tls_context", "start_listener"]
