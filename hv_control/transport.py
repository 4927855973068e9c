"""Line transports for the serial instruments (HV mainframe, HCAL table).

A :class:`LineTransport` sends one request line and returns one reply line (CR LF framing). It owns
the robustness every serial driver needs, once:

- an explicit deadline on every read (``timeout_s``), never a blocking read;
- the input is discarded before each request, so a late reply to an earlier request cannot be taken
  for the answer to this one (a half-finished exchange, e.g. after Ctrl-C, is cleaned up this way);
- resynchronisation after line noise: the caller passes an ``extract`` function that finds the valid
  reply in a received line (e.g. from the last ``#`` for the HV protocol); lines without one are
  discarded and reading continues until the deadline;
- a dropped connection (EOF, I/O error) is closed and re-opened, and the request re-sent, at most
  ``retries`` times; an unanswered request is re-sent at most ``retries`` times too (every request of
  our protocols is idempotent). What is left raises :class:`TransportTimeoutError` or
  :class:`ConnectionLostError` naming the address and the request;
- one lock per connection: concurrent callers never interleave a request/reply pair.

Implementations: :class:`SerialTransport` (pyserial ``serial_for_url``: ``/dev/pts/N``, ``/dev/ttyUSB0``,
``socket://host:port``), :class:`VisaTransport` (a pyvisa ASRL resource with the pyvisa-py backend,
``ASRL/dev/pts/N::INSTR`` or ``ASRLsocket://host:port::INSTR``; one ResourceManager per process,
never closed by a transport - pymeasure #894), :class:`HandlerTransport` (calls a line handler
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

log = logging.getLogger(__name__)

EOL = "\r\n"
MAX_REPLY_BYTES = 65536        #: a reply line longer than this is discarded as garbage

Extractor = Callable[[str], "str | None"]


class TransportError(Exception):
    """The serial line failed (base class)."""


class TransportTimeoutError(TransportError, TimeoutError):
    """No valid reply arrived before the deadline."""


class ConnectionLostError(TransportError, ConnectionError):
    """The connection dropped and could not be re-established."""


class _Lost(Exception):
    """Internal: the connection dropped (EOF or I/O error)."""


class _Timeout(Exception):
    """Internal: a read deadline passed."""


class LineTransport(ABC):
    """Request/reply over a line-oriented byte stream (see the module docstring).

    ``timeout_s``: deadline of one reply (s); ``retries``: re-sends after a timeout or a reconnect.
    Subclasses implement the raw operations ``_connect``, ``_disconnect``, ``_write``, ``_read_chunk``
    and ``_discard_input``.
    """

    def __init__(self, address: str, *, timeout_s: float = 2.0, retries: int = 2, eol: str = EOL,
                 reconnect_delay_s: float = 0.05) -> None:
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
        self._buf = bytearray()
        self._open = False
        self.stats = {"queries": 0, "timeouts": 0, "reconnects": 0, "garbage_lines": 0}

    # ------------------------------------------------------------------ raw operations
    @abstractmethod
    def _connect(self) -> None:
        """Open the underlying connection (raise on failure)."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Close the underlying connection; must not raise."""

    @abstractmethod
    def _write(self, data: bytes) -> None:
        """Write all bytes; raise ``_Lost`` if the connection is gone."""

    @abstractmethod
    def _read_chunk(self, timeout_s: float) -> bytes:
        """Return the bytes that arrive within ``timeout_s`` (s), b'' if none; ``_Lost`` on EOF/error."""

    @abstractmethod
    def _discard_input(self) -> None:
        """Drop everything already received; ``_Lost`` if the connection is gone."""

    # ------------------------------------------------------------------ public API
    def open(self) -> None:
        """Open the connection (also done lazily by :meth:`query`)."""
        with self._lock:
            if not self._open:
                try:
                    self._connect()
                except _Lost as exc:
                    raise ConnectionLostError(f"cannot open {self.address}: {exc}") from None
                self._open = True
                self._buf.clear()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._open:
                self._open = False
                self._disconnect()

    def __enter__(self) -> "LineTransport":
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
        last: Exception | None = None
        with self._lock:
            self.stats["queries"] += 1
            for attempt in range(self.retries + 1):
                try:
                    if not self._open:
                        if attempt:
                            self.stats["reconnects"] += 1
                        self.open()
                    self._discard_input()
                    self._buf.clear()
                    self._write(data)
                    return self._read_reply(extract, time.monotonic() + self.timeout_s)
                except _Timeout:
                    self.stats["timeouts"] += 1
                    last = TransportTimeoutError(
                        f"no reply from {self.address} to {line!r} within {self.timeout_s:g} s "
                        f"({attempt + 1} attempt(s))")
                    log.warning("%s", last)
                except (_Lost, ConnectionLostError) as exc:
                    last = ConnectionLostError(f"connection to {self.address} lost during {line!r}: {exc} "
                                               f"({attempt + 1} attempt(s))")
                    log.warning("%s", last)
                    self.close()
                    time.sleep(self.reconnect_delay_s * (attempt + 1))
                except BaseException:
                    # e.g. KeyboardInterrupt between write and read: drop the half-finished exchange
                    self._buf.clear()
                    raise
            assert last is not None
            raise last

    def _read_reply(self, extract: Extractor | None, deadline: float) -> str:
        while True:
            raw = self._read_line(deadline)
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
                line = bytes(self._buf[:i + 1])
                del self._buf[:i + 1]
                return line
            if len(self._buf) > MAX_REPLY_BYTES:
                self.stats["garbage_lines"] += 1
                self._buf.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout()
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
            self._ser = serial.serial_for_url(self.address, baudrate=9600, timeout=self.timeout_s,
                                              write_timeout=self.timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise _Lost(str(exc)) from None

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
            raise _Lost(str(exc)) from None

    def _read_chunk(self, timeout_s: float) -> bytes:
        import serial

        try:
            self._ser.timeout = timeout_s
            waiting = self._ser.in_waiting
            return self._ser.read(max(1, min(waiting, 4096)))
        except (serial.SerialException, OSError) as exc:
            raise _Lost(str(exc)) from None

    def _discard_input(self) -> None:
        import serial

        try:
            self._ser.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise _Lost(str(exc)) from None


# --------------------------------------------------------------------------------------------------
_RM_LOCK = threading.Lock()
_RESOURCE_MANAGERS: dict[str, Any] = {}


def resource_manager(library: str = "@py") -> Any:
    """The process-wide pyvisa ResourceManager of ``library`` (created once, never closed here; made
    anew if other code closed it: pyvisa hands the same manager to every caller of a library)."""
    import pyvisa

    with _RM_LOCK:
        rm = _RESOURCE_MANAGERS.get(library)
        if rm is not None:
            try:
                rm.session                      # raises once someone closed the shared manager
            except pyvisa.errors.InvalidSession:
                rm = None                       # pyvisa shares one manager per library (pymeasure #894)
        if rm is None:
            rm = pyvisa.ResourceManager(library)
            _RESOURCE_MANAGERS[library] = rm
        return rm


def visa_resource_name(address: str) -> str:
    """VISA name of a serial address: ``/dev/pts/3`` -> ``ASRL/dev/pts/3::INSTR``,
    ``socket://127.0.0.1:5000`` -> ``ASRLsocket://127.0.0.1:5000::INSTR``; ASRL names pass through."""
    if address.upper().startswith("ASRL"):
        return address
    return f"ASRL{address}::INSTR"


class VisaTransport(LineTransport):
    """pyvisa transport over an ASRL INSTR resource (pyvisa-py backend by default).

    Reads use ``read_termination = "\\n"`` and the latin-1 encoding so that noise bytes never raise a
    decoding error; the CR is stripped here. Closing the transport closes only its resource.
    """

    def __init__(self, address: str, *, library: str = "@py", **kw: Any) -> None:
        super().__init__(visa_resource_name(address), **kw)
        self.library = library
        self._res: Any = None

    def _connect(self) -> None:
        import pyvisa

        try:
            res = resource_manager(self.library).open_resource(self.address)
        except (pyvisa.errors.Error, OSError, ValueError) as exc:
            raise _Lost(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - pyserial errors surface raw through pyvisa-py
            raise _Lost(f"{type(exc).__name__}: {exc}") from None
        res.read_termination = "\n"
        res.write_termination = ""
        res.encoding = "latin-1"
        res.timeout = self.timeout_s * 1000.0
        self._res = res

    def _disconnect(self) -> None:
        res, self._res = self._res, None
        if res is not None:
            try:
                res.close()
            except Exception:  # noqa: BLE001
                pass

    def _write(self, data: bytes) -> None:
        try:
            self._res.write_raw(data)
        except Exception as exc:  # noqa: BLE001 - any write failure means the line is gone
            raise _Lost(f"{type(exc).__name__}: {exc}") from None

    def _read_chunk(self, timeout_s: float) -> bytes:
        import pyvisa

        try:
            self._res.timeout = max(1.0, timeout_s * 1000.0)
            return (self._res.read() + "\n").encode("latin-1")
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                return b""
            raise _Lost(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - pyserial's SerialException passes through pyvisa-py
            raise _Lost(f"{type(exc).__name__}: {exc}") from None

    def _discard_input(self) -> None:
        import pyvisa

        try:
            self._res.flush(pyvisa.constants.BufferOperation.discard_read_buffer)
        except Exception as exc:  # noqa: BLE001
            raise _Lost(f"{type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------------
class HandlerTransport(LineTransport):
    """In-process transport: each request line is answered by ``handler(line) -> reply`` (no bytes,
    no threads). Used to run a driver against an emulator model under a fake clock."""

    def __init__(self, handler: Callable[[str], str], *, address: str = "<in-process>", **kw: Any) -> None:
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
            raise _Timeout()
        return chunk

    def _discard_input(self) -> None:
        self._pending = b""


class ScriptedTransport(LineTransport):
    """Byte-exact protocol test double: ``pairs`` is the list of expected (request bytes, reply bytes)
    exchanges, in order. A request that differs from the next expected one raises AssertionError; a
    reply of ``None`` simulates silence (the read times out). :meth:`assert_done` checks that every
    pair was used."""

    def __init__(self, pairs: Sequence[tuple[bytes, bytes | None]], *, timeout_s: float = 0.01,
                 retries: int = 0, **kw: Any) -> None:
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
            raise _Timeout()
        return chunk

    def _discard_input(self) -> None:
        self._pending = b""

    def assert_done(self) -> None:
        """AssertionError unless every expected exchange happened."""
        if self.index != len(self.pairs):
            raise AssertionError(f"only {self.index} of {len(self.pairs)} expected exchanges happened; "
                                 f"next expected request {self.pairs[self.index][0]!r}")


# --------------------------------------------------------------------------------------------------
def open_transport(address: str, *, backend: str | None = None, timeout_s: float = 2.0, retries: int = 2,
                   visa_library: str = "@py") -> LineTransport:
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
