"""The dimuon control sample (docs/physics.md 6.4, the paper's Table I): beam electrons whose shower makes
gamma -> mu+ mu- in the ECAL, selected by a soft ECAL energy and MIP-like energy in the HCAL, in recorded runs
and in the MC, and their ratio data/MC per run.

Selection (:func:`dimuon_mask`): the physics trigger and the incoming-electron cuts of the signal selection
(SRD, momentum, angle, track multiplicity, pile-up), E_ECAL < ``ECAL_MAX_GEV`` and, in each HCAL module of
``HCAL_MODULES`` (the paper's HCAL1 and HCAL4), an energy in ``HCAL_WINDOW_GEV`` (two muons).

MC prediction (:func:`mc_dimuons`): ``n_mc`` beam electrons embedded in the beam at ``intensity`` particles
per spill (pile-up), each flagged to produce a muon pair with the unbiased probability per electron as its
weight (:func:`sim_frontend.beam.dimuon_probability`), through the same response, digitisation,
reconstruction, trigger, tracking and selection as recorded data. ``selected_per_eot`` = sum of the weights
of the selected events / n_mc, its error from the sum of the squared weights. ``pileup=False``: the electrons
alone, far apart in time (the paper's Table I compares data with MC without pile-up: the ratio data/MC
measures what pile-up and the other effects the MC leaves out cost the data).

Recorded runs (:func:`run_dimuons`): the same :func:`dimuon_mask` on the event table of every spill file
(the reconstruction and LED correction of ``na64-offline select``), the spill's EOT from its scalers;
``selected_per_eot`` = selected / EOT with the Poisson error sqrt(selected) / EOT (sqrt(1) / EOT when none).
Recorded data are never biased (the dimuons come at their physical rate). Spills the DAQ flagged incomplete
are left out with their EOT, as in ``select``. :func:`data_over_mc` divides the two.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from detector.config import Calibration, Config, load_calibration
from detector.records import INCOMPLETE_SPILL_FLAGS, TRUTH_DIMUON, TRUTH_PILEUP
from detector.runrecord import read_run_record
from detector.spillfile import SpillFileError, list_spills, read_spill
from sim_frontend.beam import dimuon_probability
from sim_frontend.response import apply_response

from . import events as ev
from . import paper2016
from . import selection as sel
from .dask_select import run_setup
from .led_correction import corrected_event_table
from .signal import mc_beam, mc_event_table, mc_track_columns

ECAL_MAX_GEV = 60.0  #: E_ECAL of a dimuon candidate below this (the paper's Table I)
HCAL_WINDOW_GEV = (1.0, 6.0)  #: MIP-like energy of two muons in one HCAL module (docs/physics.md 6.4)
HCAL_MODULES = (0, 3)  #: modules the window applies to: the paper's HCAL1 and HCAL4
INCOMING_CUTS = ("trigger", "srd", "srd_time", "momentum", "angle", "tracks", "pileup")
SEED_OFFSET = 0xD1D0  #: spill-number offset of the dimuon MC


def dimuon_mask(t: ev.Table, cuts: sel.Cuts) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Events of ``t`` selected as dimuons, and the cumulative masks of the steps (for a cut flow)."""
    s = sel.select(t, cuts)
    steps: dict[str, np.ndarray] = {}
    m = np.ones(ev.n_rows(t), dtype=bool)
    for name in INCOMING_CUTS:
        m = m & s.masks[name]
        steps[name] = m
    m = m & (np.asarray(t["e_ecal"]) < ECAL_MAX_GEV)
    steps["ecal_lt_60"] = m
    lo, hi = HCAL_WINDOW_GEV
    for mod in HCAL_MODULES:
        e = np.asarray(t[f"e_hcal{mod}"])
        m = m & (e > lo) & (e < hi)
        steps[f"hcal{mod}_mip"] = m
    return m, steps


