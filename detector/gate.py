"""Sample gates: the samples of a readout record around a channel's nominal pulse peak.

A gate of full width ``width_ns`` around a channel whose nominal onset in the record is ``t0_ns`` (the
calibration's ``t0_ns``: the record is opened that long before the particle that triggered it) holds the
samples ``j`` with ``|j * SAMPLE_NS - (t0_ns + PEAK_DELAY_NS)| <= width_ns / 2``, clipped to the record
(samples 0 .. N_SAMPLES - 1). The reconstruction searches a gated channel's peak (and saturation) among
those samples only (:func:`detector.reco.reconstruct` with ``gate``): the pulse in time with the trigger,
not a larger one of another beam particle elsewhere in the record. Users: the trigger's counter and energy
gates (``trigger.menu.TriggerMenu.gate_samples``) and the offline in-time channels (``offline.events``).
"""

from __future__ import annotations

import numpy as np

from .channels import N_SAMPLES, SAMPLE_NS
from .pulse import PEAK_DELAY_NS


def peak_gate(t0_ns: np.ndarray | float, width_ns: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) sample index (inclusive; int64 arrays of the broadcast shape of the arguments) of the
    gate of full width ``width_ns`` (ns) around the nominal peak ``t0_ns + PEAK_DELAY_NS`` (ns in the
    record) of each channel, clipped to the record. ``first > last`` when the gate lies outside the record."""
    peak = np.asarray(t0_ns, dtype=np.float64) + PEAK_DELAY_NS
    half = 0.5 * np.asarray(width_ns, dtype=np.float64)
    first = np.maximum(0, np.ceil((peak - half) / SAMPLE_NS)).astype(np.int64)
    last = np.minimum(N_SAMPLES - 1, np.floor((peak + half) / SAMPLE_NS)).astype(np.int64)
    return first, last
