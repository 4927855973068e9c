"""What ``na64-daq`` writes about a run: the run record's thresholds and calibration summary, and per spill
the spill-file content and the run-record entry built from a readout outcome (:func:`build_spill`). The
recorder (:mod:`online.recorder`) writes them; the layout is :mod:`detector.spillfile`'s."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.config import Calibration
from detector.records import INCOMPLETE_SPILL_FLAGS
from detector.spillfile import SpillContent

from .readout import SpillOutcome

if TYPE_CHECKING:
    from trigger.menu import TriggerMenu


def run_thresholds(menu: TriggerMenu) -> dict[str, Any]:
    """The trigger thresholds of the run record (ADC counts, MIP, ns, GeV, prescales, Hz)."""
    m = menu
    return {
        "counter_threshold_adc": m.counter_threshold_adc,
        "counter_threshold_mip": m.counter_threshold_mip,
        "window_ns": m.window_ns,
        "zs_threshold_adc": m.zs_threshold_adc,
        "physics": {
            "ps_min_gev": m.physics.ps_min_gev,
            "ecal_max_gev": m.physics.ecal_max_gev,
            "prescale": m.physics.prescale,
        },
        "dimuon": {
            "ps_min_gev": m.dimuon.ps_min_gev,
            "ecal_max_gev": m.dimuon.ecal_max_gev,
            "prescale": m.dimuon.prescale,
        },
        "beam": {"prescale": m.beam.prescale},
        "random": {"rate_hz": m.random.rate_hz},
    }


def calibration_summary(calibration: Calibration) -> dict[str, Any]:
    """The calibration of the run record: source, GeV per ADC count, HV set points (V), t0 (ns)."""
    c = calibration
    return {
        "source": c.source,
        "gev_per_count": np.asarray(c.gev_per_count).tolist(),
        "hv_set": np.asarray(c.hv_set).tolist(),
        "t0_ns": np.asarray(c.t0_ns).tolist(),
    }


def build_spill(
    run: int,
    spill: int,
    out: SpillOutcome,
    flags: list[str],
    incidents: list[str],
    note: str,
    *,
    trigger_menu: dict[str, Any],
    hv: dict[str, Any] | None,
    crate_errors: Iterable[tuple[int, str]],
    calibration_mode: bool,
) -> tuple[SpillContent, dict[str, Any]]:
    """The spill file's content and the run record's entry of DAQ spill ``spill`` of run ``run``: the events
    read out (``out.events``) with their accepted ids, trigger masks and arrival times, and the spill's
    accounting. ``hv``: the latest HV read-back; ``crate_errors``: the crate's error queue since the last
    spill (the last 10 are kept)."""
    n = int(out.events.shape[0])
    acc = out.accepted[:n]
    times = out.times[acc] if out.times.size and n else np.zeros(n, np.float64)
    info = out.info
    table = info.get("table", {}) if isinstance(info.get("table"), dict) else {}
    truth = out.truth[:n] if out.truth is not None and out.truth.shape[0] >= n else None
    mm = out.mm if out.mm is not None and out.mm.n_events == n else None
    extra = {
        "timing": out.timing,
        "errors": out.errors,
        "incidents": incidents,
        "note": note,
        "crate_errors": [list(e) for e in crate_errors][-10:],
        "calibration_mode": calibration_mode,
    }
    attrs = {
        "crate_spill": int(out.crate_spill),
        "start_unix": float(info.get("start_unix", 0.0)),
        "length_s": float(info.get("length_s", 0.0)),
        "eot": int(out.eot),
        "scalers": out.scalers,
        "triggers": out.triggers,
        "trigger_menu": trigger_menu,
        "hv": hv or {},
        "table": table,
        "extra": extra,
        "n_led": 0 if out.led is None else out.led.n,
    }
    content = SpillContent(
        run,
        spill,
        acc.astype(np.uint32),
        out.mask[:n].astype(np.uint8),
        np.ascontiguousarray(times, np.float64),
        out.events,
        truth,
        attrs,
        mm,
        out.led,
    )
    entry = {
        "crate_spill": int(out.crate_spill),
        "start_unix": attrs["start_unix"],
        "length_s": attrs["length_s"],
        "n_particles": int(out.n_particles),
        "n_seen": int(out.n_seen),
        "n_accepted": out.n_accepted,
        "n_read_out": int(out.n_read_out),
        "eot": int(out.eot),
        "flags": flags,
        "scalers": out.scalers,
        "triggers": out.triggers,
        "table": table,
        "hv": hv,
        "errors": out.errors,
        "incidents": incidents,
        "truth": truth is not None,
        "mm": mm is not None,
        "n_led": attrs["n_led"],
        "note": note,
    }
    if out.max_events is not None:
        entry["max_events"] = out.max_events
    return content, entry


def spill_flags(flags: list[str], incidents: list[str], readout_flags: list[str]) -> list[str]:
    """The flags a spill is recorded with: the run control's (``flags``), the driver's incidents
    (``reconnected``, ``retried``) and the readout's, without repeats; ``retried`` only when the retry
    succeeded (no flag of ``INCOMPLETE_SPILL_FLAGS``)."""
    flags = list(flags)
    if "reconnected" in incidents:
        flags.append("reconnected")
    if "retried" in incidents:
        flags.append("retried")
    flags += readout_flags
    if set(flags) & INCOMPLETE_SPILL_FLAGS:  # "retried" means: retried and succeeded
        flags = [f for f in flags if f != "retried"]
    return list(dict.fromkeys(flags))
