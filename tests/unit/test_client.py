import pytest

from relaymail.errors import (
    CleartextAuthError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsafeCommandError,
)
from relaymail.smtp.client import Capabilities, ClientConnection, State, Verb
from relaymail.smtp.reply import Reply


def greeted() -> ClientConnection:
    conn = ClientConnection()
    conn.receive_data(b"220 mx.example ESMTP\r\n")
    assert conn.next_event().verb is Verb.GREETING
    return conn


def ready() -> ClientConnection:
    conn = greeted()
    conn.send(Verb.EHLO, "client.example")
    conn.receive_data(b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n")
    event = conn.next_event()
    assert event.verb is Verb.EHLO
    return conn


def test_nothing_may_be_sent_before_the_greeting():
    with pytest.raises(LocalProtocolError):
        ClientConnection().send(Verb.EHLO, "x")


def test_pipelined_replies_pair_with_their_commands_in_order():
    conn = ready()
    wire = conn.send(Verb.MAIL, "FROM:<a@x>") + conn.send(Verb.RCPT, "TO:<b@y>")
    wire += conn.send(Verb.RCPT, "TO:<c@y>") + conn.send(Verb.DATA)
    assert wire == b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n"
    conn.receive_data(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    events = [conn.next_event() for _ in range(4)]
    assert [e.verb for e in events] == [Verb.MAIL, Verb.RCPT, Verb.RCPT, Verb.DATA]
    assert [e.reply.code for e in events] == [250, 250, 550, 354]
    assert conn.state is State.DATA
    assert conn.send_message(at_line_start=True) == b".\r\n"
    conn.receive_data(b"250 queued\r\n")
    assert conn.next_event().verb is Verb.MESSAGE
    assert conn.state is State.READY


def test_out_of_order_commands_are_refused_locally():
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.RCPT, "TO:<b@y>")
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.DATA)


def test_command_arguments_cannot_smuggle_line_breaks():
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.MAIL, "FROM:<a@x>\r\nRCPT TO:<evil@x>")


def test_failed_mail_ends_the_transaction():
    conn = ready()
    conn.send(Verb.MAIL, "FROM:<a@x>")
    conn.send(Verb.RCPT, "TO:<b@y>")
    conn.send(Verb.DATA)
    conn.receive_data(b"550 no\r\n503 no\r\n503 no\r\n")
    for _ in range(3):
        conn.next_event()
    assert conn.state is State.READY
    conn.send(Verb.MAIL, "FROM:<a@x>")  # a new transaction may start


def test_starttls_refusal_keeps_the_session_usable():
    conn = ready()
    conn.send(Verb.STARTTLS)
    conn.receive_data(b"454 4.7.0 TLS not available\r\n")
    assert conn.next_event().reply.code == 454
    assert conn.state is State.READY
    conn.send(Verb.MAIL, "FROM:<a@x>")


def test_nothing_may_be_sent_after_starttls_until_tls_is_up():
    conn = ready()
    conn.send(Verb.STARTTLS)
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.MAIL, "FROM:<a@x>")


def test_bytes_behind_the_220_to_starttls_are_reported_not_parsed():
    conn = ready()
    conn.send(Verb.STARTTLS)
    conn.receive_data(b"220 go ahead\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n")
    assert conn.next_event().reply.code == 220
    assert conn.next_event() is None  # the injected "reply" never surfaces
    assert conn.take_trailing_data() == b"250-PIPELINING\r\n250 AUTH PLAIN\r\n"


def test_late_injected_bytes_fail_the_tls_switch():
    conn = ready()
    conn.send(Verb.STARTTLS)
    conn.receive_data(b"220 go ahead\r\n")
    conn.next_event()
    assert conn.take_trailing_data() == b""
    conn.receive_data(b"250 injected\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.tls_established()


def test_after_tls_the_session_needs_ehlo_again():
    conn = ready()
    conn.send(Verb.STARTTLS)
    conn.receive_data(b"220 go ahead\r\n")
    conn.next_event()
    assert conn.take_trailing_data() == b""
    conn.tls_established()
    assert conn.state is State.GREETED
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.MAIL, "FROM:<a@x>")
    conn.send(Verb.EHLO, "client.example")


