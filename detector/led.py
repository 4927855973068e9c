"""LED gain monitoring (docs/physics.md 7.2): what an LED event block is, and the ONE definition of the
per-spill LED amplitude of a cell, of a run's LED reference and of the correction factor, used by the DAQ's
monitoring message, the monitor's alarm and the offline correction alike.

- LED amplitude of a cell in a spill: the mean over the spill's LED pulses of the reconstructed
  pedestal-subtracted amplitude (ADC counts, :func:`detector.reco.reconstruct`) of that cell
  (:func:`cell_means`); pulses where the cell is saturated or below threshold are left out (NaN if none).
- Reference of a cell: the mean of its LED amplitudes over the first ``led.reference_spills`` spills of the
  run that have LED events (:class:`LedReference`).
- Deviation (per cent): ``100 * (amplitude / reference - 1)``; correction factor: ``reference / amplitude``
  (1 where either is missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import channels as ch
from .records import EventType

#: channels the LED pulser illuminates: every calorimeter cell (ECAL PS and main, HCAL); ids 0..N_CALO-1
LED_CHANNELS = np.arange(ch.N_CALO, dtype=np.int64)


@dataclass
class LedEvents:
    """The LED events of one spill: ``pulse`` (m,) uint32 pulse number in the cycle, ``time_ns`` (m,)
    float64 since the spill start (after the flat top), ``waveforms`` (m, N_CHANNELS, 32) int16."""

    pulse: np.ndarray
    time_ns: np.ndarray
    waveforms: np.ndarray
    event_type: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))

    def __post_init__(self) -> None:
        m = int(np.asarray(self.pulse).shape[0])
        if self.event_type.shape != (m,):
            self.event_type = np.full(m, EventType.LED, np.uint8)

    @property
    def n(self) -> int:
        return int(self.pulse.shape[0])

    def check(self) -> None:
        """ValueError unless the arrays agree (m pulses, int16 waveforms of every channel)."""
        m = self.n
        if self.waveforms.dtype != np.int16 or self.waveforms.shape != (m, ch.N_CHANNELS, ch.N_SAMPLES):
            raise ValueError(
                f"LED waveforms must be int16 ({m}, {ch.N_CHANNELS}, {ch.N_SAMPLES}); got "
                f"{self.waveforms.dtype} {self.waveforms.shape}"
            )
        for name in ("time_ns", "event_type"):
            if np.asarray(getattr(self, name)).shape != (m,):
                raise ValueError(f"LED {name} must have shape ({m},)")
        if m and not bool(np.all(self.event_type == EventType.LED)):
            raise ValueError("LED events must all have event type LED")


def cell_means(waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, rms) float64 (N_CALO,) ADC counts of the LED amplitude of every calorimeter cell over the
    pulses ``waveforms`` (m, N_CHANNELS, 32) int16; saturated or zero-suppressed pulses are left out (NaN
    where a cell has none)."""
    from .reco import FLAG_SATURATED, reconstruct  # numba: only where amplitudes are wanted

    wf = np.asarray(waveforms)
    if wf.shape[0] == 0:
        nan = np.full(ch.N_CALO, np.nan)
        return nan, nan.copy()
    r = reconstruct(wf, np.ones(ch.N_CHANNELS), parallel=False)
    a = r.amplitude[:, LED_CHANNELS].astype(np.float64)
    ok = (a > 0) & ((r.flags[:, LED_CHANNELS] & FLAG_SATURATED) == 0)
    n = ok.sum(axis=0)
    s = np.where(ok, a, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
        var = np.where(ok, (a - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n - 1, 1)
    return mean, np.where(n > 1, np.sqrt(var), np.nan)


def deviation_pct(amplitude: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``100 * (amplitude / reference - 1)`` per cell (NaN where either is missing or the reference is 0)."""
    a, r = np.asarray(amplitude, np.float64), np.asarray(reference, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(a) & np.isfinite(r) & (r > 0), 100.0 * (a / r - 1.0), np.nan)


def correction_factor(amplitude: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``reference / amplitude`` per cell: what a cell's energies of that spill are multiplied by (1 where
    either is missing or not positive)."""
    a, r = np.asarray(amplitude, np.float64), np.asarray(reference, np.float64)
    good = np.isfinite(a) & np.isfinite(r) & (a > 0) & (r > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(good, r / np.where(good, a, 1.0), 1.0)


class LedReference:
    """A run's LED reference, built from the first ``spills`` spills that have LED amplitudes (feed them in
    spill order with :meth:`add`); ``reference`` is None until it is complete, or set it from a stored
    calibration reference with :meth:`fixed`."""

    def __init__(self, spills: int) -> None:
        if spills < 1:
            raise ValueError(f"an LED reference needs at least one spill, got {spills}")
        self.spills = int(spills)
        self._sum = np.zeros(ch.N_CALO)
        self._n = np.zeros(ch.N_CALO, np.int64)
        self.used: list[int] = []  #: spills the reference was made of
        self.reference: np.ndarray | None = None

    @classmethod
    def fixed(cls, reference: np.ndarray) -> LedReference:
        """A reference given from outside (e.g. stored with the calibration), (N_CALO,) ADC counts."""
        r = np.asarray(reference, np.float64)
        if r.shape != (ch.N_CALO,):
            raise ValueError(f"an LED reference has {ch.N_CALO} values, got shape {r.shape}")
        out = cls(1)
        out.reference = r.copy()
        return out

    @property
    def complete(self) -> bool:
        return self.reference is not None

    def add(self, spill: int, means: np.ndarray) -> bool:
        """Take one spill's cell means into the reference while it is being built; True once complete."""
        if self.reference is not None:
            return True
        m = np.asarray(means, np.float64)
        good = np.isfinite(m)
        if not good.any():
            return False
        self._sum[good] += m[good]
        self._n[good] += 1
        self.used.append(int(spill))
        if len(self.used) >= self.spills:
            with np.errstate(invalid="ignore", divide="ignore"):
                self.reference = np.where(self._n > 0, self._sum / np.maximum(self._n, 1), np.nan)
        return self.reference is not None
