"""Loopback TCP listeners for the emulated instruments (the crate's VISA socket, the serial-over-TCP lines)."""

from __future__ import annotations

import socket


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free port) and listening with ``backlog``.

    ``SO_REUSEADDR`` is set so that a restarted emulator can take its port back at once; on a bind or
    listen error the socket is closed and the ``OSError`` raised. The bound port is
    ``sock.getsockname()[1]``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
