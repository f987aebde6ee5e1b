"""Loopback ports for the tests and benchmarks: the one ``free_port``.

Ports are picked at random below the usual Linux ephemeral range
(32768-60999): a server stopped for an outage test keeps its port, and no
outgoing connection grabs it meanwhile as its local port.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection

__all__ = ["HOST", "free_port", "port_open"]

HOST = "127.0.0.1"
_PORT_RANGE = (20000, 32000)
_rng = random.Random()  # own instance: unaffected by tests seeding `random`


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(exclude: Collection[int] = ()) -> int:
    """A TCP port of 127.0.0.1 free right now, not in ``exclude`` (ports chosen but not bound yet)."""
    for _ in range(200):
        port = _rng.randrange(*_PORT_RANGE)
        if port not in exclude and _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the range is full: any port
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0
