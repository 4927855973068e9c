"""VISA sessions: the process-wide ResourceManager and one open resource with explicit timeouts.

- ONE :class:`pyvisa.ResourceManager` per process and backend library (:func:`resource_manager`); a
  session never closes it (closing one resource closed the shared manager in pymeasure #894), and it
  is made anew if other code closed it.
- :class:`VisaSession` opens a resource (a half-open resource, opened but not set up, is closed before
  the error is raised), writes raw bytes and reads through the :mod:`.readers` adapter: every read
  names its timeout, every failure is raised as the driver's :class:`~.errors.ErrorKinds`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from .errors import DEFAULT_KINDS, ErrorKinds
from .readers import ByteReader, reader_for

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
                _ = rm.session  # raises once someone closed the shared manager
            except pyvisa.errors.InvalidSession:
                rm = None  # pyvisa shares one manager per library (pymeasure #894)
        if rm is None:
            rm = pyvisa.ResourceManager(library)
            _RESOURCE_MANAGERS[library] = rm
        return rm


class VisaSession:
    """One VISA resource ``name`` of backend ``library``.

    Lines end with ``\\n`` on input; :meth:`write` sends bytes as given (the caller adds its own
    terminator). ``fast=False`` forces the public-pyvisa reader (see :mod:`.readers`);
    ``rcvbuf_bytes`` is the socket receive buffer asked for on the fast path.
    """

    def __init__(
        self,
        name: str,
        *,
        library: str = "@py",
        fast: bool = True,
        kinds: ErrorKinds = DEFAULT_KINDS,
        encoding: str = "ascii",
        rcvbuf_bytes: int | None = 8 << 20,
    ) -> None:
        self.name = name
        self.library = library
        self.fast_requested = fast
        self.kinds = kinds
        self.encoding = encoding
        self.rcvbuf_bytes = rcvbuf_bytes
        self.resource: Any = None  #: the open pyvisa resource, None while closed
        self.reader: ByteReader | None = None

    @property
    def is_open(self) -> bool:
        return self.resource is not None

    @property
    def fast(self) -> bool:
        """Whether the open session reads through the pyvisa-py socket fast path."""
        return self.reader is not None and self.reader.fast

    def open(self, *, timeout_s: float, open_timeout_s: float | None = None) -> None:
        """Open the resource (``open_timeout_s``: longest wait for the connection, s; ``timeout_s``:
        the resource's default I/O timeout, s). Failures raise the connection kind."""
        if self.resource is not None:
            return
        kw = {} if open_timeout_s is None else {"open_timeout": int(open_timeout_s * 1000)}
        try:
            res = resource_manager(self.library).open_resource(self.name, **kw)
        except Exception as exc:  # VisaIOError, OSError, a bad name, raw pyserial errors
            raise self.kinds.connection(f"cannot open {self.name}: {type(exc).__name__}: {exc}") from exc
        try:
            res.read_termination = "\n"
            res.write_termination = ""
            res.encoding = self.encoding
            res.timeout = max(1.0, timeout_s * 1000.0)
            reader = reader_for(
                res, self.name, fast=self.fast_requested, kinds=self.kinds, rcvbuf_bytes=self.rcvbuf_bytes
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                res.close()
            if isinstance(exc, Exception):
                raise self.kinds.connection(f"cannot set up {self.name}: {type(exc).__name__}: {exc}") from exc
            raise
        self.resource, self.reader = res, reader

    def close(self) -> None:
        """Close the resource (idempotent; never raises; the ResourceManager stays open)."""
        res, self.resource, self.reader = self.resource, None, None
        if res is not None:
            with contextlib.suppress(Exception):
                res.close()

    def _open_reader(self, what: str) -> ByteReader:
        if self.reader is None:
            raise self.kinds.connection(f"{what}: session {self.name} is not open")
        return self.reader

    def write(self, data: bytes, what: str = "") -> None:
        """Send ``data`` as is; any failure means the connection is gone (connection kind)."""
        if self.resource is None:
            raise self.kinds.connection(f"write {what or data[:40]!r}: session {self.name} is not open")
        try:
            self.resource.write_raw(data)
        except Exception as exc:
            raise self.kinds.connection(
                f"write {what or data[:40]!r} to {self.name} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def read_line(self, timeout_s: float, what: str) -> bytes:
        """The next line without its ``\\n`` (s: ``timeout_s`` for the whole line)."""
        return self._open_reader(what).read_line(timeout_s, what)

    def read_into(self, view: memoryview, timeout_s: float, what: str) -> None:
        """Fill ``view`` exactly; ``timeout_s`` (s) bounds every wait for more bytes."""
        self._open_reader(what).read_into(view, timeout_s, what)

    def discard_input(self) -> None:
        """Drop everything already received."""
        self._open_reader("discard").discard_input()
