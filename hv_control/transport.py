"""Line transports for the serial instruments (HV mainframe, HCAL table).

A :class:`LineTransport` sends one request line and returns one reply line (CR LF framing). It owns
the robustness every serial driver needs, once:

- an explicit deadline on every read (``timeout_s``), never a blocking read;
- the input is discarded before each request, so a late reply to an earlier request cannot be taken
  for the answer to this one (a half-finished exchange, e.g. after Ctrl-C, is cleaned up this way);
- after a timeout (or an interrupted exchange) the line is resynchronised before the next request:
  everything that arrives is discarded until every request still unanswered has had its (late) reply
  line and the line is then quiet for ``RESYNC_SETTLE_S``, waiting at most ``resync_max_s`` (default two
  reply timeouts; a reply that never comes costs that wait once, a later one is taken as lost). A
  re-send of the same request (a retry) is not preceded by this wait: a late reply to the identical
  request answers it;
- one owner per line: :class:`SerialTransport` and :class:`VisaTransport` hold an exclusive lock keyed
  by the endpoint (:mod:`hv_control.linelock`) from :meth:`LineTransport.open` to
  :meth:`LineTransport.close`, and a server's refusal line (``LINE OWNED BY ANOTHER CLIENT``) is
  recognised; both raise :class:`LineOwnedError`, which is not retried;
- resynchronisation after line noise: the caller passes an ``extract`` function that finds the valid
  reply in a received line (e.g. from the last ``#`` for the HV protocol); lines without one are
  discarded and reading continues until the deadline;
- a dropped connection (EOF, I/O error) is closed and re-opened, and the request re-sent, at most
  ``retries`` times; an unanswered request is re-sent at most ``retries`` times too (every request of
  our protocols is idempotent). What is left raises :class:`TransportTimeoutError` or
  :class:`ConnectionLostError` naming the address and the request;
- one lock per connection: concurrent callers never interleave a request/reply pair.

The retry loop, the error kinds, the VISA session and the ResourceManager are the shared instrument
layer's (:mod:`hv_control.instrument`, also used by the MSADC crate driver); this module adds the line
framing and resynchronisation of the serial protocols.

Implementations: :class:`SerialTransport` (pyserial ``serial_for_url``: ``/dev/pts/N``, ``/dev/ttyUSB0``,
``socket://host:port``), :class:`VisaTransport` (a pyvisa ASRL resource with the pyvisa-py backend,
``ASRL/dev/pts/N::INSTR`` or ``ASRLsocket://host:port::INSTR``, through
:class:`~hv_control.instrument.VisaSession`), :class:`HandlerTransport` (calls a line handler
in-process, no bytes; for simulations and tests) and :class:`ScriptedTransport` (byte-exact expected
request/reply pairs, for protocol tests in the style of pymeasure's ``expected_protocol``).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from detector.hwstatus import LINE_OWNED_REPLY

from .instrument import (
    InstrumentConnectionError,
    InstrumentError,
    InstrumentTimeoutError,
    VisaSession,
    resource_manager,
    run_with_retries,
)
from .linelock import LineBusy, LineLock

__all__ = [
    "ConnectionLostError",
    "HandlerTransport",
    "LineOwnedError",
    "LineTransport",
    "ScriptedTransport",
    "SerialTransport",
    "TransportError",
    "TransportTimeoutError",
    "VisaTransport",
    "open_transport",
    "resource_manager",
    "visa_resource_name",
]

log = logging.getLogger(__name__)

EOL = "\r\n"
MAX_REPLY_BYTES = 65536  #: a reply line longer than this is discarded as garbage
RESYNC_SETTLE_S = 0.02  #: quiet (s) after the last late reply before the next request is sent

Extractor = Callable[[str], "str | None"]


class TransportError(InstrumentError):
    """The serial line failed (base class)."""


class TransportTimeoutError(TransportError, InstrumentTimeoutError):
    """No valid reply arrived before the deadline."""


class ConnectionLostError(TransportError, InstrumentConnectionError):
    """The connection dropped and could not be re-established."""


class LineOwnedError(TransportError):
    """Another tool owns the line (this host's lock, or the server refused a second client); not
    retried: the line has one owner."""


class LineTransport(ABC):
    """Request/reply over a line-oriented byte stream (see the module docstring).

    ``timeout_s``: deadline of one reply (s); ``retries``: re-sends after a timeout or a reconnect;
    ``resync_max_s``: the longest wait (s, default ``2 * timeout_s``) for the late replies after a timeout
    before the next request is sent anyway. Subclasses implement the
    raw operations ``_connect``, ``_disconnect``, ``_write``, ``_read_chunk`` and ``_discard_input``,
    and :meth:`_line_lock` if the line needs an exclusive owner.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 2,
        eol: str = EOL,
        reconnect_delay_s: float = 0.05,
        resync_max_s: float | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 s, got {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.address = address
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.eol = eol
        self.reconnect_delay_s = reconnect_delay_s
        self._lock = threading.RLock()
        self.resync_max_s = 2.0 * self.timeout_s if resync_max_s is None else float(resync_max_s)
        self._buf = bytearray()
        self._open = False
        self._stale = False  #: a reply may still be on its way: resynchronise before the next request
        self._unanswered = 0  #: requests sent since the line was last known quiet, minus replies read
        self._lock_file: LineLock | None = None
        self.stats = {
            "queries": 0,
            "timeouts": 0,
            "reconnects": 0,
            "garbage_lines": 0,
            "resyncs": 0,
            "late_bytes": 0,
        }

    # ------------------------------------------------------------------ raw operations
    @abstractmethod
    def _connect(self) -> None:
        """Open the underlying connection (raise on failure)."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Close the underlying connection; must not raise."""

    @abstractmethod
    def _write(self, data: bytes) -> None:
        """Write all bytes; raise :class:`InstrumentConnectionError` if the connection is gone."""

    @abstractmethod
    def _read_chunk(self, timeout_s: float) -> bytes:
        """Return the bytes that arrive within ``timeout_s`` (s), b'' if none (or raise
        :class:`InstrumentTimeoutError`); :class:`InstrumentConnectionError` on EOF/error."""

    @abstractmethod
    def _discard_input(self) -> bytes | None:
        """Drop everything already received and return it (None if unknown);
        :class:`InstrumentConnectionError` if the connection is gone."""

    def _line_lock(self) -> LineLock | None:
        """The exclusive lock of this line (None: no lock, e.g. in-process transports)."""
        return None

    # ------------------------------------------------------------------ public API
    def open(self) -> None:
        """Take the line (:class:`LineOwnedError` if another tool owns it) and open the connection
        (also done lazily by :meth:`query`)."""
        with self._lock:
            if self._lock_file is None:
                self._lock_file = self._line_lock()
            if self._lock_file is not None and not self._lock_file.held:
                try:
                    self._lock_file.acquire()
                except LineBusy as exc:
                    raise LineOwnedError(
                        f"{self.address}: the line is owned by another tool ({exc.holder or 'unknown'}, lock "
                        f"{self._lock_file.path}); one owner per line"
                    ) from None
            if not self._open:
                try:
                    self._connect()
                except InstrumentConnectionError as exc:
                    self._release()
                    raise ConnectionLostError(f"cannot open {self.address}: {exc}") from None
                self._open = True
                self._stale = False
                self._unanswered = 0
                self._buf.clear()

    def close(self) -> None:
        """Close the connection and give the line up (idempotent)."""
        with self._lock:
            self._drop()
            self._release()

    def _drop(self) -> None:
        """Close the connection but keep the line (a reconnect follows)."""
        if self._open:
            self._open = False
            self._disconnect()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.release()

    def _check_owned(self, data: bytes | bytearray | None) -> None:
        if data and LINE_OWNED_REPLY.encode() in data:
            self._drop()
            raise LineOwnedError(
                f"{self.address}: {LINE_OWNED_REPLY.lower()} (the server refused us); one owner per line"
            )

    def _resync(self) -> None:
        """Discard everything until each unanswered request has had its reply line and the line is then
        quiet for ``RESYNC_SETTLE_S`` (at most ``resync_max_s``): a late reply is dropped, never taken
        for the next request's."""
        drained = bytearray(self._buf)
        self._buf.clear()
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            if drained.count(b"\n") >= self._unanswered and now - last >= RESYNC_SETTLE_S:
                break
            if now - start >= self.resync_max_s:
                if self._unanswered and self.resync_max_s > 0:
                    log.warning(
                        "%s: %d of %d late repl(y/ies) did not come (taken as lost after %.2f s)",
                        self.address,
                        max(0, self._unanswered - drained.count(b"\n")),
                        self._unanswered,
                        now - start,
                    )
                break
            try:
                chunk = self._read_chunk(max(0.001, min(RESYNC_SETTLE_S, self.resync_max_s - (now - start))))
            except InstrumentTimeoutError:
                chunk = b""
            if chunk:
                drained += chunk
                last = time.monotonic()
        drained += self._discard_input() or b""
        self.stats["resyncs"] += 1
        self.stats["late_bytes"] += len(drained)
        self._unanswered = 0
        if drained:
            log.info(
                "%s: discarded %d late byte(s) after a timeout: %r", self.address, len(drained), bytes(drained[:80])
            )
        self._stale = False
        self._check_owned(drained)

    def __enter__(self) -> LineTransport:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, line: str, extract: Extractor | None = None) -> str:
        """Send ``line`` (the end of line is appended) and return the reply, without its end of line.

        ``extract(text)`` returns the valid reply found in one received line or None for a garbage
        line (default: every line is valid). Raises :class:`TransportTimeoutError` or
        :class:`ConnectionLostError` after ``retries`` re-sends.
        """
        data = (line + self.eol).encode("ascii", errors="strict")

        tries = [0]

        def attempt() -> str:
            retry, tries[0] = tries[0] > 0, tries[0] + 1
            if not self._open:
                self.open()
            if self._stale and not retry:  # a retry re-sends the same request: its late reply answers it
                self._resync()
            else:
                gone = self._discard_input()
                self._check_owned(gone)
                if gone:  # late replies dropped here are no longer on their way
                    self._unanswered = max(0, self._unanswered - gone.count(b"\n"))
            self._buf.clear()
            self._write(data)
            self._unanswered += 1
            self._stale = True  # until the reply is in
            reply = self._read_reply(extract, time.monotonic() + self.timeout_s)
            self._unanswered -= 1
            self._stale = self._unanswered > 0  # after a retry the first attempt's reply may still come
            return reply

        def failed(exc: BaseException, n: int) -> BaseException:
            err: TransportError
            if isinstance(exc, InstrumentTimeoutError):
                self.stats["timeouts"] += 1
                err = TransportTimeoutError(
                    f"no reply from {self.address} to {line!r} within {self.timeout_s:g} s ({n + 1} attempt(s))"
                )
            else:
                err = ConnectionLostError(
                    f"connection to {self.address} lost during {line!r}: {exc} ({n + 1} attempt(s))"
                )
                self._drop()
            log.warning("%s", err)
            return err

        with self._lock:
            self.stats["queries"] += 1
            try:
                return run_with_retries(
                    attempt,
                    retries=self.retries,
                    retryable=(InstrumentTimeoutError, InstrumentConnectionError),
                    recover=self._reopen,
                    on_failure=failed,
                )
            except BaseException:
                # e.g. KeyboardInterrupt between write and read: drop the half-finished exchange
                self._buf.clear()
                raise

    def _reopen(self, n: int) -> None:
        """Before the n-th re-send: re-open a connection that was closed after it dropped."""
        if not self._open:
            time.sleep(self.reconnect_delay_s * n)
            self.stats["reconnects"] += 1
            self.open()

    def _read_reply(self, extract: Extractor | None, deadline: float) -> str:
        while True:
            raw = self._read_line(deadline)
            self._check_owned(raw)
            text = raw.decode("latin-1").rstrip("\r\n")
            reply = text if extract is None else extract(text)
            if reply is not None:
                return reply
            self.stats["garbage_lines"] += 1
            log.debug("%s: discarded garbage line %r", self.address, raw[:80])

    def _read_line(self, deadline: float) -> bytes:
        """One line (up to and including LF) before ``deadline``; overlong garbage is dropped."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return line
            if len(self._buf) > MAX_REPLY_BYTES:
                self.stats["garbage_lines"] += 1
                self._buf.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise InstrumentTimeoutError("no reply")
            self._buf += self._read_chunk(left)


# --------------------------------------------------------------------------------------------------
class SerialTransport(LineTransport):
    """pyserial transport: ``serial.serial_for_url(address)``, e.g. ``/dev/pts/3`` or
    ``socket://127.0.0.1:5000`` (9600 8N1, no flow control)."""

    def __init__(self, address: str, **kw: Any) -> None:
        super().__init__(address, **kw)
        self._ser: Any = None

    def _connect(self) -> None:
        import serial

        try:
            self._ser = serial.serial_for_url(
                self.address, baudrate=9600, timeout=self.timeout_s, write_timeout=self.timeout_s
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise InstrumentConnectionError(str(exc)) from None

    def _disconnect(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # noqa: BLE001 - closing a broken port must not raise
                pass

    def _write(self, data: bytes) -> None:
        import serial

        try:
            self._ser.write(data)
            self._ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise InstrumentConnectionError(str(exc)) from None

    def _read_chunk(self, timeout_s: float) -> bytes:
        import serial

        try:
            self._ser.timeout = timeout_s
            waiting = self._ser.in_waiting
            return self._ser.read(max(1, min(waiting, 4096)))
        except (serial.SerialException, OSError) as exc:
            raise InstrumentConnectionError(str(exc)) from None

    def _discard_input(self) -> bytes:
        import serial

        data = bytearray()
        try:
            self._ser.timeout = 0  # non-blocking: only what is already there
            while len(data) <= MAX_REPLY_BYTES:
                chunk = self._ser.read(4096)
                if not chunk:
                    break
                data += chunk
        except (serial.SerialException, OSError) as exc:
            if LINE_OWNED_REPLY.encode() in data:
                return bytes(data)  # the refusal, then the server closed: reported by the caller
            raise InstrumentConnectionError(str(exc)) from None
        return bytes(data)

    def _line_lock(self) -> LineLock:
        return LineLock(self.address)


# --------------------------------------------------------------------------------------------------
def visa_resource_name(address: str) -> str:
    """VISA name of a serial address: ``/dev/pts/3`` -> ``ASRL/dev/pts/3::INSTR``,
    ``socket://127.0.0.1:5000`` -> ``ASRLsocket://127.0.0.1:5000::INSTR``; ASRL names pass through."""
    if address.upper().startswith("ASRL"):
        return address
    return f"ASRL{address}::INSTR"


class VisaTransport(LineTransport):
    """pyvisa transport over an ASRL INSTR resource (pyvisa-py backend by default), through the shared
    :class:`~hv_control.instrument.VisaSession` (latin-1, so that noise bytes never raise a decoding
    error; the CR is stripped here). Closing the transport closes only its resource."""

    def __init__(self, address: str, *, library: str = "@py", **kw: Any) -> None:
        super().__init__(visa_resource_name(address), **kw)
        self.library = library
        self._session = VisaSession(self.address, library=library, encoding="latin-1")

    def _connect(self) -> None:
        self._session.open(timeout_s=self.timeout_s)

    def _disconnect(self) -> None:
        self._session.close()

    def _write(self, data: bytes) -> None:
        self._session.write(data)

    def _read_chunk(self, timeout_s: float) -> bytes:
        try:
            return self._session.read_line(timeout_s, "a reply line") + b"\n"
        except InstrumentTimeoutError:
            return b""

    def _discard_input(self) -> None:
        self._session.discard_input()

    def _line_lock(self) -> LineLock:
        return LineLock(self.address)


# --------------------------------------------------------------------------------------------------
class HandlerTransport(LineTransport):
    """In-process transport: each request line is answered by ``handler(line) -> reply`` (no bytes,
    no threads). Used to run a driver against an emulator model under a fake clock."""

    def __init__(self, handler: Callable[[str], str], *, address: str = "<in-process>", **kw: Any) -> None:
        kw.setdefault("resync_max_s", 0.0)  # in-process: no reply can be late
        super().__init__(address, **kw)
        self.handler = handler
        self._pending = b""

    def _connect(self) -> None:
        return None

    def _disconnect(self) -> None:
        return None

    def _write(self, data: bytes) -> None:
        reply = self.handler(data.decode("latin-1").rstrip("\r\n"))
        self._pending = reply.encode("latin-1", errors="replace") + b"\r\n"

    def _read_chunk(self, timeout_s: float) -> bytes:
        chunk, self._pending = self._pending, b""
        if not chunk:
            raise InstrumentTimeoutError("no reply")
        return chunk

    def _discard_input(self) -> None:
        self._pending = b""


class ScriptedTransport(LineTransport):
    """Byte-exact protocol test double: ``pairs`` is the list of expected (request bytes, reply bytes)
    exchanges, in order. A request that differs from the next expected one raises AssertionError; a
    reply of ``None`` simulates silence (the read times out). :meth:`assert_done` checks that every
    pair was used."""

    def __init__(
        self, pairs: Sequence[tuple[bytes, bytes | None]], *, timeout_s: float = 0.01, retries: int = 0, **kw: Any
    ) -> None:
        kw.setdefault("resync_max_s", 0.0)  # scripted: no reply can be late
        super().__init__("<scripted>", timeout_s=timeout_s, retries=retries, **kw)
        self.pairs = list(pairs)
        self.index = 0
        self._pending = b""

    def _connect(self) -> None:
        return None

    def _disconnect(self) -> None:
        return None

    def _write(self, data: bytes) -> None:
        if self.index >= len(self.pairs):
            raise AssertionError(f"unexpected request {data!r}: all {len(self.pairs)} exchanges were used")
        expected, reply = self.pairs[self.index]
        if data != expected:
            raise AssertionError(f"exchange {self.index}: expected request {expected!r}, got {data!r}")
        self.index += 1
        self._pending = b"" if reply is None else reply

    def _read_chunk(self, timeout_s: float) -> bytes:
        chunk, self._pending = self._pending, b""
        if not chunk:
            raise InstrumentTimeoutError("no reply")
        return chunk

    def _discard_input(self) -> None:
        self._pending = b""

    def assert_done(self) -> None:
        """AssertionError unless every expected exchange happened."""
        if self.index != len(self.pairs):
            raise AssertionError(
                f"only {self.index} of {len(self.pairs)} expected exchanges happened; "
                f"next expected request {self.pairs[self.index][0]!r}"
            )


# --------------------------------------------------------------------------------------------------
def open_transport(
    address: str, *, backend: str | None = None, timeout_s: float = 2.0, retries: int = 2, visa_library: str = "@py"
) -> LineTransport:
    """A connected transport for ``address``: ``backend`` ``"serial"`` (pyserial) or ``"visa"``; by
    default VISA for names starting with ``ASRL``, pyserial otherwise."""
    if backend is None:
        backend = "visa" if address.upper().startswith("ASRL") else "serial"
    if backend == "serial":
        t: LineTransport = SerialTransport(address, timeout_s=timeout_s, retries=retries)
    elif backend == "visa":
        t = VisaTransport(address, library=visa_library, timeout_s=timeout_s, retries=retries)
    else:
        raise ValueError(f"unknown transport backend {backend!r}; use 'serial' or 'visa'")
    t.open()
    return t
