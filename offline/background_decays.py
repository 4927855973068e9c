"""The ``decays_in_flight`` background source (Table III "mu -> e nu nu, pi, K -> e nu, Ke3 decays";
docs/physics.md 1.11, 6.5, 6.8): beam mu-, pi- and K- that decay into an electron between z = 0 and the ECAL
face, through the same simulation, reconstruction, trigger and selection as the data.

One biased MC sample per decay channel (:data:`sim_frontend.decays.CHANNEL_NAMES`): beam particles of an
unbiased spill at ``intensity`` (the pile-up of the physical beam around them, :func:`offline.signal.mc_beam`)
turned into the channel's parent, the decay forced inside the beam line (:func:`sim_frontend.beamline.transport`
``force_decay``: the truth weight = P(decay before the ECAL face) x BR), then the detector response, the
digitised events, the reconstruction, the physics trigger, the Micromegas strips and the track reconstruction
(:func:`offline.signal.mc_event_table`, :func:`offline.signal.mc_track_columns`) and the full selection.
Events whose true ECAL deposit is above :data:`offline.background_sources.PREFILTER_ECAL_GEV` cannot reach the
box and are not digitised (they count in the cut flow's ``all`` only).

n = N_EOT x sum over channels of (parents per EOT) x sum(w in box) / N_MC, parents per EOT = frac_parent /
frac_e (``[beam]``). err_stat from the sum of the squared weights (with no MC event in the box: the 68% bound
of zero events, 1.14 x the mean generated weight); err_syst = :data:`SYST_REL` x n (the beam's mu, pi, K
content, known to a factor ~3, the dominant input: docs/physics.md 1.11). ``n_upper_90``: 2.30 x the mean
weight per channel, summed, when no MC event is in the box. The MC events are shared by the channels as
:func:`allocation` says.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from detector.config import Calibration, Config
from detector.records import PARTICLE_CODES, TRUTH_PILEUP
from sim_frontend import beamline
from sim_frontend import decays as dk
from sim_frontend.response import apply_response

from . import selection as sel
from .background_downstream import electron_fraction
from .signal import mc_beam, mc_event_table, mc_track_columns

SEED_OFFSET = 0xDEC0  #: spill-number offset of the decay samples
#: relative systematic uncertainty: the beam's mu-, pi-, K- fractions, known to a factor ~3 (``[beam]``
#: DEFAULT values; docs/physics.md 1.1 quotes pi/e ~ 3e-3..1e-2, UNSURE; 1.11); the PDG lifetimes and
#: branching ratios (< 1%) and the Ke3 form-factor slope add nothing visible next to it
SYST_REL = 1.0
CHUNK = 4096
BATCH = 50_000  #: MC events per simulated spill slice
MIN_SHARE = 0.02  #: least share of the MC events of a channel
NEAR_CUT = "hcal"  #: events passing the cuts up to this one are listed in ``near_box_events``
_PARENT = {dk.MU_ENUNU: "mu-", dk.PI_ENU: "pi-", dk.K_ENU: "K-", dk.KE3: "K-"}


def _frac(cfg: Config, parent: str) -> float:
    b = cfg.beam
    return {"mu-": b.frac_muon, "pi-": b.frac_pion, "K-": b.frac_kaon}[parent]


def run_channel(
    cfg: Config, calib: Calibration, channel: int, n_mc: int, seed: int, progress: Any = None
) -> dict[str, Any]:
    """Simulate and select ``n_mc`` forced decays of ``channel`` (``cfg``: at the intensity of the sample), in
    batches of :data:`BATCH`. Returns the weighted cut flow (with, per cut, where the surviving parents
    decayed: before, between or after the dipole kicks), the weight sums of the box events, and the box
    events and those passing every cut up to :data:`NEAR_CUT` listed (:func:`_rows`)."""
    from .background_sources import PREFILTER_ECAL_GEV  # that module registers this one: imported here

    t0 = time.perf_counter()
    cuts = sel.Cuts.from_config(cfg)
    kicks = sorted(float(z) for z in cfg.beamline.magnet_z_m)
    flow: dict[str, Any] = {}
    box_rows: dict[str, list[float]] = {k: [] for k in _ROW_KEYS}
    near_rows: dict[str, list[float]] = {k: [] for k in _ROW_KEYS}
    w_gen_sum = 0.0
    n_cand = 0
    for b, lo in enumerate(range(0, n_mc, BATCH)):
        n = min(BATCH, n_mc - lo)
        spill, pick = mc_beam(cfg, n, SEED_OFFSET + 4096 * seed + 16 * b + channel, pileup=True)
        t = spill.truth
        t["ptype"][pick] = PARTICLE_CODES[_PARENT[channel]]
        t["flags"][pick] &= np.uint8(TRUTH_PILEUP)
        t["weight"][pick] = 1.0
        force = np.zeros(spill.n, np.uint8)
        force[pick] = channel
        bl = beamline.transport(spill, cfg, force_decay=force)
        dep = apply_response(spill, cfg)
        w_gen_sum += float(t["weight"][pick].astype(np.float64).sum())
        cand = pick[t["e_ecal"][pick] < PREFILTER_ECAL_GEV]
        n_cand += cand.size
        _add(flow, "all", np.ones(pick.size, bool), t["weight"][pick], bl.z_decay[pick], kicks)
        for s in range(0, cand.size, CHUNK):
            idx = cand[s : s + CHUNK]
            tb = mc_event_table(cfg, calib, spill, dep, idx, chunk=CHUNK)
            tb.update(mc_track_columns(cfg, spill, idx, chunk=CHUNK))
            res = sel.select(tb, cuts)
            w = tb["truth_weight"].astype(np.float64)
            for name, m in res.passed.items():
                _add(flow, name, m, w, bl.z_decay[idx], kicks)
            _rows(box_rows, res.in_box, w, tb, res, bl, idx)
            _rows(near_rows, res.passed[NEAR_CUT], w, tb, res, bl, idx)
        if progress is not None:
            progress(lo + n, n_mc)
    w_box = np.asarray(box_rows["w"])
    return {
        "channel": dk.CHANNEL_NAMES[channel],
        "parent": _PARENT[channel],
        "mc_events": int(n_mc),
        "digitised": int(n_cand),
        "mean_w_generated": w_gen_sum / max(n_mc, 1),
        "selected": int(w_box.size),
        "sum_w": float(w_box.sum()),
        "sum_w2": float((w_box**2).sum()),
        "box_events": box_rows,
        "near_box_events": near_rows,
        "cut_flow": flow,
        "seconds": time.perf_counter() - t0,
    }


_ROW_KEYS = (
    "w",
    "z_decay_m",
    "e_electron_gev",
    "x_ecal_mm",
    "e_ecal_gev",
    "e_hcal_gev",
    "trk_p_gev",
    "neighbour",
    "pileup",
    "box",
)


def _rows(
    rows: dict[str, list[float]], m: np.ndarray, w: np.ndarray, tb: dict, res: Any, bl: Any, idx: np.ndarray
) -> None:
    """Append the events ``m`` of the table ``tb`` (spill rows ``idx``, selection ``res``) to ``rows``: weight,
    decay point, the decay electron's energy and x at the ECAL face (truth), reconstructed E_ECAL, E_HCAL and
    momentum, whether another beam particle came within 100 ns (truth), and whether they pass the pile-up cut
    and the box cut on their own (1/0)."""
    vals = {
        "w": w[m],
        "z_decay_m": bl.z_decay[idx][m],
        "e_electron_gev": bl.e_particle[idx][m],
        "x_ecal_mm": bl.x_mm[idx][m],
        "e_ecal_gev": np.asarray(tb["e_ecal"])[m],
        "e_hcal_gev": np.asarray(tb["e_hcal"])[m],
        "trk_p_gev": np.asarray(tb["trk_p_gev"])[m],
    }
    vals["neighbour"] = (np.asarray(tb["truth_flags"])[m] & TRUTH_PILEUP) != 0
    vals["pileup"] = res.masks["pileup"][m]
    vals["box"] = res.masks["box"][m]
    for k, v in vals.items():
        rows[k] += np.asarray(v, dtype=float).tolist()


def _add(flow: dict[str, Any], cut: str, m: np.ndarray, w: np.ndarray, z: np.ndarray, kicks: list[float]) -> None:
    """Add the events ``m`` to the cut-flow line ``cut``: count, weight, and decay points by region (before the
    first dipole kick, between the kicks, after the last)."""
    o = flow.setdefault(cut, {"events": 0, "weighted": 0.0, "z_before_dipoles": 0, "z_between": 0, "z_after": 0})
    zm = z[m]
    o["events"] += int(m.sum())
    o["weighted"] += float(np.asarray(w, np.float64)[m].sum())
    o["z_before_dipoles"] += int((zm < kicks[0]).sum())
    o["z_after"] += int((zm >= kicks[-1]).sum())
    o["z_between"] += int(zm.size - (zm < kicks[0]).sum() - (zm >= kicks[-1]).sum())


def natural_per_eot(cfg: Config, channel: int) -> float:
    """Decays of ``channel`` between z = 0 and the ECAL face per EOT at the beam energy: parents per EOT x
    P(decay) x BR."""
    p = dk.decay_probability(channel, float(cfg.beam.energy_gev), float(cfg.beamline.ecal_z_m))
    return _frac(cfg, _PARENT[channel]) / electron_fraction(cfg) * p * float(dk.BR[channel])


def allocation(cfg: Config) -> dict[int, float]:
    """Share of the MC events per channel: proportional to the square root of its natural rate (what
    minimises the summed bound of empty boxes, sum r_i / N_i at fixed sum N_i), at least :data:`MIN_SHARE`."""
    r = {ch: math.sqrt(natural_per_eot(cfg, ch)) for ch in dk.CHANNEL_NAMES}
    tot = sum(r.values())
    share = {ch: max(MIN_SHARE, v / tot) for ch, v in r.items()}
    norm = sum(share.values())
    return {ch: v / norm for ch, v in share.items()}


def _expected_flow(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The channels' cut flows added up: MC events and the expected events for the EOT of the estimate."""
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        scale = r["scale"]
        for cut, v in r["cut_flow"].items():
            o = out.setdefault(cut, {"expected": 0.0})
            o["expected"] += scale * v["weighted"]
            for k, x in v.items():
                if k != "weighted":
                    o[k] = o.get(k, 0) + x
    return out


