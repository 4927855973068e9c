"""What the emulated crate holds of one completed spill (:class:`SpillRecord`) and the per-spill truth
counts it reports (:func:`truth_summary`): the data of docs/protocols.md section 1, without the
command semantics (:mod:`sim_frontend.emu_msadc`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.led import LedEvents
from detector.records import PARTICLE_NAMES, TRUTH_APRIME, TRUTH_CALIBRATION, TRUTH_DIMUON, TRUTH_HADRONIC, TRUTH_PILEUP


@dataclass
class SpillRecord:
    """One completed spill as the crate holds it.

    ``spill`` is the beam spill (``.spill``, ``.start_unix``, ``.length_s``, ``.seed``, ``.truth`` of
    TRUTH_DTYPE sorted by time), ``deposits`` what the response model made of it, ``primitives`` the
    digitised trigger waveforms (N, 6, 32) int16 and ``times`` their arrival times (N,) ns since the
    spill start. ``table`` and ``vmon`` are the HCAL table position and the HV VMON (V, by channel id)
    at spill time; ``scalers`` the hardware counters; ``accepted`` the uploaded accepted list; ``led`` the
    LED pulses fired in the gap after the flat top (None: no LED pulser).

    Digitised on demand (the emulator's ``--digitise-on-demand``): ``primitives`` and ``times`` are None
    and ``digitise()`` makes them (the same numbers: they depend only on the spill, its deposits and its HV
    snapshot) the first time a reader asks for them (:meth:`trigger_primitives`); a spill nobody reads is
    never digitised. Everything else (deposits, scalers, ``SPIL:INFO?``) is the same either way."""

    spill: Any
    deposits: Any
    primitives: np.ndarray | None
    times: np.ndarray | None
    table: dict[str, Any]
    vmon: np.ndarray
    scalers: dict[str, int]
    complete_unix: float = field(default_factory=time.time)
    accepted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint32))
    led: LedEvents | None = None
    digitise: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False, compare=False)
    _digitising: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def trigger_primitives(self) -> tuple[np.ndarray, np.ndarray]:
        """``(primitives, times)``, digitised now if the spill was kept undigitised."""
        with self._digitising:
            if self.primitives is None or self.times is None:
                assert self.digitise is not None, "a spill record without primitives and without a digitiser"
                prim, times = self.digitise()
                self.primitives = np.ascontiguousarray(prim, dtype="<i2")
                self.times = np.ascontiguousarray(times, dtype="<f8")
            return self.primitives, self.times

    @property
    def n_led(self) -> int:
        return 0 if self.led is None else self.led.n

    @property
    def spill_id(self) -> int:
        return int(self.spill.spill)

    @property
    def particles(self) -> int:
        if self.primitives is None:
            return int(self.spill.truth.shape[0])
        return int(self.primitives.shape[0])

    def info(self) -> dict[str, Any]:
        """The JSON object of ``SPIL:INFO?``."""
        t = self.table or {}
        return {
            "spill": self.spill_id,
            "particles": self.particles,
            "start_unix": float(self.spill.start_unix),
            "length_s": float(self.spill.length_s),
            "complete_unix": float(self.complete_unix),
            "seed": int(getattr(self.spill, "seed", 0)),
            "table": {
                "x_mm": float(t.get("x_mm", 0.0)),
                "y_mm": float(t.get("y_mm", 0.0)),
                "module": int(t.get("module", -1)),
                "cell": str(t.get("cell", "PHYSICS")),
            },
            "scalers": {k: int(v) for k, v in self.scalers.items()},
            "accepted": int(self.accepted.size),
            "led": self.n_led,
        }


def truth_summary(spill_id: int, truth: np.ndarray, accepted: int | None = None) -> dict[str, Any]:
    """Per-spill truth counts (the JSON of ``SPIL:TRUT?`` and of the control ``truth`` request)."""
    truth = np.asarray(truth)
    out: dict[str, Any] = {"spill": int(spill_id), "particles": int(truth.size)}
    if truth.dtype.names and "ptype" in truth.dtype.names:
        codes, counts = np.unique(truth["ptype"], return_counts=True)
        out["by_type"] = {PARTICLE_NAMES.get(int(c), f"type{int(c)}"): int(n) for c, n in zip(codes, counts)}
        flags = truth["flags"]
        for name, bit in (
            ("aprime", TRUTH_APRIME),
            ("dimuon", TRUTH_DIMUON),
            ("pileup", TRUTH_PILEUP),
            ("hadronic", TRUTH_HADRONIC),
            ("calibration", TRUTH_CALIBRATION),
        ):
            out[name] = int(np.count_nonzero(flags & bit))
        if "e_invisible" in truth.dtype.names:
            out["e_invisible_gev"] = float(truth["e_invisible"].sum(dtype=np.float64))
    else:
        out["by_type"] = {}
    if accepted is not None:
        out["accepted"] = int(accepted)
    return out
