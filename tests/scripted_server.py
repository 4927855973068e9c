"""A scripted TCP server for byte-exact protocol tests over a real socket (pymeasure's
``expected_protocol``, served over TCP so that pyvisa + pyvisa-py talk to it for real).

For every accepted connection the server holds a script of (expected request bytes -> reply) steps: it
reads exactly the expected bytes and compares them, then sends the reply (bytes), closes the connection
(``DROP``) or stays silent (``SILENT``). :meth:`ScriptedCrate.check` fails on any mismatch, on an
unexpected extra request, or if a script was not played to the end.
"""

from __future__ import annotations

import socket
import threading

DROP = object()
SILENT = object()


def block(payload: bytes) -> bytes:
    n = str(len(payload)).encode()
    return b"#" + str(len(n)).encode() + n + payload + b"\n"


class ScriptedCrate:
    """Serves one script per accepted connection; records mismatches instead of raising in the thread."""

    def __init__(self, *scripts: list[tuple[bytes, object]]) -> None:
        self.scripts = list(scripts)
        self.errors: list[str] = []
        self.done: list[int] = []
        self.eof_seen = threading.Event()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.resource = f"TCPIP::127.0.0.1::{self.port}::SOCKET"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv_exact(self, conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return buf

    def _run(self) -> None:
        for k, script in enumerate(self.scripts):
            conn, _ = self.srv.accept()
            conn.settimeout(10)
            closed = False
            try:
                for i, (expect, reply) in enumerate(script):
                    got = self._recv_exact(conn, len(expect))
                    if got != expect:
                        self.errors.append(f"connection {k} step {i}: expected {expect!r}, got {got!r}")
                        return
                    if reply is DROP:
                        conn.close()
                        closed = True
                        break
                    if reply is SILENT:
                        continue
                    conn.sendall(reply)  # type: ignore[arg-type]
                self.done.append(k)
                if not closed:
                    # wait for the client to go away (or to send something unexpected)
                    try:
                        extra = conn.recv(1 << 16)
                    except ConnectionResetError:  # the client closed with unread bytes: fine
                        extra = b""
                    if extra:
                        self.errors.append(f"connection {k}: unexpected extra request {extra!r}")
                    else:
                        self.eof_seen.set()
            except OSError as exc:
                self.errors.append(f"connection {k}: {exc}")
            finally:
                if not closed:
                    conn.close()

    def check(self) -> None:
        self.thread.join(timeout=60)
        assert not self.errors, self.errors
        assert self.done == list(range(len(self.scripts))), f"scripts finished: {self.done}"

    def close(self) -> None:
        self.srv.close()