def test_421_closes_the_session():
    conn = ready()
    conn.send(Verb.MAIL, "FROM:<a@x>")
    conn.receive_data(b"421 4.3.2 shutting down\r\n")
    conn.next_event()
    assert conn.state is State.CLOSED


def test_unsolicited_data_is_visible():
    conn = ready()
    assert not conn.has_unread_data
    conn.receive_data(b"421 idle timeout\r\n")
    assert conn.has_unread_data


def test_capabilities_from_ehlo():
    conn = greeted()
    conn.send(Verb.EHLO, "c")
    conn.receive_data(b"250-mx\r\n250-size 52428800\r\n250-8BITMIME\r\n250 STARTTLS\r\n")
    caps = Capabilities.from_ehlo(conn.next_event().reply)
    assert "STARTTLS" in caps and "8BITMIME" in caps and "PIPELINING" not in caps
    assert caps.size_limit == 52428800


def test_size_zero_means_no_limit():
    assert Capabilities.from_ehlo(Reply(250, ("mx", "SIZE 0"))).size_limit is None
    assert Capabilities.from_ehlo(Reply(250, ("mx", "SIZE junk"))).size_limit is None


@pytest.mark.parametrize(
    "line",
    ["SIZE ²", "SIZE -1", "SIZE abc", "SIZE ١٠", "SIZE 1 2", "SIZE " + "9" * 4000, "SIZE \ufffd1"],
)
def test_a_size_that_breaks_its_grammar_is_absent(line):
    caps = Capabilities.from_ehlo(Reply(250, ("mx", line, "PIPELINING")))
    assert "SIZE" not in caps and caps.size_limit is None
    assert "PIPELINING" in caps


@pytest.mark.parametrize("line", ["AUTH \x01 PLAIN", "ŞIZE 10", "-X", "", "AUTH ☃", "8BIT\tMIME"])
def test_a_line_that_is_no_ehlo_keyword_is_ignored(line):
    assert Capabilities.from_ehlo(Reply(250, ("mx", line))).keywords == {}


def test_capability_lines_are_read_by_their_grammar():
    caps = Capabilities.from_ehlo(
        Reply(250, ("mx", " size  99999999999999999999 ", "auth  PLAIN   LOGIN", "X-1"))
    )
    assert caps.keywords == {"SIZE": "99999999999999999999", "AUTH": "PLAIN LOGIN", "X-1": ""}
    assert caps.size_limit == 99999999999999999999


def test_a_transaction_left_open_is_remembered_until_rset():
    conn = ready()
    conn.send(Verb.MAIL, "FROM:<a@x>")
    conn.send(Verb.RCPT, "TO:<b@y>")
    conn.send(Verb.DATA)
    conn.receive_data(b"250 ok\r\n550 no\r\n554 no valid recipients\r\n")
    for _ in range(3):
        conn.next_event()
    assert conn.in_transaction  # the server still holds MAIL FROM
    conn.send(Verb.RSET)
    conn.receive_data(b"250 reset\r\n")
    conn.next_event()
    assert not conn.in_transaction


@pytest.mark.parametrize(
    "argument", ["FROM:<a@b>\r\nRSET", "FROM:<a@b>\nRSET", "FROM:<a@b>\r", "FROM:<a\0@b>",
                 "FROM:<\udcff@b>"],
)  # fmt: skip
def test_a_command_line_with_cr_lf_nul_or_a_surrogate_is_refused_and_changes_nothing(argument):
    conn = ready()
    with pytest.raises(UnsafeCommandError):
        conn.send(Verb.MAIL, argument)
    assert conn.send(Verb.MAIL, "FROM:<a@b>") == b"MAIL FROM:<a@b>\r\n"  # still ready


