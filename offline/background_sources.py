"""Background prediction per source from biased simulation through the SAME simulation, reconstruction,
trigger and selection as the data (``na64-offline background --sources``; docs/physics.md 6.5, 1.10).

Registry: :data:`SOURCES` maps a source name to an estimator, a function

    estimator(cfg, calib, eot, intensity, n_mc, seed, progress) -> {"n": float, "err": float, "mc": {...}}

``eot``: electrons on target to predict for; ``intensity``: e-/spill (sets the pile-up); ``n_mc``: simulated
events; ``progress(done, total)``: called as the work advances. ``n`` is the expected number of events in
the signal box after every cut for ``eot`` EOT, ``err`` its MC-statistical error, ``mc`` the statistics used
(``events`` simulated, bias, raw and weighted box counts ``box_events``, cut flow, and ``n_upper_90``: the 90%
CL upper bound for ``eot`` when the estimate is zero -- no MC event of the source in the box -- else None).
Add a source with :func:`register`.
:func:`predict` runs the chosen sources and returns ``{"total": {"n", "err"}, "sources": {name: ...}}``
(errors added in quadrature).

``upstream`` (Table III "e- interactions in beam-line materials"; docs/physics.md 1.10): beam electrons of the
configured beam at ``intensity`` (the other particle types around them for the pile-up) through
:mod:`sim_frontend.beamline`, the detector response, digitised events, the reconstruction, the trigger's
amplitude entry, the Micromegas strips and the track reconstruction, and the full selection. The source is
the events whose electron radiated in the beam line (TRUTH_BEAMLINE); events with a dimuon or an A' belong
to other sources, and so do electrons that did not radiate (their hadronic interactions in the ECAL are the
electroproduction source).

Where the survivors come from (with the tracker): a hard photon (y > ``FORCE_Y_MIN``) radiated before the
first dipole lands ~40 cm beside the ECAL, beyond the HCAL face, and the electron keeping < 0.58 E0 is bent
beyond it on the other side: nothing of the primary reaches a calorimeter (with more energy it lands on the
HCAL face: vetoed). Its Micromegas hits upstream of the magnets, with the hits of a pile-up particle in
MM3/MM4 within the chambers' time window, make a ~100 GeV track; at 0.5-0.58 E0 its own synchrotron light
still gives the SRD tag; the trigger and the ECAL energy come from an out-of-time pile-up pulse, which the
pile-up cut rejects. A photon radiated between or after the dipoles lands on the HCAL face or in the ECAL
with the electron (vetoed, or E_ECAL ~ E0).

Variance reduction (both keep the estimate unbiased):

1. forcing: with the tracker, photons above ``FORCE_Y_MIN`` are made ``FORCE_FACTOR`` times more likely in the
   material before the first dipole (:func:`upstream_bias`; likelihood-ratio weight per electron
   ``b^-n exp((b - 1) Lambda)`` from :mod:`sim_frontend.beamline`), so that ~60% of the simulated electrons
   carry such a photon (2.4% in nature) with weight ~1/16;
2. splitting: the split set is decided upstream of the calorimeters only: a TRUTH_BEAMLINE electron whose
   energy entering the ECAL matrix is below ``PREFILTER_ECAL_GEV`` (a centred shower above it cannot deposit
   less than the 50 GeV box edge) and that passes the tracker cuts (momentum, angle, single track: its
   track columns computed once); every such event is simulated ``SPLIT_K`` times downstream of the tracker
   (:func:`replica_spill`: the detector response of it and of its pile-up neighbours, and the digitiser
   noise, with a new seed; the particles, times, beam-line result and tracker hits kept), each replica with
   1/``SPLIT_K`` of its weight. The error adds the replicas of one event before squaring (they are
   correlated); with no event in the box it is the 68% bound of zero events (1.14) at the weight of one
   replica (``mc.bound_per_event``: at the weight of one split event, for replicas that decide alike).
   Electrons outside the split set are not digitised: the cut flow counts replicas of the split set (its
   ``all`` line: the simulated electrons), and ``mc.mechanism`` splits its weighted lines by where the
   electron's energy went (:data:`MECHANISMS`).

The MC events are electrons :func:`isolated` from each other by ``ISOLATION_NS`` and only they are biased
(``beamline.Bias.only``): the pile-up around them is transported as in nature.

Not simulated (:data:`UPSTREAM_NOT_SIMULATED`, carried in ``mc.not_simulated``): hadron photo- and
electroproduction in the line material, the mechanism NA64 names for this background. Scored on the default
layout with Pythia events it would give ~1.9e3 box-like events for 4.3e10 EOT, nearly all from the material
13-14 m before the ECAL (docs/physics.md 1.10, ``docs/calc/line_photoproduction``): its size is decided by a
layout that no source gives.

Without the tracker (``tracker=False``, data recorded without the Micromegas block) the hard bremsstrahlung
(y > ``UPSTREAM_BIAS_Y``) is made ``UPSTREAM_BIAS`` times more likely along the whole line, with no
splitting. Dimuons are left at their natural rate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from detector.config import Calibration, Config, load_calibration
from detector.records import PARTICLE_CODES, TRUTH_APRIME, TRUTH_BEAMLINE, TRUTH_DECAY, TRUTH_DIMUON
from sim_frontend import beamline
from sim_frontend.beam import BeamSpill, generate_spill
from sim_frontend.response import apply_response

from . import background_accidental, background_downstream
from . import events as ev
from . import selection as sel
from .signal import mc_event_table, mc_track_columns

Progress = Callable[[int, int], None]
Estimator = Callable[[Config, Calibration, float, float, int, int, Progress], dict[str, Any]]

UPSTREAM_BIAS = 5.0  #: hard-bremsstrahlung rate multiplier along the whole line (data without the tracker)
UPSTREAM_BIAS_Y = 0.3  #: photons above this energy fraction are biased (data without the tracker)
FORCE_FACTOR = 40.0  #: hard-bremsstrahlung rate multiplier before the first dipole (with the tracker)
FORCE_Y_MIN = 0.4  #: photons above this energy fraction are forced (the electron is bent off the HCAL face)
SPLIT_K = 20  #: downstream replicas of every event of the split set
PREFILTER_ECAL_GEV = 60.0  #: energy entering the ECAL matrix above which an event cannot reach the box
#: what the upstream source leaves out, said beside its numbers (``mc.not_simulated``)
UPSTREAM_NOT_SIMULATED = (
    "hadron photo- and electroproduction in the beam-line material: in the default layout ~1.9e3 box-like events "
    "for 4.3e10 EOT (docs/physics.md 1.10)"
)
CHUNK = 4096
#: MC events (the biased electrons) are at least this far apart in time (ns), more than the digitiser's reach
#: around an event (the pulse template before it, the readout window after it) and the chambers' time window:
#: none is in the pile-up of another; the pile-up around them is transported unbiased
ISOLATION_NS = 500.0
SEED_OFFSET = 0xB6D0  #: spill-number offset of the background simulation
REPLICA_SEED = 0x5B11  #: seed key of the downstream replicas
#: where the beam-line electron's energy went (transport truth), for the cut flow by mechanism
MECHANISMS: tuple[str, ...] = ("lost", "hcal_face", "ecal")

SOURCES: dict[str, Estimator] = {}


def register(name: str, estimator: Estimator) -> None:
    """Add (or replace) the estimator of a background source."""
    SOURCES[name] = estimator


def upstream_bias(cfg: Config, tracker: bool = True) -> beamline.Bias:
    """The bremsstrahlung biasing of the upstream source: with the tracker cuts, photons above ``FORCE_Y_MIN``
    made ``FORCE_FACTOR`` times more likely in the material before the first dipole; without them (data
    recorded without the Micromegas block), ``UPSTREAM_BIAS`` above ``UPSTREAM_BIAS_Y`` along the whole line."""
    if not tracker:
        return beamline.Bias(UPSTREAM_BIAS, UPSTREAM_BIAS_Y)
    return beamline.Bias(FORCE_FACTOR, FORCE_Y_MIN, float(min(cfg.beamline.magnet_z_m)))


def replica_spill(spill: BeamSpill, k: int, truth: np.ndarray) -> BeamSpill:
    """Replica ``k`` of a transported spill for the downstream splitting: the same particles, times and beam-line
    result (impact points, energies, SR, tracker hits), a new seed for everything downstream of the tracker
    (detector response of every particle, digitiser noise); replica 0 is the spill itself. ``truth``: the
    spill's truth as the transport left it (a copy of it is the replica's: no flag of another replica's
    response carries over)."""
    if k == 0:
        return spill
    seed = int(np.random.SeedSequence([int(spill.seed), REPLICA_SEED, int(k)]).generate_state(1, np.uint64)[0])
    return dataclasses.replace(spill, truth=truth.copy(), seed=seed)


def isolated(times_ns: np.ndarray, cand: np.ndarray, gap_ns: float = ISOLATION_NS) -> np.ndarray:
    """The candidates (indices into the time-sorted ``times_ns``, ascending) kept first-come: each at least
    ``gap_ns`` after the previous kept one."""
    keep = np.zeros(cand.size, dtype=bool)
    last = -np.inf
    for j, t in enumerate(times_ns[cand].tolist()):
        if t - last >= gap_ns:
            keep[j] = True
            last = t
    return cand[keep]


def _mechanism(bl: beamline.Transported, idx: np.ndarray) -> np.ndarray:
    """Index into :data:`MECHANISMS`: nothing on the ECAL or the HCAL face, something on the HCAL face only,
    something in the ECAL matrix."""
    front, side = bl.e_front[idx], bl.e_side[idx]
    return np.where(front > 0, 2, np.where(side > 0, 1, 0)).astype(np.int8)


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
    split_k: int = 1,
) -> tuple[ev.Table, int, dict[str, float]]:
    """Event tables (with truth, trigger mask and track columns) of the beam-line events of ``n_events`` beam
    electrons simulated in spills of ``spill_particles`` at ``intensity`` e-/spill, with the bremsstrahlung
    ``bias`` (the MC events: electrons :func:`isolated` from each other, the only biased particles); returns
    the concatenated table of the digitised events, the number of electrons simulated and counters.
    Digitised: electrons flagged TRUTH_BEAMLINE whose energy entering the ECAL matrix is below ``prefilter_gev``
    and, with ``tracker``, that pass the tracker cuts (their track columns are computed once); each of them
    ``split_k`` times (:func:`replica_spill`), each replica with 1/``split_k`` of its weight (column
    ``split_id`` numbers the split events). ``tracker=False`` leaves the track columns out, as in a spill file
    recorded without the Micromegas block."""
    rate = float(intensity) / float(cfg.spill.length_s)
    base = cfg.with_overrides({"aprime": {"enabled": False}})
    cuts = sel.Cuts.from_config(base)
    tables: list[ev.Table] = []
    stats = {
        "beamline_events": 0, "beamline_weight": 0.0, "prefilter_events": 0, "prefilter_weight": 0.0,
        "split_events": 0, "split_weight": 0.0, "digitised": 0,
    }  # fmt: skip
    done = 0
    k = 0
    p_e = max(1e-3, 1.0 - sum((base.beam.frac_pion, base.beam.frac_kaon, base.beam.frac_muon, base.beam.frac_halo)))
    while done < n_events:
        n_part = int(min(spill_particles, (n_events - done) / (0.5 * p_e) + 1000))
        c = dataclasses.replace(base, spill=dataclasses.replace(base.spill, length_s=n_part / rate))
        spill = generate_spill(c, SEED_OFFSET + 1000 * seed + k, n_particles=n_part, start_unix=0.0)
        k += 1
        electrons = np.flatnonzero(spill.truth["ptype"] == PARTICLE_CODES["e-"])
        electrons = isolated(spill.truth["time_ns"], electrons)[: n_events - done]
        bl = beamline.transport(spill, c, dataclasses.replace(bias, only=spill.truth["index"][electrons]))
        done += electrons.size
        radiated = electrons[(bl.flags[electrons] & TRUTH_BEAMLINE) != 0]
        stats["beamline_events"] += int(radiated.size)
        stats["beamline_weight"] += float(spill.truth["weight"][radiated].sum())
        cand = radiated[bl.e_front[radiated] < prefilter_gev]
        stats["prefilter_events"] += int(cand.size)
        stats["prefilter_weight"] += float(spill.truth["weight"][cand].sum())
        trk: ev.Table = {}
        if tracker and cand.size:
            trk = mc_track_columns(c, spill, cand, chunk=CHUNK)
            keep = np.logical_and.reduce(list(sel.tracker_masks(trk, cuts).values()))
            cand = cand[keep]
            trk = {name: v[keep] for name, v in trk.items()}
        ids = np.arange(stats["split_events"], stats["split_events"] + cand.size)  # split-event numbers
        stats["split_events"] += int(cand.size)
        stats["split_weight"] += float(spill.truth["weight"][cand].sum())
        if cand.size:
            transported = spill.truth.copy()
            for r in range(split_k):
                rep = replica_spill(spill, r, transported)
                deposits = apply_response(rep, c)
                t = mc_event_table(c, calib, rep, deposits, cand, chunk=CHUNK)
                t.update(trk)
                t["truth_weight"] = t["truth_weight"] / np.float32(split_k)
                t["split_id"] = ids
                t["mechanism"] = _mechanism(bl, cand)
                tables.append(t)
            stats["digitised"] += int(cand.size) * split_k
        progress(done, n_events)
    return (ev.concat(tables) if tables else {}), done, stats


def _weighted_prediction(
    t: ev.Table, n_sim: int, eot: float, cuts: sel.Cuts, exclude_flags: int, zero_weight: float
) -> dict[str, Any]:
    """n, err and the weighted cut flow of the events of ``t`` that do not carry ``exclude_flags`` (they belong
    to other sources), scaled from ``n_sim`` simulated electrons to ``eot``. The error of a split sample
    (column ``split_id``: replicas of one event) adds the replicas of an event before squaring. With no
    event in the box, err is the 68% upper bound of zero events (1.14) at the weight ``zero_weight`` of one
    event (one replica) that could be one."""
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
    if box.any():
        ids = t["split_id"][box] if "split_id" in t else np.arange(int(box.sum()))
        per_event = np.bincount(np.unique(ids, return_inverse=True)[1], weights=w[box])
        err = math.sqrt(float((per_event**2).sum())) * scale
    else:
        err = 1.14 * scale * zero_weight
    mech: dict[str, Any] = {}
    if "mechanism" in t:
        for j, name in enumerate(MECHANISMS):
            m_j = mine & (t["mechanism"] == j)
            mech[name] = {c: float(w[s.passed[c] & m_j].sum()) for c in sel.CUT_NAMES}
    out_mc = {"events": n_sim, "box_events": int(box.sum()), "cut_flow": flow, "mechanism": mech}
    return {"n": n, "err": err, "mc": out_mc}


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
    split_k: int | None = None,
    bias: beamline.Bias | None = None,
) -> dict[str, Any]:
    """:func:`upstream`; ``tracker=False``: for data recorded without the Micromegas block (no tracker cuts, no
    splitting). ``split_k`` (default ``SPLIT_K`` with the tracker, 1 without) and ``bias`` (default
    :func:`upstream_bias`) are the variance reduction; any choice estimates the same expectation."""
    c = cfg.with_overrides({"beam": {"dimuon_bias": 1.0}})
    b = upstream_bias(c, tracker) if bias is None else bias
    k = (SPLIT_K if tracker else 1) if split_k is None else int(split_k)
    t, n_sim, stats = simulate_tables(c, calib, n_mc, seed, intensity, b, progress, tracker=tracker, split_k=k)
    # the weight of one replica, for the zero-event bound; with no event in the split set, that of the electrons
    # that radiated in the beam line (each could have been one), as in _upper_90
    if stats["split_events"]:
        zero_w = stats["split_weight"] / stats["split_events"] / k
    else:
        zero_w = (stats["beamline_weight"] / stats["beamline_events"] if stats["beamline_events"] else 1.0) / k
    exclude = int(TRUTH_DIMUON | TRUTH_APRIME | TRUTH_DECAY)  # decays in flight: their own source
    out = _weighted_prediction(t, n_sim, eot, sel.Cuts.from_config(c), exclude, zero_w)
    out["mc"].update(
        {
            "bias": b.factor,
            "bias_y_min": b.y_min,
            "bias_z_max_m": b.z_max_m if math.isfinite(b.z_max_m) else None,
            "split_k": k,
            # the zero-event bound counting every split event once (its replicas are correlated)
            "bound_per_event": 1.14 * eot / n_sim * zero_w * k,
            # 90% CL bound of an empty box, the key every source reports (None when the box is not empty)
            "n_upper_90": _upper_90(eot, n_sim, stats) if out["mc"]["box_events"] == 0 else None,
            "prefilter_ecal_gev": PREFILTER_ECAL_GEV,
            "not_simulated": UPSTREAM_NOT_SIMULATED,
            **stats,
            "material": beamline.line_from_config(c).budget(),
        }
    )
    return out


def _upper_90(eot: float, n_sim: int, stats: dict[str, float]) -> float:
    """The 90% CL upper bound (2.303 events) of an empty upstream box for ``eot`` EOT, at the mean weight of one
    split event (its replicas decide alike); with no event in the split set, at the mean weight of the
    electrons that radiated in the beam line (each could have been one)."""
    if stats["split_events"]:
        w = stats["split_weight"] / stats["split_events"]
    else:
        w = stats["beamline_weight"] / stats["beamline_events"] if stats["beamline_events"] else 1.0
    return 2.303 * eot / n_sim * w


register("upstream", upstream)


def _downstream(name: str, f: Callable[..., dict[str, Any]] | None = None) -> Estimator:
    """The registry's form of a downstream estimator of :mod:`offline.background_downstream` (its
    statistical and systematic errors kept, ``err`` = both in quadrature)."""
    est = background_downstream.ESTIMATORS[name] if f is None else f

    def estimator(
        cfg: Config, calib: Calibration, eot: float, intensity: float, n_mc: int, seed: int, progress: Progress
    ) -> dict[str, Any]:
        progress(0, 1)
        r = est(cfg, eot, intensity, n_mc=n_mc, seed=seed, calib=calib)
        progress(1, 1)
        err = math.hypot(float(r["err_stat"]), float(r["err_syst"]))
        box = sum(int(smp.get("selected", 0)) for smp in r.get("samples", []))
        mc = {"events": r["mc_events"], "box_events": box}
        mc.update({k: v for k, v in r.items() if k not in ("n", "err_stat", "err_syst")})
        return {"n": float(r["n"]), "err": err, "err_stat": r["err_stat"], "err_syst": r["err_syst"], "mc": mc}

    estimator.__doc__ = est.__doc__
    return estimator


for _name in background_downstream.ESTIMATORS:
    register(_name, _downstream(_name))
register("accidental_sr", _downstream("accidental_sr", background_accidental.accidental_sr))


def chosen(sources: list[str] | None, eot: float, intensity: float, n_mc: int) -> list[str]:
    """The registered names of ``sources`` (default: all registered), after checking the arguments of a
    prediction; ValueError for an unknown source, ``eot`` or ``intensity`` not a finite number > 0, ``n_mc`` < 1."""
    names = list(sources) if sources else list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown background sources {unknown}; known: {', '.join(SOURCES)}")
    if not (math.isfinite(eot) and eot > 0 and math.isfinite(intensity) and intensity > 0) or n_mc < 1:
        raise ValueError(f"eot and intensity must be finite and > 0, n_mc >= 1; got {eot}, {intensity}, {n_mc}")
    return names


def run_source(
    estimator: Estimator,
    cfg: Config,
    calib: Calibration,
    eot: float,
    intensity: float,
    n_mc: int,
    seed: int,
    progress: Progress,
) -> dict[str, Any]:
    """One source's result (``estimator`` of :data:`SOURCES`) with ``seconds``, the wall time of its
    estimator (s); the same in this process and in a Dask task (:mod:`offline.dask_background`)."""
    t0 = time.perf_counter()
    r = estimator(cfg, calib, float(eot), float(intensity), int(n_mc), int(seed), progress)
    r["seconds"] = time.perf_counter() - t0
    return r


def table(res: dict[str, dict[str, Any]], eot: float, intensity: float) -> dict[str, Any]:
    """The background table of the per-source results ``res``: their sum, errors added in quadrature."""
    total = sum(r["n"] for r in res.values())
    err = math.sqrt(sum(r["err"] ** 2 for r in res.values()))
    return {"eot": eot, "intensity": intensity, "total": {"n": total, "err": err}, "sources": res}


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
    """Run the estimators of ``sources`` (default: all registered) in this process, one after the other, and
    add them up (:func:`table`); each source's result carries ``seconds``, the wall time of its estimator.
    :func:`offline.dask_background.predict_dask` runs them as Dask tasks, with the same result."""
    names = chosen(sources, eot, intensity, n_mc)
    calib = load_calibration(cfg) if calib is None else calib
    res: dict[str, Any] = {}
    for name in names:

        def cb(done: int, total: int, _n: str = name) -> None:
            if progress is not None:
                progress(_n, done, total)

        res[name] = run_source(SOURCES[name], cfg, calib, eot, intensity, n_mc, seed, cb)
    return table(res, eot, intensity)


from .background_decays import decays_in_flight  # noqa: E402 (it imports from this module)

register("decays_in_flight", decays_in_flight)
