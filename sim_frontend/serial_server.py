"""Serve a line handler (``Callable[[str], str]``) as a serial instrument over a pty and over TCP.

Two transports, the same framing:

- :class:`PtyLineServer` opens a pseudo-terminal pair (``os.openpty``, raw mode, no echo) and answers
  on the master side; clients open the slave device path (``/dev/pts/N``) with pyserial or as a VISA
  ``ASRL/dev/pts/N::INSTR`` resource.
- :class:`TcpLineServer` listens on ``127.0.0.1:<port>`` (port 0 = any free port); clients use the URL
  ``socket://127.0.0.1:<port>`` with ``serial.serial_for_url`` (or VISA ``ASRLsocket://...::INSTR``).
  One owner per line: the first client owns it until it closes (or vanishes: TCP keep-alive); a
  second client waits up to ``GRACE_S`` for the owner to leave, else it gets the line
  ``LINE OWNED BY ANOTHER CLIENT`` (``detector.hwstatus.LINE_OWNED_REPLY``) and is closed. A pty cannot
  tell its clients apart; there the client side's lock (``hv_control.linelock``) keeps one owner.

Framing: requests end in CR LF (a lone CR or LF also ends a line, empty lines are ignored); each
non-empty line gets one reply followed by CR LF. Bytes that are not UTF-8 are replaced (U+FFFD) before
the handler sees them. A line longer than ``max_line`` bytes is discarded while it arrives (the input
buffer is bounded) and answered with the protocol's overlong reply (``#CMD:ERR`` for the HV mainframe,
``ERR LINE TOO LONG`` for the table).

Faults (docs/protocols.md section 5) are read from a thread-safe :class:`FaultState`:
``delay`` (every reply waits ``seconds``), ``no_reply`` (the next ``count`` requests get no reply),
``noise`` (random bytes are written before the next ``count`` replies) and ``drop``: over TCP the
connection is closed at the next request (one shot; the client may reconnect); a pty cannot be closed
without changing its device path, so over a pty ``drop`` makes the server read and discard every
request, answering nothing, until the fault is cleared.
"""

from __future__ import annotations

import logging
import os
import random
import re
import select
import socket
import threading
import time
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from detector.hwstatus import LINE_OWNED_REPLY

from .faults import CountedFaults
from .listen import listen_socket

log = logging.getLogger(__name__)

LineHandler = Callable[[str], str]
MAX_LINE = 1024  #: longest accepted request line, bytes
EOL = b"\r\n"
_WRITE_TIMEOUT_S = 1.0  #: a reply nobody reads within this time is dropped (pty)
GRACE_S = 0.5  #: a second TCP client waits this long (s) for the owner to leave before it is refused
_CLOSING_S = 2.0  #: a refused client is closed after this long (s) if it does not close first
KEEPALIVE_IDLE_S = 10  #: s of silence before the first keep-alive probe of an owner connection
KEEPALIVE_INTERVAL_S = 5  #: s between keep-alive probes
_LINE_END = re.compile(rb"[\r\n]")


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplyAction:
    """What the server does with one request: ``drop`` the connection, send or not, after ``delay_s`` s,
    with ``noise`` bytes before the reply."""

    drop: bool = False
    reply: bool = True
    delay_s: float = 0.0
    noise: bytes = b""


class FaultState(CountedFaults):
    """Injected faults of one serial endpoint (thread-safe). Kinds: ``delay`` (``seconds``),
    ``no_reply``, ``noise`` and ``drop`` (``count``). Over TCP a drop closes the connection once per
    count; a pty cannot be closed without changing its device, so there a pending drop means "answer
    nothing" until it is cleared."""

    ENDPOINT = "serial"
    COUNTED = ("no_reply", "drop", "noise")

    def __init__(self, seed: int | None = 1234) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def next_action(self, *, consume_drop: bool) -> ReplyAction:
        """Decide the fate of the next request and consume one count of the counted faults."""
        with self._lock:
            if self._counts["drop"] > 0:
                if consume_drop:
                    self._take_locked("drop")
                else:
                    self._fired["drop"] += 1
                return ReplyAction(drop=True, reply=False)
            if self._take_locked("no_reply"):
                return ReplyAction(reply=False, delay_s=self._delay_locked())
            noise = self._rng.randbytes(self._rng.randint(1, 16)) if self._take_locked("noise") else b""
            return ReplyAction(delay_s=self._delay_locked(), noise=noise)


