"""Emulated calorimeter table (docs/protocols.md section 3): an x-y stage that moves linearly in time.

As in NA64, the ECAL and the HCAL sit on one movable platform. ``MOVE CELL x-y-m`` brings the centre of
HCAL cell x-y of module m into the calibration beam, at ``((x-1)*194, (y-1)*194)`` mm in the module plane
(the platform moved sideways so that the beam reaches the module directly); ``MOVE ECAL x-y`` shifts the
platform so that the beam axis hits the centre of ECAL cell (x, y), at ``((x-3)*38.2, (y-3)*38.2)`` mm in
the ECAL plane (module -1, cell label ``ECAL-x-y``; the HCAL behind moves along); ``HOME`` returns to the
physics position (beam on the ECAL centre, which is the centre of ECAL cell (3, 3), module -1).
Motion is a straight line at a constant speed (mm/s) computed from the elapsed time since the move was
accepted; while moving the table is busy and refuses another MOVE with ``ERR BUSY``. During a move,
``POS?`` reports the module the move goes to and cell ``NONE``; the cell name is reported only once the
table rests on a cell centre.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from detector import channels as chmap
from detector.settings import Config, EmulatorSection

from .geometry import ECAL_CENTRAL_CELL
from .geometry import ECAL_PITCH_MM as ECAL_CELL_PITCH_MM

log = logging.getLogger(__name__)

CELL_PITCH_MM = 194.0  #: HCAL cell pitch, mm
ECAL_PITCH_MM = ECAL_CELL_PITCH_MM  #: ECAL cell pitch, mm
TRAVEL_MM = 450.0  #: travel limit of each axis, +/- mm
PHYSICS = "PHYSICS"
NONE = "NONE"
_ON_CELL_MM = 0.05  #: a rest position this close to a cell centre is reported as that cell
_NUM = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_MOVE_POS = re.compile(rf"^MOVE POS ({_NUM}) ({_NUM}) ([+-]?[0-9]{{1,2}})$")


def cell_centre_mm(x: int, y: int) -> tuple[float, float]:
    """Beam impact point (mm) that centres HCAL cell column ``x``, row ``y`` (0..2) in the beam."""
    return (x - 1) * CELL_PITCH_MM, (y - 1) * CELL_PITCH_MM


def ecal_cell_centre_mm(x: int, y: int) -> tuple[float, float]:
    """Beam impact point (mm, ECAL plane) that centres ECAL cell column ``x``, row ``y`` (0..5) in the beam."""
    return (x - ECAL_CENTRAL_CELL[0]) * ECAL_PITCH_MM, (y - ECAL_CENTRAL_CELL[1]) * ECAL_PITCH_MM


class HCALTable:
    """Time-dynamic model of the HCAL table, served line by line by :meth:`handle`.

    ``speed_mm_per_s`` defaults to ``cfg.emulator.table_speed_mm_per_s`` (that key's default without a
    config). ``clock`` is the model time source in s. ``on_move(module, cell)`` is called for every
    accepted move with its target (the emulator sets the beam intensity with it). Thread-safe (one lock).
    The table starts at rest in the physics position.
    """

    OVERLONG_REPLY = "ERR LINE TOO LONG"

    def __init__(
        self,
        cfg: Config | None = None,
        *,
        speed_mm_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        serial: str = "EMU-TABLE-0001",
        on_move: Callable[[int, str], None] | None = None,
    ) -> None:
        if speed_mm_per_s is None:
            speed_mm_per_s = (cfg.emulator if cfg is not None else EmulatorSection()).table_speed_mm_per_s
        if not (isinstance(speed_mm_per_s, (int, float)) and math.isfinite(speed_mm_per_s) and speed_mm_per_s > 0):
            raise ValueError(f"table speed must be a positive number of mm/s, got {speed_mm_per_s!r}")
        self.speed = float(speed_mm_per_s)
        self._clock = clock
        self._serial = serial
        self._lock = threading.RLock()
        now = clock()
        # current motion: from (x0, y0) at t0 to (x1, y1); module and cell label valid at arrival
        self._x0 = self._y0 = self._x1 = self._y1 = 0.0
        self._t0 = now
        self._module = -1
        self._cell = PHYSICS
        self.moves: list[dict[str, Any]] = []  #: accepted moves: time, x_mm, y_mm, module
        self.on_move = on_move  #: called with the target module and cell label of every accepted move

    # ------------------------------------------------------------------ kinematics
    def _where(self, now: float) -> tuple[float, float, bool]:
        """(x_mm, y_mm, busy) at model time ``now``."""
        dx, dy = self._x1 - self._x0, self._y1 - self._y0
        dist = math.hypot(dx, dy)
        travelled = self.speed * max(0.0, now - self._t0)
        if travelled >= dist:
            return self._x1, self._y1, False
        f = travelled / dist
        return self._x0 + f * dx, self._y0 + f * dy, True

    def _start(self, x: float, y: float, module: int, cell: str, now: float) -> None:
        cx, cy, _ = self._where(now)
        self._x0, self._y0, self._t0 = cx, cy, now
        self._x1, self._y1 = x, y
        self._module, self._cell = module, cell
        self.moves.append({"time": time.time(), "x_mm": x, "y_mm": y, "module": module})
        if self.on_move is not None:
            self.on_move(module, cell)

    def position(self) -> dict[str, Any]:
        """Where the beam hits: ``x_mm``, ``y_mm`` (mm), ``module`` (-1 = physics position), ``cell``
        (``x-y-m``, ``PHYSICS`` or ``NONE``) and ``busy`` (bool)."""
        with self._lock:
            x, y, busy = self._where(self._clock())
            return {"x_mm": x, "y_mm": y, "module": self._module, "cell": NONE if busy else self._cell, "busy": busy}

    # ------------------------------------------------------------------ protocol
    def handle(self, line: str) -> str:
        """Answer one request line (without CR LF) with one reply line. Never raises."""
        try:
            with self._lock:
                return self._handle(" ".join(line.strip().split()))
        except Exception:  # a model bug must not kill the serial server
            log.exception("table emulator failed on request %r", line)
            return "ERR INTERNAL"

    def _handle(self, req: str) -> str:
        now = self._clock()
        upper = req.upper()
        if upper == "*IDN?":
            return f"NA64-HIL,HCAL-TABLE,{self._serial},0.1"
        if upper == "POS?":
            p = self.position()
            return f"POS {p['x_mm']:.1f} {p['y_mm']:.1f} {p['module']} {p['cell']}"
        if upper == "BUSY?":
            return f"BUSY {int(self._where(now)[2])}"
        if upper == "HOME":
            self._start(0.0, 0.0, -1, PHYSICS, now)
            return "OK"
        if upper == "STOP":
            x, y, busy = self._where(now)
            if busy:
                self._x0, self._y0, self._x1, self._y1, self._t0 = x, y, x, y, now
                self._cell = self._label(x, y, self._module)
            return "OK"
        if upper.startswith("MOVE "):
            return self._move(upper, now)
        return "ERR UNKNOWN COMMAND"

    def _move(self, upper: str, now: float) -> str:
        if self._where(now)[2]:
            return "ERR BUSY"
        if upper.startswith("MOVE ECAL "):
            name = "ECAL-" + upper[len("MOVE ECAL ") :]
            try:
                ex, ey = chmap.parse_ecal_cell(name)
            except ValueError:
                shown = "".join(c if " " <= c <= "~" else "?" for c in name[5:37])
                return f"ERR BAD CELL {shown}"
            cx, cy = ecal_cell_centre_mm(ex, ey)
            self._start(cx, cy, -1, chmap.ecal_cell_name(ex, ey), now)
            return "OK"
        if upper.startswith("MOVE CELL "):
            name = upper[len("MOVE CELL ") :]
            try:
                x, y, module = chmap.parse_hcal_cell(name)
            except ValueError:
                shown = "".join(c if " " <= c <= "~" else "?" for c in name[:32])
                return f"ERR BAD CELL {shown}"
            cx, cy = cell_centre_mm(x, y)
            self._start(cx, cy, module, chmap.hcal_cell_name(x, y, module), now)
            return "OK"
        m = _MOVE_POS.match(upper)
        if not m:
            return "ERR BAD MOVE"
        xf, yf, module = float(m.group(1)), float(m.group(2)), int(m.group(3))
        if not (abs(xf) <= TRAVEL_MM and abs(yf) <= TRAVEL_MM):
            return f"ERR OUT OF TRAVEL (+/-{TRAVEL_MM:.0f} MM)"
        if not 0 <= module < chmap.N_HCAL_MODULES:
            return f"ERR BAD MODULE {module}"
        self._start(xf, yf, module, self._label(xf, yf, module), now)
        return "OK"

    @staticmethod
    def _label(x: float, y: float, module: int) -> str:
        """Cell name if (x, y) is a cell centre of ``module``, else ``NONE`` (``PHYSICS`` for module -1)."""
        if module < 0:
            return PHYSICS if abs(x) < _ON_CELL_MM and abs(y) < _ON_CELL_MM else NONE
        for cx in range(chmap.N_HCAL_X):
            for cy in range(chmap.N_HCAL_Y):
                px, py = cell_centre_mm(cx, cy)
                if abs(x - px) < _ON_CELL_MM and abs(y - py) < _ON_CELL_MM:
                    return chmap.hcal_cell_name(cx, cy, module)
        return NONE
