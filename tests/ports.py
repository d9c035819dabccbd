"""Free loopback ports for tests that start servers of their own."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free now. All are held open while they are picked: a port
    released before the next is picked can be handed out again, and a Ray node given
    one port for two of its components refuses to start."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]