def decays_in_flight(
    cfg: Config, calib: Calibration, eot: float, intensity: float, n_mc: int, seed: int, progress: Any
) -> dict[str, Any]:
    """Decays in flight of the beam's mu-, pi-, K- into an electron (see the module docstring); ``n_mc`` MC
    events shared by the four channels as :func:`allocation` says."""
    c = cfg.with_overrides(
        {"beam": {"dimuon_bias": 1.0, "particles_per_spill": float(intensity)}, "aprime": {"enabled": False}}
    )
    channels = tuple(dk.CHANNEL_NAMES)
    share = allocation(c)
    fe = electron_fraction(c)
    runs = []
    n = var = upper = 0.0
    for k, ch in enumerate(channels):

        def cb(done: int, total: int, _k: int = k) -> None:
            progress(_k * 1000 + int(1000 * done / max(total, 1)), 1000 * len(channels))

        r = run_channel(c, calib, ch, max(1, round(share[ch] * int(n_mc))), seed, cb)
        scale = float(eot) * _frac(c, r["parent"]) / fe / r["mc_events"]
        r["per_eot"] = _frac(c, r["parent"]) / fe
        r["natural_per_eot"] = natural_per_eot(c, ch)
        r["scale"] = scale
        r["n"] = scale * r["sum_w"]
        r["err_stat"] = scale * math.sqrt(r["sum_w2"]) if r["selected"] else 1.14 * scale * r["mean_w_generated"]
        n += r["n"]
        var += r["err_stat"] ** 2
        upper += r["n"] if r["selected"] else 2.303 * scale * r["mean_w_generated"]
        runs.append(r)
    err_stat = math.sqrt(var)
    err_syst = SYST_REL * n
    return {
        "n": n,
        "err": math.hypot(err_stat, err_syst),
        "err_stat": err_stat,
        "err_syst": err_syst,
        "mc": {
            "events": int(sum(r["mc_events"] for r in runs)),
            "box_events": int(sum(r["selected"] for r in runs)),
            "n_upper_90": upper if n == 0 else None,
            "cut_flow": _expected_flow(runs),
            "syst_rel": SYST_REL,
            "channels": runs,
        },
    }
