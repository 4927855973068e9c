"""Sample gates: the samples of a readout record around a channel's nominal pulse peak.

A gate of full width ``width_ns`` around a channel whose nominal onset in the record is ``t0_ns`` (the
calibration's ``t0_ns``: the record is opened that long before the particle that triggered it) holds the
samples ``j`` with ``|j * SAMPLE_NS - (t0_ns + PEAK_DELAY_NS)| <= width_ns / 2``, clipped to the record
(samples 0 .. N_SAMPLES - 1). The reconstruction searches a gated channel's peak (and saturation) among
those samples only (:func:`detector.reco.reconstruct` with ``gate``): the pulse in time with the trigger,
not a larger one of another beam particle elsewhere in the record. Users: the trigger's counter and energy
gates (``trigger.menu.TriggerMenu.gate_samples``) and the event reconstruction's gate of every channel
(:func:`in_time_gate`), which the offline event table and the online monitoring (its histograms and the
calibration amplitudes hv-tune equalises on) share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import channels as ch
from .channels import N_SAMPLES, SAMPLE_NS
from .pulse import PEAK_DELAY_NS

if TYPE_CHECKING:
    from .config import Calibration
    from .settings import Config

#: the fast channels taken in time with the trigger: the SRD sections, V2 and the counters S0..S4, V0, V1,
#: each in the counter gate (``trigger.counter_gate_ns``) around its own nominal peak
IN_TIME_CHANNELS: tuple[str, ...] = (*ch.SRD_NAMES, "V2", *ch.COUNTER_NAMES, "V0", "V1")
#: the channel kinds (:data:`detector.channels.KINDS`) reconstructed in their pile-up range
#: (``offline.pileup_range_ns`` around their nominal peak: the shaper pulse's length)
CALO_KINDS: tuple[str, ...] = ("ecal", "hcal")


def peak_gate(t0_ns: np.ndarray | float, width_ns: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) sample index (inclusive; int64 arrays of the broadcast shape of the arguments) of the
    gate of full width ``width_ns`` (ns) around the nominal peak ``t0_ns + PEAK_DELAY_NS`` (ns in the
    record) of each channel, clipped to the record. ``first > last`` when the gate lies outside the record."""
    peak = np.asarray(t0_ns, dtype=np.float64) + PEAK_DELAY_NS
    half = 0.5 * np.asarray(width_ns, dtype=np.float64)
    first = np.maximum(0, np.ceil((peak - half) / SAMPLE_NS)).astype(np.int64)
    last = np.minimum(N_SAMPLES - 1, np.floor((peak + half) / SAMPLE_NS)).astype(np.int64)
    return first, last


def in_time_gate(calib: Calibration, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) sample (inclusive, int64 (121,)) of each channel's peak and pile-up search in the event
    reconstruction, around its nominal peak (calibration ``t0_ns`` + the template's peak delay:
    :func:`peak_gate`): the :data:`IN_TIME_CHANNELS` in a gate of full width ``trigger.counter_gate_ns``, the
    calorimeter cells (:data:`CALO_KINDS`) within +/- ``offline.pileup_range_ns``, every other channel (the
    analogue sums) over the whole record. A later beam particle in the record is its own event: its pulse
    neither replaces the event's own in these channels nor (beyond the pulse length) flags a cell."""
    first = np.zeros(ch.N_CHANNELS, dtype=np.int64)
    last = np.full(ch.N_CHANNELS, ch.N_SAMPLES - 1, dtype=np.int64)
    t0_all = np.asarray(calib.t0_ns, dtype=np.float64)
    ids = np.array([ch.by_name(name).id for name in IN_TIME_CHANNELS])
    first[ids], last[ids] = peak_gate(t0_all[ids], float(cfg.trigger.counter_gate_ns))
    calo = np.concatenate([ch.ids_of_kind(kind) for kind in CALO_KINDS])
    first[calo], last[calo] = peak_gate(t0_all[calo], 2.0 * float(cfg.offline.pileup_range_ns))
    return first, last
