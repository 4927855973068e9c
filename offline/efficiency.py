"""Signal efficiency at one A' mass and beam intensity, factor by factor as the paper's Table II
(``na64-offline efficiency --mass M --intensity I``; docs/physics.md 6.3).

The chain: ``n`` beam electrons embedded in the beam of the configured composition at ``intensity``
particles per spill (pile-up, :func:`offline.signal.mc_beam`) emit an A' (E_A' > E_miss,min); the detector
response (:func:`sim_frontend.response.apply_response`) with the A' emitted at a depth of the shower the
track length implies (:func:`sim_frontend.aprime_depth.emit_at_depth`); the Micromegas hits and the track
reconstruction; digitisation, reconstruction and the physics trigger (:func:`offline.signal.mc_event_table`);
the offline selection (:mod:`offline.selection`).

Factors, each the fraction passing its cuts among the events that passed the factors before it (so their
product is the total), with binomial errors sqrt(e (1 - e) / n):

- ``eps_e`` incoming electron: SRD, momentum, angle, track multiplicity -- the cuts upstream of the ECAL,
  on every simulated beam electron (the paper measures it on beam electrons: nothing downstream, the A'
  included, changes it);
- ``eps_ecal`` ECAL: the physics trigger (its PS and ECAL thresholds), shower shape, PS, the ECAL pile-up
  criterion (a single pulse at the trigger time in every cell above 1 GeV: an ECAL cut, whose rate
  dependence the paper's eps_ECAL carries), signal box;
- ``eps_v`` the V2 veto; ``eps_hcal`` the HCAL veto.

``ps_threshold_correction``: the PS-threshold efficiency with the A' at its depth over that with the A' at
the ECAL face, on the same events (:func:`sim_frontend.aprime_depth.ps_threshold_correction`); the total already
contains it, through the redrawn deposits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from detector.config import Calibration, Config, load_calibration
from sim_frontend import aprime_depth
from sim_frontend.response import apply_response

from . import paper2016
from . import selection as sel
from .signal import _make_spill, emiss_min_gev, mc_event_table, mc_track_columns, signal_emission

FACTORS: dict[str, tuple[str, ...]] = {
    "eps_e": ("srd", "srd_time", "momentum", "angle", "tracks"),
    "eps_ecal": ("trigger", "shower", "ps", "pileup", "box"),
    "eps_v": ("v2",),
    "eps_hcal": ("hcal",),
}
#: the paper's totals per intensity (e-/spill: (value, error)), docs/physics.md 6.3
PAPER_TOTALS: dict[float, tuple[float, float]] = {5.1e6: paper2016.TABLE_II_TOTAL, 1.5e6: (0.73, 0.12)}
#: the paper's Table II factors at 5.1e6 e-/spill under this module's names
PAPER_FACTORS: dict[str, tuple[float, float]] = {
    "eps_e": paper2016.TABLE_II["eps_e_incoming_selection"],
    "eps_ecal": paper2016.TABLE_II["eps_ecal_selection"],
    "eps_v": paper2016.TABLE_II["eps_veto_v2"],
    "eps_hcal": paper2016.TABLE_II["eps_hcal_selection"],
}


def _binomial(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    e = k / n
    return e, math.sqrt(e * (1.0 - e) / n)


def factor_table(masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Sequential factors of :data:`FACTORS` and the total from the per-cut masks (one boolean per event),
    with ``factor_cut_flow``: the events left after each cut, the cuts taken in the factors' order (each
    factor is the count after its last cut over the count after the previous factor's last cut)."""
    n = int(next(iter(masks.values())).size)
    alive = np.ones(n, dtype=bool)
    out: dict[str, Any] = {}
    flow = {"all": n}  # cumulative, in the factors' order
    for name, cuts in FACTORS.items():
        passed = alive.copy()
        for c in cuts:
            passed &= masks[c]
            flow[c] = int(passed.sum())
        out[name], out[f"{name}_err"] = _binomial(int(passed.sum()), int(alive.sum()))
        out[f"{name}_events"] = [int(passed.sum()), int(alive.sum())]
        alive = passed
    out["total"], out["total_err"] = _binomial(int(alive.sum()), n)
    out["selected"], out["events"] = int(alive.sum()), n
    out["factor_cut_flow"] = flow
    return out


def signal_efficiency(
    cfg: Config,
    mass_mev: float,
    intensity: float,
    n_events: int,
    calib: Calibration | None = None,
    seed: int = 1,
    at_depth: bool = True,
) -> dict[str, Any]:
    """The factor table at ``mass_mev`` (MeV) and ``intensity`` (particles per spill); see the module
    docstring. ``at_depth=False``: the A' emitted at the ECAL face, as the response alone places it."""
    if n_events < 1:
        raise ValueError(f"need at least one event, got {n_events}")
    if not (math.isfinite(intensity) and intensity > 0):
        raise ValueError(f"intensity must be > 0 particles per spill, got {intensity}")
    if not (math.isfinite(mass_mev) and mass_mev > 0):
        raise ValueError(f"A' mass must be > 0 MeV, got {mass_mev}")
    c = cfg.with_overrides({"beam": {"particles_per_spill": float(intensity)}})
    calib = load_calibration(c) if calib is None else calib
    spill, pick = _make_spill(c, mass_mev, n_events, seed, pileup=True)
    dep = apply_response(spill, c, aprime=signal_emission(c, mass_mev, seed, at_face=not at_depth))
    if at_depth:
        if not np.array_equal(dep.aprime["index"], pick):
            raise RuntimeError("the response placed other A' events than the signal sample's")
        ps_face = dep.aprime["ps_face_gev"]
    else:
        ps_face = dep.trigger[pick, 4].copy()
    t = mc_event_table(c, calib, spill, dep, pick)
    t.update(mc_track_columns(c, spill, pick))
    s = sel.select(t, sel.Cuts.from_config(c))
    table = factor_table(dict(s.masks))
    if table["selected"] != int(s.passed["box"].sum()):
        raise RuntimeError("the factors do not multiply to the selection")  # a cut missing from FACTORS
    ps_min = float(c.trigger.menu["physics"].ps_min_gev)
    return {
        "mass_mev": float(mass_mev),
        "intensity": float(intensity),
        "seed": int(seed),
        "emiss_min_gev": emiss_min_gev(c),
        **table,
        "at_depth": bool(at_depth),
        "ps_threshold_correction": aprime_depth.ps_threshold_correction(ps_face, dep.trigger[pick, 4], ps_min),
        "depth_x0_mean": float(np.mean(dep.aprime["t_x0"])) if at_depth else 0.0,
        "tracker_applied": bool(s.tracker_applied),
        "cut_flow": dict(s.cut_flow()),
        "paper": paper_reference(intensity),
    }


def paper_reference(intensity: float) -> dict[str, Any] | None:
    """The paper's total (and, at 5.1e6, its factors) at the nearest quoted intensity within 20%."""
    for i, (v, e) in PAPER_TOTALS.items():
        if abs(intensity / i - 1.0) < 0.2:
            ref: dict[str, Any] = {"intensity": i, "total": v, "total_err": e}
            if i == 5.1e6:
                ref.update({k: list(f) for k, f in PAPER_FACTORS.items()})
            return ref
    return None