def selection_summary() -> dict[str, Any]:
    """The selection's constants (written next to every result)."""
    return {
        "ecal_max_gev": ECAL_MAX_GEV,
        "hcal_window_gev": list(HCAL_WINDOW_GEV),
        "hcal_modules": list(HCAL_MODULES),
        "incoming_cuts": list(INCOMING_CUTS),
    }


def mc_dimuons(
    cfg: Config,
    intensity: float,
    n_mc: int,
    eot: float,
    calib: Calibration | None = None,
    seed: int = 1,
    pileup: bool = True,
) -> dict[str, Any]:
    """The MC prediction of the dimuon selection per EOT and for ``eot`` electrons on target, at ``intensity``
    particles per spill with pile-up, or without it (``pileup=False``: the intensity then changes nothing)."""
    if n_mc < 1:
        raise ValueError(f"need at least one MC event, got {n_mc}")
    if not (math.isfinite(intensity) and intensity > 0):
        raise ValueError(f"intensity must be > 0 particles per spill, got {intensity}")
    if not (math.isfinite(eot) and eot > 0):
        raise ValueError(f"EOT must be > 0, got {eot}")
    c = cfg.with_overrides({"beam": {"particles_per_spill": float(intensity)}, "aprime": {"enabled": False}})
    calib = load_calibration(c) if calib is None else calib
    spill, pick = mc_beam(c, n_mc, SEED_OFFSET + seed, pileup=pileup)
    truth = spill.truth
    p_mumu = dimuon_probability(float(c.beam.energy_gev))
    truth["flags"][pick] = (truth["flags"][pick] & np.uint8(TRUTH_PILEUP)) | TRUTH_DIMUON
    truth["weight"][pick] = p_mumu
    dep = apply_response(spill, c)
    t = mc_event_table(c, calib, spill, dep, pick)
    t.update(mc_track_columns(c, spill, pick))
    mask, steps = dimuon_mask(t, sel.Cuts.from_config(c))
    w = np.asarray(t["truth_weight"], dtype=np.float64)
    per_eot = float(w[mask].sum()) / n_mc
    err = math.sqrt(float((w[mask] ** 2).sum())) / n_mc
    return {
        "intensity": float(intensity),
        "pileup": bool(pileup),
        "mc_events": int(n_mc),
        "seed": int(seed),
        "dimuon_probability_per_eot": p_mumu,
        "selected_mc_events": int(mask.sum()),
        "selected_per_eot": per_eot,
        "selected_per_eot_err": err,
        "eot": float(eot),
        "selected": per_eot * eot,
        "selected_err": err * eot,
        "selection_efficiency": per_eot / p_mumu if p_mumu > 0 else math.nan,
        "cut_flow": {"all": int(n_mc), **{k: int(v.sum()) for k, v in steps.items()}},
        "selection": selection_summary(),
    }


# ------------------------------------------------------------------------------------------ recorded runs
def spill_dimuons(path: str | os.PathLike, cfg: Config, calib: Calibration) -> dict[str, Any]:
    """The dimuon selection on one spill file: its EOT (scalers), events, cut flow, the selected event ids
    and, when the file carries truth, how many of its events and of the selected ones are truth dimuons."""
    data = read_spill(path)
    t, _ = corrected_event_table(data, calib, cfg)
    mask, steps = dimuon_mask(t, sel.Cuts.from_config(cfg))
    out: dict[str, Any] = {
        "spill": int(data.attrs.get("spill", 0)),
        "eot": float(data.attrs.get("eot", 0) or 0),
        "flags": list(data.flags),
        "events": int(data.n_events),
        "cut_flow": {"all": int(data.n_events), **{k: int(v.sum()) for k, v in steps.items()}},
        "selected_event_ids": [int(i) for i in np.asarray(t["event_id"])[mask]],
    }
    if "truth_flags" in t:
        dimu = (np.asarray(t["truth_flags"]) & TRUTH_DIMUON) != 0
        out["truth"] = {"dimuon_recorded": int(dimu.sum()), "dimuon_selected": int((dimu & mask).sum())}
    return out


