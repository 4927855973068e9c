"""Background prediction per source from biased simulation through the SAME simulation, reconstruction,
trigger and selection as the data (``na64-offline background --sources``; docs/physics.md 6.5, 1.10).

Registry: :data:`SOURCES` maps a source name to an estimator, a function

    estimator(cfg, calib, eot, intensity, n_mc, seed, progress) -> {"n": float, "err": float, "mc": {...}}

``eot``: electrons on target to predict for; ``intensity``: e-/spill (sets the pile-up); ``n_mc``: simulated
events; ``progress(done, total)``: called as the work advances. ``n`` is the expected number of events in
the signal box after every cut for ``eot`` EOT, ``err`` its MC-statistical error, ``mc`` the statistics used
(events simulated, bias, raw and weighted box counts, cut flow). Add a source with :func:`register`.
:func:`predict` runs the chosen sources and returns ``{"total": {"n", "err"}, "sources": {name: ...}}``
(errors added in quadrature).

``upstream`` (Table III "e- interactions in beam-line materials"): beam electrons of the configured beam
at ``intensity`` (the other particle types around them for the pile-up) through
:mod:`sim_frontend.beamline` with the hard bremsstrahlung (y > 0.3) made ``UPSTREAM_BIAS`` times more
likely, the bias undone by the per-event weight; then the detector response, digitised events, the
reconstruction, the trigger's amplitude entry, the Micromegas strips and the track reconstruction, and the
full selection. Events whose true ECAL deposit is above ``PREFILTER_ECAL_GEV`` cannot reach the signal box
(E_ECAL < 50 GeV; the e-m resolution there is 0.7 GeV and pile-up only adds energy) and are not digitised:
they count in the cut flow's ``all`` only, so its later lines count events with a true E_ECAL below 60 GeV.
Dimuons are left at their natural rate and events with a dimuon or an A' are not counted here (other
sources).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from detector.config import Calibration, Config, load_calibration
from detector.records import PARTICLE_CODES, TRUTH_APRIME, TRUTH_BEAMLINE, TRUTH_DECAY, TRUTH_DIMUON
from sim_frontend import beamline
from sim_frontend.beam import generate_spill
from sim_frontend.response import apply_response

from . import background_downstream
from . import events as ev
from . import selection as sel
from .signal import mc_event_table, mc_track_columns

Progress = Callable[[int, int], None]
Estimator = Callable[[Config, Calibration, float, float, int, int, Progress], dict[str, Any]]

UPSTREAM_BIAS = 5.0  #: hard-bremsstrahlung rate multiplier of the upstream source
UPSTREAM_BIAS_Y = 0.3  #: photons above this energy fraction are biased
PREFILTER_ECAL_GEV = 60.0  #: true ECAL deposit above which an event cannot reach the box (E_ECAL < 50 GeV)
CHUNK = 4096
SEED_OFFSET = 0xB6D0  #: spill-number offset of the background simulation

SOURCES: dict[str, Estimator] = {}


def register(name: str, estimator: Estimator) -> None:
    """Add (or replace) the estimator of a background source."""
    SOURCES[name] = estimator


def simulate_tables(
    cfg: Config,
    calib: Calibration,
    n_events: int,
    seed: int,
    intensity: float,
    bias: beamline.Bias,
    progress: Progress,
    spill_particles: int = 200_000,
    prefilter_gev: float = PREFILTER_ECAL_GEV,
    tracker: bool = True,
) -> tuple[ev.Table, int, dict[str, float]]:
    """Event tables (with truth, trigger mask and track columns) of ``n_events`` beam electrons simulated in
    spills of ``spill_particles`` at ``intensity`` e-/spill, with the bremsstrahlung ``bias``; returns the
    concatenated table of the digitised events, the number of electrons simulated and counters (electrons
    that radiated in the beam line and their summed weight, digitised events). ``tracker=False`` leaves the
    track columns out, as in a spill file recorded without the Micromegas block (the selection then cannot
    apply the tracker cuts)."""
    rate = float(intensity) / float(cfg.spill.length_s)
    base = cfg.with_overrides({"aprime": {"enabled": False}})
    tables: list[ev.Table] = []
    stats = {"beamline_events": 0, "beamline_weight": 0.0, "digitised": 0}
    done = 0
    k = 0
    p_e = max(1e-3, 1.0 - sum((base.beam.frac_pion, base.beam.frac_kaon, base.beam.frac_muon, base.beam.frac_halo)))
    while done < n_events:
        n_part = int(min(spill_particles, (n_events - done) / p_e * 1.05 + 1000))
        c = dataclasses.replace(base, spill=dataclasses.replace(base.spill, length_s=n_part / rate))
        spill = generate_spill(c, SEED_OFFSET + 1000 * seed + k, n_particles=n_part, start_unix=0.0)
        k += 1
        beamline.transport(spill, c, bias)
        deposits = apply_response(spill, c)
        electrons = np.flatnonzero(spill.truth["ptype"] == PARTICLE_CODES["e-"])[: n_events - done]
        done += electrons.size
        cand = electrons[spill.truth["e_ecal"][electrons] < prefilter_gev]
        stats["beamline_events"] += int(np.count_nonzero(spill.truth["flags"][electrons] & TRUTH_BEAMLINE))
        stats["beamline_weight"] += float(
            spill.truth["weight"][electrons][spill.truth["flags"][electrons] & TRUTH_BEAMLINE != 0].sum()
        )
        stats["digitised"] += int(cand.size)
        if cand.size:
            t = mc_event_table(c, calib, spill, deposits, cand, chunk=CHUNK)
            if tracker:
                t.update(mc_track_columns(c, spill, cand, chunk=CHUNK))
            tables.append(t)
        progress(done, n_events)
    return (ev.concat(tables) if tables else {}), done, stats


def _weighted_prediction(
    t: ev.Table, n_sim: int, eot: float, cuts: sel.Cuts, exclude_flags: int, zero_weight: float
) -> dict[str, Any]:
    """n, err and the weighted cut flow of the events of ``t`` that do not carry ``exclude_flags`` (they belong
    to other sources), scaled from ``n_sim`` simulated electrons to ``eot``. With no event in the box, err
    is the 68% upper bound of zero events (1.14) at the mean weight ``zero_weight`` of an event that could be
    one."""
    scale = eot / n_sim
    flow: dict[str, Any] = {"all": n_sim}
    if not t:
        return {"n": 0.0, "err": 1.14 * scale * zero_weight, "mc": {"events": n_sim, "box_events": 0, "cut_flow": flow}}
    mine = (t["truth_flags"] & exclude_flags) == 0
    s = sel.select(t, cuts)
    w = t["truth_weight"].astype(np.float64)
    for name, m in s.passed.items():
        flow[name] = {"events": int((m & mine).sum()), "weighted": float(w[m & mine].sum())}
    box = s.in_box & mine
    n = float(w[box].sum()) * scale
    err = math.sqrt(float((w[box] ** 2).sum())) * scale if box.any() else 1.14 * scale * zero_weight
    return {"n": n, "err": err, "mc": {"events": n_sim, "box_events": int(box.sum()), "cut_flow": flow}}


def upstream(
    cfg: Config, calib: Calibration, eot: float, intensity: float, n_mc: int, seed: int, progress: Progress
) -> dict[str, Any]:
    """Electrons that interacted in the beam-line material (see the module docstring)."""
    return upstream_prediction(cfg, calib, eot, intensity, n_mc, seed, progress)


def upstream_prediction(
    cfg: Config,
    calib: Calibration,
    eot: float,
    intensity: float,
    n_mc: int,
    seed: int,
    progress: Progress,
    tracker: bool = True,
) -> dict[str, Any]:
    """:func:`upstream`; ``tracker=False``: for data recorded without the Micromegas block (no tracker cuts)."""
    c = cfg.with_overrides({"beam": {"dimuon_bias": 1.0}})
    bias = beamline.Bias(UPSTREAM_BIAS, UPSTREAM_BIAS_Y)
    t, n_sim, stats = simulate_tables(c, calib, n_mc, seed, intensity, bias, progress, tracker=tracker)
    zero_w = stats["beamline_weight"] / max(stats["beamline_events"], 1)
    out = _weighted_prediction(
        t, n_sim, eot, sel.Cuts.from_config(c), int(TRUTH_DIMUON | TRUTH_APRIME | TRUTH_DECAY), zero_w
    )
    out["mc"].update(
        {
            "bias": UPSTREAM_BIAS,
            "bias_y_min": UPSTREAM_BIAS_Y,
            "prefilter_ecal_gev": PREFILTER_ECAL_GEV,
            **stats,
            "material": beamline.line_from_config(c).budget(),
        }
    )
    return out


register("upstream", upstream)


def _downstream(name: str) -> Estimator:
    """The registry's form of a downstream estimator of :mod:`offline.background_downstream` (its
    statistical and systematic errors kept, ``err`` = both in quadrature)."""
    f = background_downstream.ESTIMATORS[name]

    def estimator(
        cfg: Config, calib: Calibration, eot: float, intensity: float, n_mc: int, seed: int, progress: Progress
    ) -> dict[str, Any]:
        progress(0, 1)
        r = f(cfg, eot, intensity, n_mc=n_mc, seed=seed, calib=calib)
        progress(1, 1)
        err = math.hypot(float(r["err_stat"]), float(r["err_syst"]))
        box = sum(int(smp.get("selected", 0)) for smp in r.get("samples", []))
        mc = {"events": r["mc_events"], "box_events": box}
        mc.update({k: v for k, v in r.items() if k not in ("n", "err_stat", "err_syst")})
        return {"n": float(r["n"]), "err": err, "err_stat": r["err_stat"], "err_syst": r["err_syst"], "mc": mc}

    estimator.__doc__ = f.__doc__
    return estimator


for _name in background_downstream.ESTIMATORS:
    register(_name, _downstream(_name))


def predict(
    cfg: Config,
    eot: float,
    intensity: float,
    n_mc: int,
    sources: list[str] | None = None,
    calib: Calibration | None = None,
    seed: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the estimators of ``sources`` (default: all registered) and add them up."""
    names = sources if sources else list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown background sources {unknown}; known: {', '.join(SOURCES)}")
    if eot <= 0 or intensity <= 0 or n_mc < 1:
        raise ValueError("eot and intensity must be > 0 and n_mc >= 1")
    calib = load_calibration(cfg) if calib is None else calib
    res: dict[str, Any] = {}
    for name in names:

        def cb(done: int, total: int, _n: str = name) -> None:
            if progress is not None:
                progress(_n, done, total)

        res[name] = SOURCES[name](cfg, calib, float(eot), float(intensity), int(n_mc), int(seed), cb)
    total = sum(r["n"] for r in res.values())
    err = math.sqrt(sum(r["err"] ** 2 for r in res.values()))
    return {"eot": eot, "intensity": intensity, "total": {"n": total, "err": err}, "sources": res}


from .background_decays import decays_in_flight  # noqa: E402 (it imports from this module)

register("decays_in_flight", decays_in_flight)
