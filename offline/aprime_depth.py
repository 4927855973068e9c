"""The A' emitted inside the ECAL shower, at a depth the shower track length implies (issue 18, Table II).

:func:`sim_frontend.response.apply_response` lets an A' electron shower its visible energy E - E_A' from the
ECAL face. In the target the A' is radiated by an electron of the shower somewhere along its track; with
E_A' > E_miss,min (half the beam energy and more) only an electron above E_A' can radiate it, in practice the
primary. :func:`emit_at_depth` redraws the ECAL and preshower deposits of the A' events accordingly:

1. emission depth t (X0): density proportional to the primary's track length above E_A' per unit depth,
   P(b t, ln(E/E_A')) (Tsai/Rossi, :func:`sim_frontend.cascade.tsai_primary_track_length`, b = 4/3), drawn
   by inverting its cumulative on a grid over the ECAL depth;
2. the emitting electron's energy E_e: ln(E/E_e) Gamma-distributed with shape b t, truncated to E_e > E_A';
3. what the primary radiated before t (E - E_e, bremsstrahlung photons) showers from t_g = u t + a
   conversion depth (exponential, 9/7 X0); the recoil electron (E_e - E_A') showers from t; both with
   :func:`sim_frontend.showers.em_shower` (the response's shower: profile, fluctuations, containment);
4. the primary's ionisation up to t: the MIP deposits of the ECAL and PS, in proportion to the depth.

The preshower, where the trigger and the ``ps`` cut look, sees less than the face emission gives when the
recoil shower starts deep; :func:`ps_threshold_correction` is the ratio of the PS-threshold efficiencies of
the two placements on the same events. HCAL module 0 keeps the response's leak (a shower started a few X0
deep still ends well inside the 40 X0 ECAL).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from sim_frontend import geometry as g
from sim_frontend.beam import BeamSpill, rng_state
from sim_frontend.cascade import PHOTON_CONVERSION_RATE_PER_X0, TSAI_B
from sim_frontend.response import Deposits
from sim_frontend.showers import PS_FRACTION_TABLE, em_shower

DEPTH_GRID_POINTS = 400  #: points of the depth grid over the ECAL (X0) for the inverse cumulative
STREAM = 0xDE97  #: random stream of the depth redraw (independent of the response's streams)


def sample_depth(log_ratio: np.ndarray, u: np.ndarray, t_max_x0: float = g.ECAL_X0) -> np.ndarray:
    """Emission depth (X0) for each event with ln(E/E_A') = ``log_ratio``, from uniforms ``u``: the inverse
    of the cumulative of P(b t, ln(E/E_A')) over [0, t_max_x0]."""
    t = np.linspace(0.0, t_max_x0, DEPTH_GRID_POINTS)
    lr = np.asarray(log_ratio, dtype=float)[:, None]
    dens = np.where(t[None, :] > 0, special.gammainc(TSAI_B * np.maximum(t[None, :], 1e-12), lr), 1.0)
    cum = np.concatenate([np.zeros((lr.shape[0], 1)), np.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]), axis=1)], axis=1)
    cum /= cum[:, -1:]
    return np.array([np.interp(ui, c, t) for ui, c in zip(np.asarray(u, dtype=float), cum)])


def sample_emitter_energy(e_gev: np.ndarray, e_aprime_gev: np.ndarray, t_x0: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Energy (GeV) of the primary at depth t: ln(E/E_e) ~ Gamma(b t), truncated to E_e > E_A'."""
    shape = np.maximum(TSAI_B * np.asarray(t_x0, dtype=float), 1e-9)
    top = special.gammainc(shape, np.log(e_gev / e_aprime_gev))
    s = special.gammaincinv(shape, np.clip(np.asarray(u) * top, 1e-300, None))
    return np.maximum(e_gev * np.exp(-s), e_aprime_gev)


def emit_at_depth(spill: BeamSpill, dep: Deposits, pick: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Redraw the PS and ECAL deposits of the A' events ``pick`` of ``spill`` (in ``dep`` and in the truth)
    with the A' emitted at a sampled depth (module docstring). Returns per picked event the depth ``t_x0``,
    the emitter energy ``e_emitter_gev`` and the preshower deposit before (``ps_face_gev``) and after
    (``ps_depth_gev``) the redraw."""
    from detector.records import TRUTH_APRIME

    truth = spill.truth
    pick = np.asarray(pick, dtype=np.int64)
    if spill.beamline is None:
        raise ValueError("the spill has no beam-line transport: run apply_response first")
    e = spill.beamline.e_front[pick].astype(np.float64)
    e_a = truth["e_invisible"][pick].astype(np.float64)
    ok = ((truth["flags"][pick] & TRUTH_APRIME) != 0) & (e > e_a) & (e_a > 0)
    rng = np.random.default_rng([int(seed), int(spill.seed) & 0xFFFFFFFF, STREAM])
    u_t, u_e, u_g, u_c = rng.random((4, pick.size))
    lr = np.where(ok, np.log(np.where(ok, e / np.where(e_a > 0, e_a, 1.0), 2.0)), math.log(2.0))
    t = sample_depth(lr, u_t)
    e_emit = np.where(ok, sample_emitter_energy(np.where(ok, e, 2.0), np.where(ok, e_a, 1.0), t, u_e), e)
    t_gamma = u_g * t - np.log1p(-u_c) / PHOTON_CONVERSION_RATE_PER_X0
    ps_face = dep.trigger[pick, 4].astype(np.float64)
    ps_new, ecal_new = ps_face.copy(), dep.trigger[pick, 5].astype(np.float64)
    x, y = truth["x_mm"][pick].astype(np.float64), truth["y_mm"][pick].astype(np.float64)
    base = np.uint64(spill.seed) ^ np.uint64(STREAM)
    for k in np.flatnonzero(ok):
        st = np.uint64(rng_state(base, np.uint64(truth["index"][pick[k]]), np.uint64(7)))
        st, ps_r, ec_r, _ = em_shower(st, e_emit[k] - e_a[k], x[k], y[k], PS_FRACTION_TABLE, t[k])
        ps_g = ec_g = 0.0
        if e[k] - e_emit[k] > 0.0:
            # numba hands the state back as a Python int: the next call needs the uint64 again
            _, ps_g, ec_g, _ = em_shower(np.uint64(st), e[k] - e_emit[k], x[k], y[k], PS_FRACTION_TABLE, t_gamma[k])
        ps_new[k] = ps_r + ps_g + g.PS_MIP_GEV * min(t[k], g.PS_X0) / g.PS_X0
        ecal_new[k] = ec_r + ec_g + g.ECAL_MIP_GEV * min(t[k], g.ECAL_X0) / g.ECAL_X0
    dep.trigger[pick, 4] = ps_new.astype(np.float32)
    dep.trigger[pick, 5] = ecal_new.astype(np.float32)
    truth["e_ps"][pick] = ps_new.astype(np.float32)
    truth["e_ecal"][pick] = ecal_new.astype(np.float32)
    return {"t_x0": t, "e_emitter_gev": e_emit, "ps_face_gev": ps_face, "ps_depth_gev": ps_new, "redrawn": ok}


def ps_threshold_correction(ps_face_gev: np.ndarray, ps_depth_gev: np.ndarray, ps_min_gev: float) -> float:
    """Fraction of events above the PS threshold with the A' at its sampled depth over the same fraction
    with the A' at the ECAL face (true deposits, strict threshold as the trigger's)."""
    face = float(np.mean(np.asarray(ps_face_gev) > ps_min_gev))
    return float(np.mean(np.asarray(ps_depth_gev) > ps_min_gev)) / face if face > 0 else math.nan
