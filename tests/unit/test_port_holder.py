import ipaddress

import pytest

from relaymail.port_holder import TcpSocket, conflicts, parse_proc_net_tcp

# Lines as Linux prints them: a listener on 127.0.0.1:2525, one on *:2526, a socket
# bound but not listening on 127.0.0.1:2527, a connection from port 2528; then tcp6.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:09DD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0
   1: 00000000:09DE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0
   2: 0100007F:09DF 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1003 1 0
   3: 0100007F:09E0 0100007F:0019 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000001000000:09DD 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0
"""  # noqa: E501


def test_proc_net_tcp_lines_become_typed_sockets():
    assert parse_proc_net_tcp(TCP)[0] == TcpSocket(
        ipaddress.ip_address("127.0.0.1"), 2525, 0x0A, 1001
    )
    assert parse_proc_net_tcp(TCP6) == [TcpSocket(ipaddress.ip_address("::1"), 2525, 0x0A, 2001)]


@pytest.mark.parametrize(
    ("host", "port", "inodes"),
    [
        ("127.0.0.1", 2525, {1001}),
        ("127.0.0.2", 2525, set()),  # another address, the same port
        ("0.0.0.0", 2525, {1001}),  # a wildcard bind collides with every address
        ("127.0.0.1", 2526, {1002}),  # ... and a wildcard holder with ours
        ("127.0.0.1", 2527, {1003}),
        ("127.0.0.1", 2528, set()),  # a connection does not hold the port
        ("localhost", 2525, {1001}),
    ],
)
def test_only_listening_or_bound_sockets_on_a_colliding_address_hold_a_port(host, port, inodes):
    assert {s.inode for s in parse_proc_net_tcp(TCP) if conflicts(s, host, port)} == inodes