# --------------------------------------------------------------------------------------------------
class LineFramer:
    """Split a byte stream into request lines at CR and/or LF, with a bounded buffer.

    :meth:`feed` returns the complete non-empty lines (bytes, without terminator); ``None`` stands for
    a line longer than ``max_line`` that was discarded.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        self._buf += data
        while True:
            m = _LINE_END.search(self._buf)
            if m is None:
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    self._discarding = True
                return out
            line = bytes(self._buf[: m.start()])
            del self._buf[: m.end()]
            if self._discarding:
                self._discarding = False
                out.append(None)
            elif len(line) > self.max_line:
                out.append(None)
            elif line:
                out.append(line)


class _LineServer:
    """Common part of the pty and TCP servers: framing, faults, the handler call, the thread."""

    kind = "line"

    def __init__(
        self,
        handler: LineHandler,
        *,
        faults: FaultState | None = None,
        max_line: int = MAX_LINE,
        overlong_reply: str | None = None,
        name: str = "",
    ) -> None:
        self.handler = handler
        self.faults = faults if faults is not None else FaultState()
        self.max_line = max_line
        owner = getattr(handler, "__self__", None)
        self.overlong_reply = overlong_reply or getattr(owner, "OVERLONG_REPLY", None) or "ERR LINE TOO LONG"
        self.name = name or (type(owner).__name__ if owner is not None else getattr(handler, "__name__", "handler"))
        self.stats = {
            "requests": 0,
            "replies": 0,
            "overlong": 0,
            "no_reply": 0,
            "dropped": 0,
            "noise": 0,
            "write_failures": 0,
            "refused": 0,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    def _reply_for(self, line: bytes | None) -> bytes | None:
        """Reply bytes (with CR LF) for one request, or None if the handler failed."""
        self.stats["requests"] += 1
        if line is None:
            self.stats["overlong"] += 1
            text = self.overlong_reply
        else:
            try:
                text = self.handler(line.decode("utf-8", errors="replace"))
            except Exception:  # a broken handler must not kill the server
                log.exception("%s: handler failed on %r", self.name, line[:80])
                return None
        text = str(text).replace("\r", " ").replace("\n", " ")
        return text.encode("utf-8", errors="replace") + EOL

    def _serve_line(self, line: bytes | None, send: Callable[[bytes], bool]) -> bool:
        """Handle one request line; returns False when the connection is to be dropped."""
        action = self.faults.next_action(consume_drop=self.kind == "tcp")
        if action.drop:
            self.stats["dropped"] += 1
            return False
        reply = self._reply_for(line)
        if action.delay_s > 0 and self._stop.wait(action.delay_s):
            return True
        if not action.reply:
            self.stats["no_reply"] += 1
            return True
        if reply is None:
            return True
        if action.noise:
            self.stats["noise"] += 1
        if send(action.noise + reply):
            self.stats["replies"] += 1
        else:
            self.stats["write_failures"] += 1
        return True

    def _start_thread(self, target: Callable[[], None]) -> None:
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._thread = threading.Thread(target=target, name=f"{self.kind}-{self.name}", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> _LineServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> _LineServer:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
class PtyLineServer(_LineServer):
    """Serve ``handler`` on a pseudo-terminal; :attr:`device` is the slave path clients open."""

    kind = "pty"

    def __init__(self, handler: LineHandler, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self._master = self._slave = -1
        self.device = ""

    def start(self) -> PtyLineServer:
        """Open the pty (raw mode) and start the serving thread; returns self."""
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation in either direction
        os.set_blocking(self._master, False)
        self.device = os.ttyname(self._slave)
        self._start_thread(self._run)
        return self

    def stop(self) -> None:
        """Stop the thread and close both ends of the pty."""
        self._stop_thread()
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def _send(self, data: bytes) -> bool:
        deadline = time.monotonic() + _WRITE_TIMEOUT_S
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
                view = view[n:]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False  # nobody reads the line: the bytes are lost, as on a real wire
                select.select([], [self._master], [], min(left, 0.05))
            except OSError:
                return False
        return True

    def _run(self) -> None:
        framer = LineFramer(self.max_line)
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master, self._wake_r], [], [], 1.0)
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            if self._master not in ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError:  # EIO cannot happen while we hold the slave; be safe anyway
                self._stop.wait(0.05)
                continue
            for line in framer.feed(data):
                self._serve_line(line, self._send)


# --------------------------------------------------------------------------------------------------
class TcpLineServer(_LineServer):
    """Serve ``handler`` on a TCP socket; :attr:`url` is ``socket://host:port`` for pyserial."""

    kind = "tcp"

    def __init__(self, handler: LineHandler, *, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self.connections = 0  #: connections accepted so far

    @property
    def url(self) -> str:
        """The pyserial URL of this server, ``socket://host:port``."""
        return f"socket://{self.host}:{self.port}"

    def start(self) -> TcpLineServer:
        """Bind, listen and start the serving thread; returns self (``port`` is the bound port)."""
        if self._thread is not None:
            return self
        listener = listen_socket(self.host, self.port, backlog=4)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._start_thread(self._run)
        return self

    def stop(self) -> None:
        """Stop the thread, close the client connection and the listening socket."""
        self._stop_thread()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _run(self) -> None:
        assert self._listener is not None
        listener = self._listener
        conn: socket.socket | None = None  # the owner of the line
        framer = LineFramer(self.max_line)
        waiting: list[tuple[socket.socket, float]] = []  # later clients, until the owner leaves or GRACE_S
        closing: list[tuple[socket.socket, float]] = []  # refused clients: FIN sent, draining until they close

        def close() -> None:
            nonlocal conn
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
                conn = None

        def send(data: bytes) -> bool:
            if conn is None:
                return False
            try:
                conn.sendall(data)
                return True
            except OSError:
                close()
                return False

        def refuse(sock: socket.socket) -> None:
            self.stats["refused"] += 1
            log.warning("%s: refused a second client; the line is owned by another one", self.name)
            try:
                sock.sendall(LINE_OWNED_REPLY.encode() + EOL)
                sock.shutdown(socket.SHUT_WR)  # FIN after the refusal; no RST while the client still reads
                closing.append((sock, time.monotonic() + _CLOSING_S))
            except OSError:
                sock.close()

        def own(sock: socket.socket) -> None:
            nonlocal conn, framer
            conn, framer = sock, LineFramer(self.max_line)
            _keepalive(sock)  # a dead owner (no FIN) is noticed and releases the line
            self.connections += 1

        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for sock, deadline in list(waiting):
                    if conn is None:
                        waiting.remove((sock, deadline))
                        own(sock)
                    elif now >= deadline:
                        waiting.remove((sock, deadline))
                        refuse(sock)
                for sock, deadline in list(closing):
                    if now >= deadline:
                        closing.remove((sock, deadline))
                        sock.close()
                socks: list[Any] = [
                    listener,
                    self._wake_r,
                    *([conn] if conn is not None else []),
                    *(c for c, _ in closing),
                ]
                wait_s = min([1.0] + [max(0.0, d - now) for _, d in waiting + closing])
                try:
                    ready, _, _ = select.select(socks, [], [], wait_s)
                except (OSError, ValueError):
                    return
                if self._wake_r in ready:
                    return
                for sock, deadline in list(closing):
                    if sock in ready:
                        try:
                            gone = not sock.recv(4096)
                        except OSError:
                            gone = True
                        if gone:
                            closing.remove((sock, deadline))
                            sock.close()
                if conn is not None and conn in ready:  # the owner first: its FIN frees the line
                    try:
                        data = conn.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        close()
                    else:
                        for line in framer.feed(data):
                            if not self._serve_line(line, send):
                                close()
                                break
                            if conn is None:
                                break
                if listener in ready:
                    try:
                        new, _ = listener.accept()
                    except OSError:
                        continue
                    new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    new.settimeout(_WRITE_TIMEOUT_S)
                    if conn is None and not waiting:
                        own(new)
                    else:  # one owner per line: the newcomer waits a moment, then is refused
                        waiting.append((new, time.monotonic() + GRACE_S))
        finally:
            close()
            for sock, _ in waiting + closing:
                sock.close()


def _keepalive(sock: socket.socket) -> None:
    """TCP keep-alive probes on an owner connection, so that a peer that vanished without closing is
    dropped after about ``KEEPALIVE_IDLE_S + 3 * KEEPALIVE_INTERVAL_S`` s."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except (OSError, AttributeError):  # a platform without the TCP_KEEP* options keeps the default
        pass


# --------------------------------------------------------------------------------------------------
class LineServers:
    """A group of started servers (see :func:`serve_line_handlers`)."""

    def __init__(self) -> None:
        self.servers: dict[str, list[_LineServer]] = {}
        self.faults: dict[str, FaultState] = {}

    def addresses(self) -> dict[str, dict[str, str]]:
        """``{endpoint: {"pty": "/dev/pts/N", "url": "socket://127.0.0.1:port"}}`` (what was started)."""
        out: dict[str, dict[str, str]] = {}
        for name, servers in self.servers.items():
            for s in servers:
                if isinstance(s, PtyLineServer):
                    out.setdefault(name, {})["pty"] = s.device
                elif isinstance(s, TcpLineServer):
                    out.setdefault(name, {})["url"] = s.url
        return out

    def stop(self) -> None:
        """Stop every server."""
        for servers in self.servers.values():
            for s in servers:
                s.stop()

    def __enter__(self) -> LineServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_line_handlers(
    handlers: Mapping[str, LineHandler],
    *,
    pty: bool = True,
    tcp: bool = True,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    faults: Mapping[str, FaultState] | None = None,
) -> LineServers:
    """Start a pty and/or TCP server for every named handler (e.g. ``{"hv": mainframe.handle,
    "table": table.handle}``). The pty and TCP server of one endpoint share one :class:`FaultState`
    (``result.faults[name]``). ``ports[name]`` is the TCP port (default 0 = any free port)."""
    group = LineServers()
    try:
        for name, handler in handlers.items():
            fs = (faults or {}).get(name) or FaultState()
            group.faults[name] = fs
            started: list[_LineServer] = []
            group.servers[name] = started
            if pty:
                started.append(PtyLineServer(handler, faults=fs, name=name).start())
            if tcp:
                started.append(
                    TcpLineServer(handler, host=host, port=(ports or {}).get(name, 0), faults=fs, name=name).start()
                )
    except BaseException:
        group.stop()
        raise
    return group
