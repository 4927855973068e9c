"""Reading bytes from an open pyvisa resource: the one adapter around pyvisa-py's internals.

Two readers with one interface (:class:`ByteReader`); :func:`reader_for` picks one:

- :class:`SocketReader`, the fast path, only for a pyvisa-py TCPIP SOCKET session. It takes the bytes
  from the session's socket itself: binary blocks are received with ``recv_into`` straight into the
  caller's buffer (no intermediate copies), and a dropped connection is seen at once (pyvisa-py would
  keep polling until the timeout). It relies on two pyvisa-py internals, ``session.interface`` (the
  socket) and ``session._pending_buffer`` (bytes pyvisa-py has received but not handed out yet, which
  this reader consumes first and leaves consistent for pyvisa-py). Both are checked when the reader is
  attached; if either is missing (another backend, another session type, a future pyvisa-py) the
  public reader is used instead.
- :class:`PublicReader`, public pyvisa calls only (``read_raw``, ``read_bytes``, ``flush``): works with
  every backend and resource type.

Both give the same bytes for the same stream (tests/test_instrument_layer.py checks this). Every read
takes its timeout explicitly; errors are raised as the caller's :class:`~.errors.ErrorKinds`.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any, Protocol

from .errors import DEFAULT_KINDS, ErrorKinds

MAX_LINE_BYTES = 16 << 20  #: a text reply longer than this without a line end is refused
_RECV_MAX = 1 << 22  #: largest single recv_into


class ByteReader(Protocol):
    """What a driver needs from the receiving side of a resource."""

    fast: bool  #: True for the pyvisa-py socket fast path

    def read_line(self, timeout_s: float, what: str) -> bytes:
        """The next line, without its ``\\n``; at most ``timeout_s`` (s) for the whole line."""

    def read_into(self, view: memoryview, timeout_s: float, what: str) -> None:
        """Fill ``view`` (writable bytes) exactly; ``timeout_s`` (s) is the longest wait for more bytes."""

    def discard_input(self) -> None:
        """Drop every byte already received."""


def _is_timeout(exc: BaseException) -> bool:
    import pyvisa

    return isinstance(exc, pyvisa.errors.VisaIOError) and exc.error_code == pyvisa.constants.StatusCode.error_timeout


class PublicReader:
    """Public pyvisa calls only; the resource's ``read_termination`` must be ``"\\n"``."""

    fast = False

    def __init__(self, resource: Any, name: str, kinds: ErrorKinds = DEFAULT_KINDS) -> None:
        self.res = resource
        self.name = name
        self.kinds = kinds
        self._timeout_ms: float | None = None

    def _set_timeout(self, timeout_s: float) -> None:
        ms = max(1.0, timeout_s * 1000.0)
        if ms != self._timeout_ms:
            self.res.timeout = ms
            self._timeout_ms = ms

    def read_line(self, timeout_s: float, what: str) -> bytes:
        try:
            self._set_timeout(timeout_s)
            raw = self.res.read_raw()
        except Exception as exc:  # pyvisa-py passes pyserial/socket errors through raw
            if _is_timeout(exc):
                raise self.kinds.timeout(
                    f"no reply to {what} from {self.name} within {timeout_s * 1000:.0f} ms"
                ) from exc
            raise self.kinds.connection(
                f"reading the reply to {what} from {self.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return raw[:-1] if raw.endswith(b"\n") else raw

    def read_into(self, view: memoryview, timeout_s: float, what: str) -> None:
        n = view.nbytes
        if n == 0:
            return
        try:
            self._set_timeout(timeout_s)
            data = self.res.read_bytes(n, break_on_termchar=False)
        except Exception as exc:
            if _is_timeout(exc):
                raise self.kinds.timeout(
                    f"{what}: fewer than {n} bytes arrived, then nothing for {timeout_s * 1000:.0f} ms"
                ) from exc
            raise self.kinds.connection(
                f"{what}: reading {n} bytes from {self.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        view[: len(data)] = data
        if len(data) != n:
            raise self.kinds.timeout(f"{what}: {len(data)} of {n} bytes arrived")

    def discard_input(self) -> None:
        import pyvisa

        try:
            self.res.flush(pyvisa.constants.BufferOperation.discard_read_buffer)
        except Exception as exc:
            raise self.kinds.connection(
                f"discarding the input of {self.name} failed: {type(exc).__name__}: {exc}"
            ) from exc


class SocketReader:
    """The pyvisa-py TCPIP SOCKET fast path (see the module docstring); made by :meth:`attach`."""

    fast = True

    def __init__(self, session: Any, sock: socket.socket, name: str, kinds: ErrorKinds = DEFAULT_KINDS) -> None:
        self._sess = session
        self.sock = sock
        self.name = name
        self.kinds = kinds
        self.socket_bytes = 0  #: bytes taken from the socket by this reader

    @classmethod
    def attach(
        cls, resource: Any, name: str, kinds: ErrorKinds = DEFAULT_KINDS, rcvbuf_bytes: int | None = 8 << 20
    ) -> SocketReader | None:
        """The fast reader of ``resource``, or None when pyvisa-py's internals are not there. Sets
        TCP_NODELAY and, if given, the socket's receive buffer size (bytes)."""
        try:
            sess = resource.visalib.sessions[resource.session]
        except (AttributeError, KeyError, TypeError):
            return None
        sock = getattr(sess, "interface", None)
        if not isinstance(sock, socket.socket) or not isinstance(getattr(sess, "_pending_buffer", None), bytearray):
            return None
        try:
            if rcvbuf_bytes:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return cls(sess, sock, name, kinds)

    def _pending(self) -> bytearray:
        # fetched on every use: pyvisa-py rebinds the attribute when it slices it
        pend: bytearray = self._sess._pending_buffer
        return pend

    def _recv(self, what: str, timeout_s: float) -> bytes:
        """One chunk from the socket: b'' if nothing arrived within ``timeout_s``; a closed or failed
        connection raises at once."""
        r, _, _ = select.select([self.sock], [], [], max(timeout_s, 0.0))
        if not r:
            return b""
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            raise self.kinds.connection(f"{what}: connection to {self.name} lost ({exc})") from exc
        if not data:
            raise self.kinds.connection(f"{what}: connection closed by {self.name}")
        self.socket_bytes += len(data)
        return data

    def read_line(self, timeout_s: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout_s
        start = 0
        while True:
            pend = self._pending()
            i = pend.find(b"\n", start)
            if i >= 0:
                line = bytes(pend[:i])
                del pend[: i + 1]
                return line
            start = len(pend)
            if start > MAX_LINE_BYTES:
                raise self.kinds.protocol(f"reply to {what} exceeds {MAX_LINE_BYTES} bytes without a line end")
            wait = deadline - time.monotonic()
            data = self._recv(f"waiting for the reply to {what}", wait) if wait > 0 else b""
            if not data:
                raise self.kinds.timeout(f"no reply to {what} from {self.name} within {timeout_s * 1000:.0f} ms")
            pend += data

    def read_into(self, view: memoryview, timeout_s: float, what: str) -> None:
        n = view.nbytes
        if n == 0:
            return
        pos = 0
        pend = self._pending()
        if pend:
            pos = min(len(pend), n)
            view[:pos] = pend[:pos]
            del pend[:pos]
        while pos < n:
            r, _, _ = select.select([self.sock], [], [], timeout_s)
            if not r:
                raise self.kinds.timeout(
                    f"{what}: {pos} of {n} bytes arrived, then nothing for {timeout_s * 1000:.0f} ms"
                )
            try:
                got = self.sock.recv_into(view[pos:], min(n - pos, _RECV_MAX))
            except OSError as exc:
                raise self.kinds.connection(f"{what}: connection lost after {pos} of {n} bytes ({exc})") from exc
            if got == 0:
                raise self.kinds.connection(f"{what}: connection closed by {self.name} after {pos} of {n} bytes")
            pos += got
            self.socket_bytes += got

    def discard_input(self) -> None:
        self._pending().clear()
        while self._recv("discarding input", 0.0):
            pass


def reader_for(
    resource: Any,
    name: str,
    *,
    fast: bool = True,
    kinds: ErrorKinds = DEFAULT_KINDS,
    rcvbuf_bytes: int | None = 8 << 20,
) -> ByteReader:
    """The fast :class:`SocketReader` when ``fast`` and pyvisa-py's internals allow it, else the
    :class:`PublicReader`."""
    if fast:
        reader = SocketReader.attach(resource, name, kinds, rcvbuf_bytes)
        if reader is not None:
            return reader
    return PublicReader(resource, name, kinds)