def test_auth_is_refused_in_clear_even_when_offered():
    conn = hello(greeted())
    with pytest.raises(CleartextAuthError):
        conn.send(Verb.AUTH, "PLAIN AGEAYg==")
    assert conn.state is State.READY


def hello(conn: ClientConnection, capabilities: bytes = b"AUTH PLAIN LOGIN") -> ClientConnection:
    conn.send(Verb.EHLO, "client.example")
    conn.receive_data(b"250-mx.example\r\n250 " + capabilities + b"\r\n")
    assert Capabilities.from_ehlo(conn.next_event().reply).auth_mechanisms == {"PLAIN", "LOGIN"}
    return conn


def implicit_tls_ready() -> ClientConnection:
    conn = ClientConnection()
    conn.implicit_tls_established()
    conn.receive_data(b"220 mx.example ESMTP\r\n")
    conn.next_event()
    return hello(conn)


def test_auth_login_dialogue_under_implicit_tls():
    conn = implicit_tls_ready()
    assert conn.send(Verb.AUTH, "LOGIN") == b"AUTH LOGIN\r\n"
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.MAIL, "FROM:<a@x>")  # nothing may follow AUTH before its reply
    conn.receive_data(b"334 VXNlcm5hbWU6\r\n")
    assert conn.next_event().reply.code == 334
    assert conn.state is State.AUTH
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.QUIT)  # the server would read it as the user name
    assert conn.send(Verb.AUTH_RESPONSE, "dXNlcg==") == b"dXNlcg==\r\n"
    conn.receive_data(b"334 UGFzc3dvcmQ6\r\n")
    conn.next_event()
    conn.send(Verb.AUTH_RESPONSE, "cHc=")
    conn.receive_data(b"235 2.7.0 ok\r\n")
    assert conn.next_event().reply.code == 235
    assert (conn.state, conn.authenticated) == (State.READY, True)
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.AUTH, "PLAIN AGEAYg==")  # RFC 4954 4: one successful AUTH per session
    conn.send(Verb.MAIL, "FROM:<a@x>")


def test_refused_auth_returns_to_ready():
    conn = implicit_tls_ready()
    conn.send(Verb.AUTH, "PLAIN AGEAYg==")
    conn.receive_data(b"535 5.7.8 bad\r\n")
    assert conn.next_event().reply.code == 535
    assert (conn.state, conn.authenticated) == (State.READY, False)
    with pytest.raises(LocalProtocolError):
        conn.send(Verb.AUTH_RESPONSE, "x")


def test_auth_is_allowed_after_starttls():
    conn = ready()
    conn.send(Verb.STARTTLS)
    conn.receive_data(b"220 go\r\n")
    conn.next_event()
    conn.tls_established()
    assert hello(conn).send(Verb.AUTH, "PLAIN AGEAYg==") == b"AUTH PLAIN AGEAYg==\r\n"


def test_cleartext_before_implicit_tls_is_the_servers_fault():
    conn = ClientConnection()
    conn.receive_data(b"220 spoken in clear\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.implicit_tls_established()
    assert conn.tls is False


@pytest.mark.parametrize(
    ("replies", "verbs_before"),
    [
        # A second 250 to the last dot, read as MAIL's: every reply after it shifts by one.
        (b"250 stale\r\n250 ok\r\n250 ok\r\n354 go\r\n", 2),
        (b"354 go\r\n", 0),  # a 354 to MAIL
        (b"250 ok\r\n334 what\r\n", 1),  # a 334 outside AUTH
    ],
)
def test_a_reply_no_server_gives_that_command_is_a_protocol_error(replies, verbs_before):
    conn = ready()
    conn.send(Verb.MAIL, "FROM:<a@x>")
    conn.send(Verb.RCPT, "TO:<b@y>")
    conn.send(Verb.DATA)
    conn.receive_data(replies)
    for _ in range(verbs_before):
        conn.next_event()
    with pytest.raises(RemoteProtocolError, match="replies out of step"):
        conn.next_event()
