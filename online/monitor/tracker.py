"""The monitor's state of the ``tracker`` topic beyond the run sums: the beam-momentum peak of the recent
spills and its alarm (no Qt here).

Peak (:func:`momentum_peak`): the fullest bin of the momentum histogram, then the mean of the entries within
+/- :data:`PEAK_HALF_WIDTH` (relative) of it. The peak of "now" is taken over the latest spills, as many as
it takes to have :data:`MIN_PEAK_EVENTS` entries in that window (at most :data:`PEAK_SPILLS` spills), so a
spill with few tracks neither hides a move nor raises a false alarm.

Alarm (:meth:`MomentumWatch.evaluate`): ALARM when the peak is more than ``monitor.momentum_alarm_pct``
percent from the reference. The reference is the beam energy of the configuration (``beam.energy_gev``;
a monitor without configuration takes the DAQ's, the ``p0_gev`` of the messages), or, with
``monitor.momentum_reference_spills`` = N > 0, the peak of the run's first N spills (at least N, and as
many as it takes to have :data:`MIN_PEAK_EVENTS` in the peak window; then the alarm says
that the momentum moved during the run, whatever the beam line was set to).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from detector.framing import Message

MIN_PEAK_EVENTS = 100  #: entries in the peak window needed for a peak
PEAK_SPILLS = 20  #: at most this many recent spills make the current peak
PEAK_HALF_WIDTH = 0.03  #: relative half width of the window around the fullest bin


def momentum_peak(counts: np.ndarray, edges: tuple[float, float, int]) -> tuple[float, int]:
    """(peak momentum in GeV, entries in the peak window) of a momentum histogram; (NaN, 0) when empty."""
    c = np.asarray(counts, np.float64)
    lo, hi, n = edges
    if c.shape != (n,) or not c.sum() > 0:
        return math.nan, 0
    centres = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    mode = centres[int(np.argmax(c))]
    win = np.abs(centres - mode) <= max(PEAK_HALF_WIDTH * mode, (hi - lo) / n)
    w = c[win]
    return float((centres[win] * w).sum() / w.sum()), int(w.sum())


class MomentumWatch:
    """Recent spills' momentum histograms of one run, the reference and the alarm (see the module
    docstring). ``beam_energy_gev`` <= 0: the DAQ's ``p0_gev``; ``reference_spills`` > 0: the first spills'
    peak; ``alarm_pct``: the tolerance, percent."""

    def __init__(self, alarm_pct: float, beam_energy_gev: float = 0.0, reference_spills: int = 0) -> None:
        self.alarm_pct = float(alarm_pct)
        self.beam_energy_gev = float(beam_energy_gev)
        self.reference_spills = int(reference_spills)
        self.recent: deque[np.ndarray] = deque(maxlen=PEAK_SPILLS)
        self.edges: tuple[float, float, int] | None = None
        self.p0_gev = math.nan  #: the DAQ's configured beam energy (message meta)
        self.first: np.ndarray | None = None  #: sum of the run's first ``reference_spills`` spills
        self.first_spills = 0
        self.reference_gev = math.nan  #: set once known
        self.peak_gev = math.nan  #: of the recent spills
        self.peak_events = 0
        self.peak_spills = 0

    def add(self, msg: Message) -> None:
        """Take one ``tracker`` message (already checked against the contract)."""
        e = msg.meta["momentum_edges"]
        edges = (float(e[0]), float(e[1]), int(e[2]))
        counts = np.asarray(msg.arrays["momentum"], np.float64)
        if edges != self.edges or counts.shape != (edges[2],):
            self.recent.clear()
            self.first, self.first_spills, self.edges = None, 0, edges
            self.reference_gev = math.nan
        p0 = msg.meta.get("p0_gev")
        if isinstance(p0, (int, float)) and not isinstance(p0, bool):
            self.p0_gev = float(p0)
        self.recent.append(counts)
        if self.reference_spills > 0 and not math.isfinite(self.reference_gev):
            # the first spills, until there are N of them and enough entries for a peak: fixed from then on
            self.first = counts.copy() if self.first is None else self.first + counts
            self.first_spills += 1
            peak, n = momentum_peak(self.first, edges)
            if self.first_spills >= self.reference_spills and n >= MIN_PEAK_EVENTS:
                self.reference_gev = peak
        self._update()

    def _update(self) -> None:
        assert self.edges is not None
        total = np.zeros(self.edges[2])
        self.peak_gev, self.peak_events, self.peak_spills = math.nan, 0, 0
        for k, c in enumerate(reversed(self.recent), 1):
            total += c
            peak, n = momentum_peak(total, self.edges)
            self.peak_gev, self.peak_events, self.peak_spills = peak, n, k
            if n >= MIN_PEAK_EVENTS:
                break
        if self.reference_spills <= 0:
            self.reference_gev = self.beam_energy_gev if self.beam_energy_gev > 0 else self.p0_gev

    def evaluate(self) -> tuple[bool | None, str]:
        """(moved, text): moved is None while there is no peak or no reference yet."""
        if not self.recent:
            return None, "no tracker data"
        if self.peak_events < MIN_PEAK_EVENTS:
            return None, f"{self.peak_events} tracks near the peak: too few (need {MIN_PEAK_EVENTS})"
        ref = self.reference_gev
        if not ref > 0:
            return None, f"peak {self.peak_gev:.2f} GeV; reference not known yet"
        dev = 100.0 * (self.peak_gev / ref - 1.0)
        text = f"peak {self.peak_gev:.1f} GeV vs {ref:.4g} ({dev:+.1f}%)"
        if abs(dev) > self.alarm_pct:
            return True, f"MOVED: {text} > {self.alarm_pct:g}%"
        return False, text
