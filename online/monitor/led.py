"""LED gain monitoring in the control-room monitor: the LED amplitude of every calorimeter cell against time
(one point per spill, from the ``led`` topic), the run's reference (:class:`detector.led.LedReference`: its
first ``led.reference_spills`` spills with LED events) and the alarm: a cell whose LED amplitude in the
latest spill deviates from its reference by more than ``monitor.led_alarm_pct`` per cent. Pure state, no Qt.
"""

from __future__ import annotations

import numpy as np

from detector import channels as ch
from detector.led import LedReference, deviation_pct


class LedMonitor:
    """Per-spill LED amplitudes of the calorimeter cells. ``alarm_pct``: allowed deviation from the reference
    (per cent); ``reference_spills``: spills that make the reference; ``history``: spills kept."""

    def __init__(self, alarm_pct: float, reference_spills: int, history: int) -> None:
        self.alarm_pct = float(alarm_pct)
        self.reference = LedReference(reference_spills)
        self.history = int(history)
        self.spills: list[int] = []
        self.unix: list[float] = []
        self._amp: list[np.ndarray] = []
        self.deviation = np.full(ch.N_CALO, np.nan)  #: per cent, latest spill against the reference

    def add(self, spill: int, unix: float, amplitude: np.ndarray) -> None:
        """One spill's LED cell means (N_CALO,) ADC counts, at ``unix`` (s)."""
        a = np.asarray(amplitude, np.float64)
        if a.shape != (ch.N_CALO,):
            raise ValueError(f"LED amplitudes have shape {a.shape}, expected ({ch.N_CALO},)")
        self.spills.append(int(spill))
        self.unix.append(float(unix))
        self._amp.append(a.copy())
        if len(self.spills) > self.history:
            del self.spills[0], self.unix[0], self._amp[0]
        if not self.reference.complete:
            self.reference.add(spill, a)
        ref = self.reference.reference
        self.deviation = deviation_pct(a, ref) if ref is not None else np.full(ch.N_CALO, np.nan)

    def amplitudes(self) -> np.ndarray:
        """(spills, N_CALO) ADC counts of the kept spills, oldest first."""
        return np.array(self._amp) if self._amp else np.zeros((0, ch.N_CALO))

    def relative(self) -> np.ndarray:
        """(spills, N_CALO): amplitude / reference (NaN before the reference is complete)."""
        ref = self.reference.reference
        a = self.amplitudes()
        if ref is None:
            return np.full(a.shape, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return a / np.where(ref > 0, ref, np.nan)

    def alarming(self) -> np.ndarray:
        """Channel ids whose latest LED amplitude is beyond ``alarm_pct`` from the reference."""
        return np.flatnonzero(np.abs(np.nan_to_num(self.deviation, nan=0.0)) > self.alarm_pct)

    def alarm(self) -> tuple[bool | None, str]:
        """(alarm?, text) of the LED alarm: None before any LED data, True when a cell is beyond the limit."""
        if not self.spills:
            return None, "no LED data"
        if not self.reference.complete:
            return False, f"building the reference ({len(self.reference.used)}/{self.reference.spills} spills)"
        bad = self.alarming()
        if bad.size:
            worst = ", ".join(
                f"{ch.CHANNELS[i].name} {self.deviation[i]:+.1f}%"
                for i in bad[np.argsort(-np.abs(self.deviation[bad]))][:4]
            )
            more = " ..." if bad.size > 4 else ""
            return True, f"{bad.size} cell(s) beyond {self.alarm_pct:g}% of the LED reference: {worst}{more}"
        dev = np.nanmax(np.abs(self.deviation)) if np.isfinite(self.deviation).any() else 0.0
        return False, f"all cells within {self.alarm_pct:g}% (largest {dev:.1f}%)"
