"""Offline LED gain correction per spill (issue 19 point 4; docs/physics.md 7.2).

For a spill with LED events and a run reference (:func:`run_reference`: the first ``led.reference_spills``
spills of the run with LED events, :class:`detector.led.LedReference`), the factor of ECAL cell ``c`` is
``reference[c] / LED mean of that spill[c]`` (:func:`detector.led.correction_factor`); it multiplies the
reconstructed energies of that cell in every event of the spill (:func:`correct`), before any event
quantity is computed, so E_ECAL, the PS energy and the shower shape all use the corrected cells. A spill
without LED events, or a run without a reference, is left as it is (and reported so). On by default
(``offline.led_correction``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from detector import channels as ch
from detector.config import Calibration, Config
from detector.led import LedEvents, LedReference, cell_means, correction_factor
from detector.reco import RecoResult
from detector.spillfile import SpillData, SpillFileError, list_spills, read_led

from . import events as ev
from .events import Table

#: the cells the correction applies to: the ECAL (PS and main)
ECAL_CELLS = slice(ch.ECAL_FIRST, ch.ECAL_FIRST + ch.N_ECAL)


def reference_of(paths: list[os.PathLike[str] | str], spills: int) -> LedReference:
    """The LED reference made of the first ``spills`` of ``paths`` (spill files in spill order) that have
    LED events; unreadable files are passed over."""
    ref = LedReference(spills)
    for p in paths:
        try:
            led = read_led(p)
        except SpillFileError:
            continue
        if led is not None and led.n and ref.add(len(ref.used), cell_means(led.waveforms)[0]):
            break
    return ref


@functools.lru_cache(maxsize=64)
def run_reference(run_dir: str, spills: int) -> np.ndarray | None:
    """The LED reference (N_CALO,) ADC counts of run directory ``run_dir`` (None: fewer than ``spills``
    spills with LED events). Cached per process: each Dask worker reads the first spills once."""
    try:
        paths = list_spills(run_dir)
    except SpillFileError:
        return None
    ref = reference_of(list(paths), spills)
    return None if ref.reference is None else ref.reference.copy()


def correct(reco: RecoResult, led: LedEvents | None, reference: np.ndarray | None) -> dict[str, Any]:
    """Scale the ECAL cells' ``reco.energy_gev`` in place by the spill's LED factors; returns what was done:
    ``corrected`` (bool), ``reason`` when not, else ``factor_min``/``factor_max`` and the cell of the largest
    change (``cell``, ``change_pct``)."""
    if reference is None:
        return {"corrected": False, "reason": "no LED reference for the run"}
    if led is None or led.n == 0:
        return {"corrected": False, "reason": "no LED events in the spill"}
    means, _ = cell_means(led.waveforms)
    f = correction_factor(means, reference)[ECAL_CELLS]
    reco.energy_gev[:, ECAL_CELLS] *= f.astype(np.float32)[None, :]
    worst = int(np.argmax(np.abs(f - 1.0)))
    return {
        "corrected": True,
        "factor_min": float(f.min()),
        "factor_max": float(f.max()),
        "cell": ch.CHANNELS[ch.ECAL_FIRST + worst].name,
        "change_pct": float(100.0 * (f[worst] - 1.0)),
    }


def corrected_event_table(data: SpillData, calib: Calibration, cfg: Config) -> tuple[Table, dict[str, Any]]:
    """The event table of one spill file (:func:`offline.events.event_table`) with the LED correction of its
    ECAL cells when ``offline.led_correction`` is on; and the correction's report (:func:`correct`; the
    run reference is that of the file's run directory)."""
    if not cfg.offline.led_correction:
        return ev.event_table(data, calib, cfg), {"corrected": False, "reason": "offline.led_correction is off"}
    reco = ev.reconstruct_events(data.waveforms, calib, cfg)
    info = correct(reco, data.led, run_reference(str(data.path.parent), cfg.led.reference_spills))
    return ev.event_table(data, calib, cfg, reco=reco), info


def led_summary(per_spill: list[dict[str, Any]]) -> dict[str, Any]:
    """The run report's ``led_correction``: spills corrected and not (with the reasons), the largest
    correction, and every spill's entry."""
    done = [s for s in per_spill if s.get("corrected")]
    reasons: dict[str, int] = {}
    for s in per_spill:
        if not s.get("corrected"):
            reasons[str(s.get("reason", "?"))] = reasons.get(str(s.get("reason", "?")), 0) + 1
    largest = max(done, key=lambda s: abs(s["change_pct"]), default=None)
    return {"spills_corrected": len(done), "spills_not_corrected": reasons, "largest": largest, "spills": per_spill}
