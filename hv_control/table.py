"""Calorimeter table driver (docs/protocols.md section 3).

The ECAL and the HCAL sit on one movable platform (as in NA64). :class:`HCALTableDriver` moves it so that
the calibration beam hits a chosen cell, waits until the table rests and verifies the final position (x, y
within ``tolerance_mm``, module and cell name); a mismatch raises :class:`TablePositionError`. Coordinates
are the beam impact point in mm: HCAL cell ``x-y-m`` is centred at ``((x-1)*194, (y-1)*194)`` mm in the
module plane; ECAL cell ``ECAL-x-y`` at ``((x-3)*38.2, (y-3)*38.2)`` mm in the ECAL plane (module -1);
travel is +/-450 mm.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from detector import channels as chmap

from .instrument import InstrumentError, InstrumentProtocolError, InstrumentTimeoutError
from .transport import LineTransport, TransportError, open_transport

CELL_PITCH_MM = 194.0  #: HCAL cell pitch, mm
ECAL_PITCH_MM = 38.2  #: ECAL cell pitch, mm
ECAL_CENTRAL_CELL = (3, 3)  #: the ECAL cell on the beam axis at the physics position
TRAVEL_MM = 450.0  #: travel limit of each axis, +/- mm
PHYSICS = "PHYSICS"  #: cell label of the physics position (module -1)
NONE = "NONE"  #: cell label when the beam is on no cell centre (or while moving)

_POS = re.compile(
    r"POS (-?[0-9]+(?:\.[0-9]+)?) (-?[0-9]+(?:\.[0-9]+)?) (-1|[0-9]) ([0-9]-[0-9]-[0-9]|ECAL-[0-5]-[0-5]|PHYSICS|NONE)$"
)
_BUSY = re.compile(r"BUSY ([01])$")
_ACK = re.compile(r"(OK|ERR [ -~]+)$")
_IDN = re.compile(r"(NA64-HIL,HCAL-TABLE,[ -~]*)$")


class TableError(InstrumentError):
    """The table refused a command, answered something unexpected or did not answer (then the
    transport's error is chained)."""


class TableBusyError(TableError, InstrumentProtocolError):
    """A move was refused because the table is still moving (``ERR BUSY``)."""


class TableLimitError(TableError, ValueError):
    """A target outside the travel or an unknown cell/module; nothing was sent."""


class TablePositionError(TableError, InstrumentProtocolError):
    """The table came to rest somewhere else than commanded."""


class TableTimeoutError(TableError, InstrumentTimeoutError):
    """The table did not come to rest in time."""


@dataclass(frozen=True)
class TablePosition:
    """Beam impact point ``x_mm``, ``y_mm`` (mm), ``module`` (-1 = physics position) and ``cell``
    (``x-y-m``, ``PHYSICS`` or ``NONE``)."""

    x_mm: float
    y_mm: float
    module: int
    cell: str


def cell_centre_mm(x: int, y: int) -> tuple[float, float]:
    """Impact point (mm) that centres cell column ``x``, row ``y`` (0..2) in the beam."""
    return (x - 1) * CELL_PITCH_MM, (y - 1) * CELL_PITCH_MM


def ecal_cell_centre_mm(x: int, y: int) -> tuple[float, float]:
    """Impact point (mm, ECAL plane) that centres ECAL cell column ``x``, row ``y`` (0..5) in the beam."""
    return (x - ECAL_CENTRAL_CELL[0]) * ECAL_PITCH_MM, (y - ECAL_CENTRAL_CELL[1]) * ECAL_PITCH_MM


def _searcher(pattern: re.Pattern[str]) -> Callable[[str], str | None]:
    """Resynchronising extractor: the reply matching ``pattern`` at the end of a line (noise before
    it is dropped), else None."""

    def extract(text: str) -> str | None:
        m = pattern.search(text.rstrip())
        return m.group(0) if m else None

    return extract


class HCALTableDriver:
    """Driver of the HCAL table over any line transport.

    ``poll_s``: BUSY? polling period (s); ``tolerance_mm``: allowed final position error (mm);
    ``move_timeout_s``: default time allowed for one move (s); ``sleep``/``clock`` injectable for tests.
    """

    def __init__(
        self,
        transport: LineTransport,
        *,
        poll_s: float = 0.05,
        tolerance_mm: float = 0.5,
        move_timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.poll_s = poll_s
        self.tolerance_mm = tolerance_mm
        self.move_timeout_s = move_timeout_s
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def connect(
        cls, address: str, *, backend: str | None = None, timeout_s: float = 2.0, retries: int = 2, **kw: Any
    ) -> HCALTableDriver:
        """Open ``address`` (``/dev/pts/N``, ``socket://host:port`` or ``ASRL...::INSTR``)."""
        return cls(open_transport(address, backend=backend, timeout_s=timeout_s, retries=retries), **kw)

    def close(self) -> None:
        """Close the connection (the table stays where it is)."""
        self.transport.close()

    # ------------------------------------------------------------------ queries
    def _query(self, request: str, pattern: re.Pattern[str]) -> str:
        try:
            return self.transport.query(request, _searcher(pattern))
        except TransportError as exc:
            raise TableError(f"table did not answer {request!r}: {exc}") from exc

    def _command(self, request: str) -> None:
        reply = self._query(request, _ACK)
        if reply == "ERR BUSY":
            raise TableBusyError(f"table refused {request!r}: still moving (ERR BUSY)")
        if reply != "OK":
            raise TableError(f"table refused {request!r}: {reply}")

    def identify(self) -> str:
        """The ``*IDN?`` string."""
        return self._query("*IDN?", _IDN)

    def position(self) -> TablePosition:
        """Present position (``POS?``)."""
        m = _POS.fullmatch(self._query("POS?", _POS))
        assert m is not None
        return TablePosition(float(m.group(1)), float(m.group(2)), int(m.group(3)), m.group(4))

    def busy(self) -> bool:
        """True while the table moves (``BUSY?``)."""
        m = _BUSY.fullmatch(self._query("BUSY?", _BUSY))
        assert m is not None
        return m.group(1) == "1"

    # ------------------------------------------------------------------ motion
    def wait_idle(self, timeout: float | None = None) -> TablePosition:
        """Poll until the table rests (at most ``timeout`` s, default ``move_timeout_s``); returns the
        position. TableTimeoutError if it is still moving (the table is not stopped automatically)."""
        limit = self.move_timeout_s if timeout is None else timeout
        deadline = self._clock() + limit
        while self.busy():
            if self._clock() >= deadline:
                raise TableTimeoutError(f"table still moving after {limit:g} s (position {self.position()})")
            self._sleep(self.poll_s)
        return self.position()

    def move_to_cell(self, cell: str, *, wait: bool = True, timeout: float | None = None) -> TablePosition:
        """Put the centre of HCAL cell ``x-y-m`` (e.g. ``"2-1-3"``) or of ECAL cell ``ECAL-x-y`` into the
        beam; with ``wait``, wait and verify the final position (TablePositionError on a mismatch)."""
        if isinstance(cell, str) and cell.startswith("ECAL"):
            return self.move_to_ecal_cell(cell, wait=wait, timeout=timeout)
        try:
            x, y, module = chmap.parse_hcal_cell(cell)
        except ValueError as exc:
            raise TableLimitError(str(exc)) from None
        name = chmap.hcal_cell_name(x, y, module)
        self._command(f"MOVE CELL {name}")
        if not wait:
            return self.position()
        cx, cy = cell_centre_mm(x, y)
        return self._verify(self.wait_idle(timeout), cx, cy, module, name)

    def move_to_ecal_cell(self, cell: str, *, wait: bool = True, timeout: float | None = None) -> TablePosition:
        """Put the centre of ECAL cell ``ECAL-x-y`` into the beam (``MOVE ECAL x-y``); with ``wait``, wait
        and verify the final position."""
        try:
            x, y = chmap.parse_ecal_cell(cell)
        except ValueError as exc:
            raise TableLimitError(str(exc)) from None
        name = chmap.ecal_cell_name(x, y)
        self._command(f"MOVE ECAL {x}-{y}")
        if not wait:
            return self.position()
        cx, cy = ecal_cell_centre_mm(x, y)
        return self._verify(self.wait_idle(timeout), round(cx, 1), round(cy, 1), -1, name)

    def move_to(
        self, x_mm: float, y_mm: float, module: int, *, wait: bool = True, timeout: float | None = None
    ) -> TablePosition:
        """Move the beam impact point to (``x_mm``, ``y_mm``) mm on ``module`` (0..3); refuses (nothing
        sent) outside the +/-450 mm travel. With ``wait``, wait and verify the final position."""
        for name, v in (("x", x_mm), ("y", y_mm)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and abs(v) <= TRAVEL_MM):
                raise TableLimitError(f"{name} = {v!r} mm is outside the table travel +/-{TRAVEL_MM:g} mm")
        if not (isinstance(module, int) and 0 <= module < chmap.N_HCAL_MODULES):
            raise TableLimitError(f"module {module!r} does not exist (0..{chmap.N_HCAL_MODULES - 1})")
        self._command(f"MOVE POS {x_mm:.1f} {y_mm:.1f} {module:d}")
        if not wait:
            return self.position()
        return self._verify(self.wait_idle(timeout), round(x_mm, 1), round(y_mm, 1), module, None)

    def home(self, *, wait: bool = True, timeout: float | None = None) -> TablePosition:
        """Return to the physics position (beam on the ECAL centre, module -1) and verify it."""
        self._command("HOME")
        if not wait:
            return self.position()
        return self._verify(self.wait_idle(timeout), 0.0, 0.0, -1, PHYSICS)

    def stop(self) -> TablePosition:
        """Stop a motion where it is; returns the position."""
        self._command("STOP")
        return self.position()

    def _verify(self, pos: TablePosition, x: float, y: float, module: int, cell: str | None) -> TablePosition:
        ok = (
            abs(pos.x_mm - x) <= self.tolerance_mm
            and abs(pos.y_mm - y) <= self.tolerance_mm
            and pos.module == module
            and (cell is None or pos.cell == cell)
        )
        if not ok:
            want = f"({x:.1f}, {y:.1f}) mm module {module}" + (f" cell {cell}" if cell else "")
            raise TablePositionError(
                f"table rests at ({pos.x_mm:.1f}, {pos.y_mm:.1f}) mm module {pos.module} cell {pos.cell}, not at {want}"
            )
        return pos
