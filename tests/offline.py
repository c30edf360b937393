"""Proof that the suite runs offline: any connection or name lookup off this machine fails the test.

Frameworks phone home (telemetry, update checks, model hubs) and a test that passes only because
the network happened to be there is a test that fails in CI. ``forbid_network()`` wraps the socket
layer of this process: connecting to a non-loopback address, or resolving a name other than a
loopback one, raises ``NetworkBlocked`` naming the destination. Unix sockets (the embedded
PostgreSQL) and loopback servers (``lab serve``, scripted providers) are untouched. Subprocesses are
not covered; they get the telemetry switches (``lab.toolchain.quiet_frameworks``) and loopback URLs.
"""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class NetworkBlocked(OSError):
    """A test tried to reach the network."""


def _is_loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%", 1)[0]
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forbid_network() -> None:
    if getattr(socket.socket.connect, "_offline_guard", False):
        return
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def check(sock, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise NetworkBlocked(f"a test tried to connect to {address[0]}:{address[1]}; the suite must run offline")

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise NetworkBlocked(f"a test tried to resolve {host!r}; the suite must run offline")
        return real_getaddrinfo(host, *args, **kwargs)

    connect._offline_guard = True
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
