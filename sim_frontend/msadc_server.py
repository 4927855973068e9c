"""The emulated MSADC crate's TCP server: serves an :class:`~sim_frontend.emu_msadc.MSADCCrate` on a raw
socket (VISA ``TCPIP::127.0.0.1::<port>::SOCKET``), a listening thread plus one thread per connection (at most
``max_clients`` at a time; a client that lost its connection simply reconnects). The byte stream is cut into
commands by :class:`sim_frontend.scpi.StreamParser` (blocks of ``ACC:DATA`` may contain ``\\n``; truncated or
malformed blocks give ``-160`` and the parser resynchronises). Faults of docs/protocols.md section 5 are read
from the crate's thread-safe :class:`~sim_frontend.faults.MSADCFaults`. The command semantics are the crate's
(:mod:`sim_frontend.emu_msadc`); this module is the transport only.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import Any

from .emu_msadc import MAX_LINE_BYTES, MAX_UPLOAD_BYTES, MSADCCrate, Session
from .faults import MSADCFaults
from .listen import listen_socket
from .scpi import BinaryReply, Block, Line, ParseError, Reply, StreamParser, split_header

log = logging.getLogger("sim_frontend.emu_msadc")


# --------------------------------------------------------------------------------------------------
class _Dropped(Exception):
    """The connection is to be closed (fault ``drop`` or a send failure)."""


class MSADCServer:
    """Serve an :class:`MSADCCrate` on ``host:port`` (port 0 = any free port).

    ``idle_timeout_s``: a binary upload whose bytes stop arriving for this long is truncated (``-160``).
    ``send_timeout_s``: a client that reads nothing for this long while a reply is sent is disconnected.
    """

    def __init__(
        self,
        crate: MSADCCrate,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: MSADCFaults | None = None,
        idle_timeout_s: float = 1.0,
        send_timeout_s: float = 60.0,
        max_clients: int = 4,
    ) -> None:
        self.crate = crate
        self.host = host
        self.port = port
        self.faults = faults if faults is not None else MSADCFaults()
        self.faults.resolve = crate.commands.lookup
        self.idle_timeout_s = idle_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_clients = max_clients
        self.stats = {
            "connections": 0,
            "refused": 0,
            "dropped": 0,
            "no_reply": 0,
            "truncated": 0,
            "corrupted": 0,
            "delayed": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "disconnects": 0,
            "restarts": 0,
        }
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._sessions: dict[socket.socket, Session] = {}
        self._conns_lock = threading.Lock()
        self._wake_r = self._wake_w = -1

    @property
    def resource(self) -> str:
        """The VISA resource string of this crate."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    # ---------------------------------------------------------------- life cycle
    def start(self) -> MSADCServer:
        if self._thread is not None:
            return self
        lst = listen_socket(self.host, self.port, backlog=8)
        self.port = lst.getsockname()[1]
        self._listener = lst
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="msadc-accept", daemon=True)
        self._thread.start()
        log.info("MSADC crate listening on %s", self.resource)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the threads."""
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        with self._conns_lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, th in conns:
            th.join(timeout=5.0)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> MSADCServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clients(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                waitables: list[socket.socket | int] = [self._listener, self._wake_r]
                ready, _, _ = select.select(waitables, [], [], 1.0)
            except (OSError, ValueError):
                return
            if self._wake_r in ready or self._stop.is_set():
                return
            if self._listener not in ready:
                continue
            try:
                conn, addr = self._listener.accept()
            except OSError:
                continue
            with self._conns_lock:
                too_many = len(self._conns) >= self.max_clients
            if too_many:
                self.stats["refused"] += 1
                log.warning("MSADC: refusing connection from %s: %d clients already", addr, self.max_clients)
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            self.stats["connections"] += 1
            th = threading.Thread(target=self._serve, args=(conn,), name=f"msadc-conn-{addr[1]}", daemon=True)
            with self._conns_lock:
                self._conns[conn] = th
            th.start()

    # ---------------------------------------------------------------- one connection
    def _serve(self, conn: socket.socket) -> None:
        parser = StreamParser(max_line=MAX_LINE_BYTES, max_block=MAX_UPLOAD_BYTES)
        session = Session()
        with self._conns_lock:
            self._sessions[conn] = session
        last_rx = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    waitables: list[socket.socket | int] = [conn, self._wake_r]
                    ready, _, _ = select.select(waitables, [], [], 0.1)
                except (OSError, ValueError):
                    return
                if self._wake_r in ready or self._stop.is_set():
                    return
                items: list[Any] = []
                if conn in ready:
                    try:
                        data = conn.recv(1 << 16)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        return
                    self.stats["bytes_in"] += len(data)
                    last_rx = time.monotonic()
                    items = parser.feed(data)
                elif (
                    parser.mid_block or parser.awaiting_terminator
                ) and time.monotonic() - last_rx > self.idle_timeout_s:
                    items = parser.idle()
                for item in items:
                    self._handle_item(conn, item, session)
        except _Dropped:
            pass
        except Exception:  # never let a connection thread die silently
            log.exception("MSADC connection failed")
        finally:
            self.crate.session_closed(session)
            self.stats["disconnects"] += 1
            try:
                conn.close()
            except OSError:
                pass
            with self._conns_lock:
                self._conns.pop(conn, None)
                self._sessions.pop(conn, None)

    def restart_crate(self) -> None:
        """Fault ``restart``: the crate reboots (:meth:`MSADCCrate.restart`) and every connection but the
        observers' (exempt from faults) is dropped."""
        self.stats["restarts"] += 1
        log.info("MSADC fault: crate restart")
        self.crate.restart()
        with self._conns_lock:
            conns = [c for c, s in self._sessions.items() if not s.observer]
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _handle_item(self, conn: socket.socket, item: Any, session: Session) -> None:
        crate = self.crate
        errors = crate.error_queue(session)
        faults = None if session.observer else self.faults  # an observer is exempt from faults
        if faults is not None and faults.take("restart"):
            self.restart_crate()
            raise _Dropped()
        if isinstance(item, ParseError):
            crate.counters["errors"] += 1
            errors.push(item.code, item.detail)
            return
        if isinstance(item, Line):
            head, block = item.text, None
        else:
            assert isinstance(item, Block)
            head, block = item.head, item.payload
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            crate.counters["errors"] += 1
            errors.push(-102, "non-ASCII bytes in the command")
            return
        if not text.isprintable():
            text = text.replace("\t", " ")
            if not text.isprintable():
                crate.counters["errors"] += 1
                errors.push(-102, "control characters in the command")
                return
        segments = text.split(";")
        replies: list[Reply] = []
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if faults is not None:
                faults.maybe_pause(
                    crate.commands.lookup(split_header(seg)[0]),
                    lambda: {"selected": crate.snapshot()["selected"]},
                    self._stop,
                )
            cmd, reply = crate.execute(seg, block if last else None, session)
            if reply is None or cmd is None or not cmd.query:
                continue
            if faults is None:
                replies.append(reply)
                continue
            if cmd.data and self.faults.take("drop"):
                self.stats["dropped"] += 1
                log.info("MSADC fault: dropping the connection at %s", cmd.pattern)
                raise _Dropped()
            if self.faults.take("no_reply"):
                self.stats["no_reply"] += 1
                continue
            replies.append(reply)
        if not replies:
            return
        delay = faults.take_delay() if faults is not None else 0.0
        if delay > 0:
            self.stats["delayed"] += 1
            if self._stop.wait(delay):
                raise _Dropped()
        if all(isinstance(r, str) for r in replies):
            self._send(conn, (";".join(replies) + "\n").encode("ascii", errors="replace"))  # type: ignore[arg-type]
            return
        for r in replies:
            if isinstance(r, str):
                self._send(conn, (r + "\n").encode("ascii", errors="replace"))
            else:
                self._send_block(conn, r, faults is not None)

    def _send_block(self, conn: socket.socket, r: BinaryReply, faulty: bool = True) -> None:
        payload = r.payload()
        if faulty and self.faults.take("corrupt"):
            self.stats["corrupted"] += 1
            hdr = r.header()
            bad = hdr[:2] + b"?" * (len(hdr) - 2)  # '#<n>' then a length field that is no number
            self._send(conn, bad)
            self._send(conn, payload)
            self._send(conn, b"\n")
            return
        if faulty and self.faults.take("truncate"):
            self.stats["truncated"] += 1
            self._send(conn, r.header(max(r.array.nbytes, 1)))
            self._send(conn, payload[: len(payload) // 2])
            return
        self._send(conn, r.header())
        if len(payload):
            self._send(conn, payload)
        self._send(conn, b"\n")

    def _send(self, conn: socket.socket, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        deadline = time.monotonic() + self.send_timeout_s
        while view.nbytes:
            if self._stop.is_set():
                raise _Dropped()
            try:
                _, writable, _ = select.select([], [conn], [], 0.2)
            except (OSError, ValueError):
                raise _Dropped() from None
            if not writable:
                if time.monotonic() > deadline:
                    log.warning("MSADC: client read nothing for %.0f s; disconnecting", self.send_timeout_s)
                    raise _Dropped()
                continue
            try:
                n = conn.send(view[: 1 << 22])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                raise _Dropped() from None
            self.stats["bytes_out"] += n
            view = view[n:]
            deadline = time.monotonic() + self.send_timeout_s