def _run_intensity(record: dict[str, Any], spills: set[int]) -> float:
    """Mean beam particles per spill (the run ``record``'s ``n_particles``) over the spills ``spills``."""
    entries = record.get("spills", [])
    n = [float(e.get("n_particles", 0)) for e in entries if int(e.get("spill", -1)) in spills]
    return float(np.mean(n)) if n else math.nan


def run_dimuons(
    run_dir: str | os.PathLike,
    cfg: Config | None = None,
    calib: Calibration | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The dimuon selection on every spill file of a recorded run (see the module docstring): ``intensity``
    (beam particles per spill, the run record's mean over the spills counted), ``eot``, ``selected``,
    ``selected_per_eot`` with its error, the cut flow and the selected (spill, event id) pairs.
    ``cfg``/``calib`` default to the run's own (:func:`offline.dask_select.run_setup`). ``progress(done,
    total)`` is called after each spill file."""
    cfg, calib = run_setup(run_dir, cfg, calib)
    files = list_spills(run_dir)
    flow: dict[str, int] = {}
    eot, selected, n_spills = 0.0, 0, 0
    events: list[list[int]] = []
    truth: dict[str, int] | None = None
    excluded: list[dict[str, Any]] = []
    errors: list[str] = []
    counted: set[int] = set()
    for i, path in enumerate(files):
        try:
            r = spill_dimuons(path, cfg, calib)
        except SpillFileError as exc:
            errors.append(str(exc))
            r = None
        if r is not None and set(r["flags"]) & INCOMPLETE_SPILL_FLAGS:
            excluded.append({"spill": r["spill"], "flags": r["flags"], "eot": r["eot"]})
        elif r is not None:
            n_spills += 1
            counted.add(r["spill"])
            eot += r["eot"]
            selected += len(r["selected_event_ids"])
            events += [[r["spill"], e] for e in r["selected_event_ids"]]
            flow = {k: flow.get(k, 0) + v for k, v in r["cut_flow"].items()}
            if "truth" in r:
                truth = {k: (truth or {}).get(k, 0) + v for k, v in r["truth"].items()}
        if progress is not None:
            progress(i + 1, len(files))
    try:
        record = read_run_record(run_dir)
    except SpillFileError:
        record = {}
    run = int(record.get("run", 0))
    # Poisson error; one event's when none was selected (the ratio's error then still says something)
    per_eot, err = (selected / eot, math.sqrt(max(selected, 1)) / eot) if eot > 0 else (math.nan, math.nan)
    return {
        "run_dir": str(pathlib.Path(run_dir)),
        "run": run,
        "intensity": _run_intensity(record, counted),
        "intensity_configured": float(cfg.beam.particles_per_spill),
        "n_spills": n_spills,
        "eot": eot,
        "events": flow.get("all", 0),
        "selected": selected,
        "selected_err": math.sqrt(selected),
        "selected_per_eot": per_eot,
        "selected_per_eot_err": err,
        "cut_flow": flow,
        "selected_events": events,
        "truth": truth,
        "excluded_spills": excluded,
        "errors": errors,
        "selection": selection_summary(),
    }


def data_over_mc(data: dict[str, Any], mc: dict[str, Any]) -> tuple[float, float]:
    """data/MC of ``selected_per_eot`` and its error (the two relative errors in quadrature)."""
    d, m = float(data["selected_per_eot"]), float(mc["selected_per_eot"])
    if not (m > 0 and math.isfinite(d)):
        return math.nan, math.nan
    r = d / m
    return r, math.hypot(float(data["selected_per_eot_err"]) / m, r * float(mc["selected_per_eot_err"]) / m)


def paper_table_i(intensity: float) -> dict[str, Any] | None:
    """The paper's Table I row (docs/physics.md 6.4) at the nearest intensity within 20%, else None."""
    for row in paper2016.TABLE_I:
        i = row.intensity_1e6_per_spill * 1e6
        if abs(intensity / i - 1.0) < 0.2:
            return {"sample": row.name, "intensity": i, "data_mc": row.efficiency_quoted}
    return None
