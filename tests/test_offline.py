"""The suite's offline guard (tests/offline.py) refuses the network and leaves loopback alone."""

import socket

import pytest
from offline import NetworkBlocked


def test_connections_and_lookups_off_this_machine_are_refused():
    with socket.socket() as sock, pytest.raises(NetworkBlocked, match=r"connect to 203\.0\.113\.7:443"):
        sock.connect(("203.0.113.7", 443))
    with pytest.raises(NetworkBlocked, match="resolve 'telemetry.crewai.com'"):
        socket.getaddrinfo("telemetry.crewai.com", 443)


def test_loopback_still_works():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            pass
