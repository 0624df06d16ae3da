"""Network (SECURITY.md section 7): live loopback servers started here must see nothing.

The servers listen on the host's loopback; the sandbox has its own empty network namespace,
so TCP and UDP to them, DNS, and the host's abstract Unix sockets are all unreachable.
"""

from __future__ import annotations

import os
import socket

import pytest
from sandbox_checks import TEST_CONFIG, check_aftermath, run_timed

from spo_agents.sandbox import ExecStatus


class LiveServer:
    """TCP, UDP and abstract-Unix listeners on the host. The kernel completes connections into
    the backlog and queues datagrams, so `contacts()` sees every contact without a thread."""

    def __init__(self):
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix_name = f"\0spo-sandbox-test-{os.getpid()}"
        self.unix.bind(self.unix_name)
        self.unix.listen()
        for sock in (self.tcp, self.udp, self.unix):
            sock.setblocking(False)

    @property
    def tcp_port(self) -> int:
        return self.tcp.getsockname()[1]

    @property
    def udp_port(self) -> int:
        return self.udp.getsockname()[1]

    def contacts(self) -> list[str]:
        seen = []
        for name, receive in (("tcp", self.tcp.accept), ("unix", self.unix.accept), ("udp", lambda: self.udp.recv(99))):
            try:
                received = receive()
            except BlockingIOError:
                continue
            seen.append(name)
            if isinstance(received, tuple):
                received[0].close()
        return seen

    def close(self) -> None:
        for sock in (self.tcp, self.udp, self.unix):
            sock.close()


@pytest.fixture(scope="module")
def server():
    live = LiveServer()
    yield live
    live.close()


def test_the_live_server_sees_host_contacts(server):
    with socket.create_connection(("127.0.0.1", server.tcp_port), timeout=2):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"ping", ("127.0.0.1", server.udp_port))
    with socket.socket(socket.AF_UNIX) as unix:
        unix.connect(server.unix_name)
        assert sorted(server.contacts()) == ["tcp", "udp", "unix"]
    assert server.contacts() == []


@pytest.mark.parametrize("code, expected", [
    ("import socket; socket.create_connection(('127.0.0.1', PORT), timeout=0.5)", "Network is unreachable"),
    ("import socket; socket.create_connection(('localhost', PORT), timeout=0.5)", "Error"),
    ("import socket; s = socket.socket(socket.AF_INET6); s.connect(('::1', PORT))", "Error"),
    ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(20):\n"
     "    s.sendto(b'ping', ('127.0.0.1', UDP))", "Network is unreachable"),
    ("import socket; socket.getaddrinfo('example.com', 80)", "gaierror"),
    ("import urllib.request; urllib.request.urlopen('http://127.0.0.1:PORT/', timeout=0.5)", "URLError"),
    ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('UNIX')", "ConnectionRefusedError"),
    ("import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)", "PermissionError"),
    ("import socket; print(sorted(name for _, name in socket.if_nameindex()))", "['lo']"),
], ids=["tcp", "tcp-by-name", "tcp-ipv6", "udp", "dns", "http", "abstract-unix", "raw-socket", "interfaces"])
def test_no_network(pool, server, code, expected):
    code = code.replace("UDP", str(server.udp_port)).replace("PORT", str(server.tcp_port))
    code = code.replace("'UNIX'", repr(server.unix_name))
    result, elapsed = run_timed(pool, code)
    assert expected in result.to_observation(10**5)
    assert result.status in (ExecStatus.ERROR, ExecStatus.OK)
    check_aftermath(pool, result, elapsed, TEST_CONFIG.timeout_s)
    assert server.contacts() == []
