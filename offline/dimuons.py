"""The dimuon control sample (docs/physics.md 6.4, the paper's Table I): beam electrons whose shower makes
gamma -> mu+ mu- in the ECAL, selected by a soft ECAL energy and MIP-like energy in the HCAL.

Selection (:func:`dimuon_mask`): the physics trigger and the incoming-electron cuts of the signal selection
(SRD, momentum, angle, track multiplicity, pile-up), E_ECAL < ``ECAL_MAX_GEV`` and, in each HCAL module of
``HCAL_MODULES`` (the paper's HCAL1 and HCAL4), an energy in ``HCAL_WINDOW_GEV`` (two muons).

MC prediction (:func:`mc_dimuons`): ``n_mc`` beam electrons embedded in the beam at ``intensity`` particles
per spill (pile-up), each flagged to produce a muon pair with the unbiased probability per electron as its
weight (:func:`sim_frontend.beam.dimuon_probability`), through the same response, digitisation,
reconstruction, trigger, tracking and selection as recorded data. ``selected_per_eot`` = sum of the weights
of the selected events / n_mc, its error from the sum of the squared weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from detector.config import Calibration, Config, load_calibration
from detector.records import TRUTH_DIMUON, TRUTH_PILEUP
from sim_frontend.beam import dimuon_probability
from sim_frontend.response import apply_response

from . import events as ev
from . import selection as sel
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


def mc_dimuons(
    cfg: Config, intensity: float, n_mc: int, eot: float, calib: Calibration | None = None, seed: int = 1
) -> dict[str, Any]:
    """The MC prediction of the dimuon selection per EOT and for ``eot`` electrons on target."""
    if n_mc < 1:
        raise ValueError(f"need at least one MC event, got {n_mc}")
    if not (math.isfinite(intensity) and intensity > 0):
        raise ValueError(f"intensity must be > 0 particles per spill, got {intensity}")
    if not (math.isfinite(eot) and eot > 0):
        raise ValueError(f"EOT must be > 0, got {eot}")
    c = cfg.with_overrides({"beam": {"particles_per_spill": float(intensity)}, "aprime": {"enabled": False}})
    calib = load_calibration(c) if calib is None else calib
    spill, pick = mc_beam(c, n_mc, SEED_OFFSET + seed, pileup=True)
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
        "selection": {
            "ecal_max_gev": ECAL_MAX_GEV,
            "hcal_window_gev": list(HCAL_WINDOW_GEV),
            "hcal_modules": list(HCAL_MODULES),
            "incoming_cuts": list(INCOMING_CUTS),
        },
    }
