"""Compiling (or loading from numba's cache) the kernels of the DAQ's spill loop before its first spill."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from detector import channels as ch
from detector.mmblock import N_MM_SAMPLES, strip_charge_time
from detector.reco import reconstruct

if TYPE_CHECKING:
    from trigger.menu import TriggerMenu


def prepare_kernels(menu: TriggerMenu | None = None, timings: dict[str, float] | None = None) -> float:
    """Compile (or load from numba's on-disk cache) every kernel the spill loop and its monitor worker call,
    with the real dtypes on tiny arrays, so that the first spill is not spent compiling: the trigger's
    waveform entry for ``menu`` (None: the default menu; its parallel path runs the same kernels), the pulse
    reconstruction and the Micromegas strip decoding. Returns the seconds it took (a load from the cache
    takes about a second); ``timings``, when given, receives the seconds per group (``trigger``,
    ``reconstruction``: the pulse and strip kernels)."""
    from trigger.kernels import warm_up

    t = time.perf_counter()
    t_trig = warm_up(menu, amplitude=False)
    t_reco = time.perf_counter()
    reconstruct(np.zeros((1, ch.N_CHANNELS, ch.N_SAMPLES), np.int16), np.ones(ch.N_CHANNELS, np.float32), parallel=True)
    strip_charge_time(np.zeros((1, N_MM_SAMPLES), np.int16))  # the Micromegas strips of every block read out
    t_end = time.perf_counter()
    if timings is not None:
        timings.update(trigger=t_trig, reconstruction=t_end - t_reco)
    return t_end - t
