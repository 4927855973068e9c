"""The A' emitted inside the ECAL shower, at a depth the shower track length implies (issue 18, Table II).

:func:`sim_frontend.response.apply_response` lets an A' electron shower its visible energy E - E_A' from the
ECAL face, with E_A' = x E drawn for the full beam energy. For a light A' x is close to 1, so the recoil
shower is soft and often leaves too little in the preshower. In the target the A' is radiated by an
electron of the shower somewhere along its track; with E_A' > E_miss,min (half the beam energy and more)
only the primary can radiate it, after it has already radiated part of its energy. :func:`emit_at_depth`
redraws the A' and the ECAL and preshower deposits of the A' events accordingly:

1. emission depth t (X0): density proportional to the primary's track length above E_miss,min per unit
   depth, P(b t, ln(E/E_miss,min)) (Tsai/Rossi, :func:`sim_frontend.cascade.tsai_primary_track_length`,
   b = 4/3), drawn by inverting its cumulative on a grid over the ECAL depth;
2. the emitter's energy E_e: ln(E/E_e) Gamma-distributed with shape b t, truncated to E_e > E_miss,min;
   (t, E_e) kept with the probability sigma(E_e)/sigma(E) of radiating an A' above E_miss,min (rejection);
3. E_A' = x E_e with x from the IWW spectrum at E_e (:func:`sim_frontend.aprime.sample_x`), E_A' > E_miss,min;
4. what the primary radiated before t (E - E_e, bremsstrahlung photons) showers from t_g = u t + a
   conversion depth (exponential, 9/7 X0); the recoil electron (E_e - E_A') showers from t; both with
   :func:`sim_frontend.showers.em_shower` (the response's shower: profile, fluctuations, containment);
5. the primary's ionisation up to t: the MIP deposits of the ECAL and PS, in proportion to the depth.

:func:`ps_threshold_correction` is the ratio of the PS-threshold efficiencies of the two placements on the
same events. HCAL module 0 keeps the response's leak (a shower started a few X0 deep still ends well
inside the 40 X0 ECAL).
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


def _sigma_above(mass_gev: float, e_gev: np.ndarray, emiss_min_gev: float) -> np.ndarray:
    """A' cross-section (pb, eps = 1) of an electron of ``e_gev`` for E_A' > ``emiss_min_gev``."""
    from sim_frontend import aprime

    x_lo = np.minimum(emiss_min_gev / e_gev, 1.0)
    ok = e_gev * (1.0 - 1e-9) > emiss_min_gev
    out = np.zeros(e_gev.shape)
    out[ok] = aprime.sigma_x_range(mass_gev, e_gev[ok], x_lo[ok], None)
    return out


def sample_emission(
    mass_gev: float, e_gev: np.ndarray, emiss_min_gev: float, rng: np.random.Generator, max_passes: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth t (X0), emitter energy E_e and A' energy (GeV) of an A' with E_A' > ``emiss_min_gev`` radiated by
    the primary of energy ``e_gev``: (t, E_e) from the primary's track length above E_miss,min (steps 1-2 of
    the module docstring with E_A' -> E_miss,min), kept with probability sigma(E_e, E_A' > E_miss,min) /
    sigma(E, same) (rejection, redrawing the rejected), then x = E_A'/E_e from the IWW spectrum."""
    from sim_frontend import aprime

    n = e_gev.size
    t, e_e = np.zeros(n), e_gev.copy()
    todo = np.arange(n)
    sigma_top = _sigma_above(mass_gev, e_gev, emiss_min_gev)
    for _ in range(max_passes):
        if todo.size == 0:
            break
        lr = np.log(e_gev[todo] / emiss_min_gev)
        tt = sample_depth(lr, rng.random(todo.size))
        ee = sample_emitter_energy(e_gev[todo], np.full(todo.size, emiss_min_gev), tt, rng.random(todo.size))
        keep = rng.random(todo.size) * sigma_top[todo] <= _sigma_above(mass_gev, ee, emiss_min_gev)
        t[todo[keep]], e_e[todo[keep]] = tt[keep], ee[keep]
        todo = todo[~keep]
    # x relative to the emitter, per energy bin (the IWW grid is built per energy)
    e_a = np.empty(n)
    edges = np.quantile(e_e, np.linspace(0.0, 1.0, 17))
    which = np.clip(np.searchsorted(edges, e_e, side="right") - 1, 0, 15)
    for b in range(16):
        sel = np.flatnonzero(which == b)
        if sel.size:
            e_lo = float(e_e[sel].min())  # x_min of the bin's softest emitter: every E_A' above E_miss,min
            x = aprime.sample_x(mass_gev, e_lo, sel.size, rng, x_min=min(emiss_min_gev / e_lo, 1.0 - 1e-6))
            e_a[sel] = np.maximum(x * e_e[sel], emiss_min_gev)
    return t, e_e, np.minimum(e_a, e_e)


def emit_at_depth(
    spill: BeamSpill, dep: Deposits, pick: np.ndarray, seed: int, mass_mev: float, emiss_min_gev: float
) -> dict[str, np.ndarray]:
    """Redraw the A' of the events ``pick`` of ``spill`` (``mass_mev``, E_A' > ``emiss_min_gev``) as radiated
    inside the shower (:func:`sample_emission`) and their PS and ECAL deposits (in ``dep`` and in the
    truth, E_A' in ``e_invisible``). Returns per picked event the depth ``t_x0``, the emitter energy
    ``e_emitter_gev``, the A' energy and the preshower deposit before (``ps_face_gev``, the A' at the face)
    and after (``ps_depth_gev``) the redraw."""
    from detector.records import TRUTH_APRIME

    truth = spill.truth
    pick = np.asarray(pick, dtype=np.int64)
    if spill.beamline is None:
        raise ValueError("the spill has no beam-line transport: run apply_response first")
    e = spill.beamline.e_front[pick].astype(np.float64)
    ok = ((truth["flags"][pick] & TRUTH_APRIME) != 0) & (e > emiss_min_gev * (1.0 + 1e-6))
    rng = np.random.default_rng([int(seed), int(spill.seed) & 0xFFFFFFFF, STREAM])
    t, e_emit = np.zeros(pick.size), e.copy()
    e_a = truth["e_invisible"][pick].astype(np.float64)
    if ok.any():
        t[ok], e_emit[ok], e_a[ok] = sample_emission(mass_mev * 1e-3, e[ok], emiss_min_gev, rng)
    u_g, u_c = rng.random((2, pick.size))
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
    # the cells share the sums with the shape code's lateral profile: a redrawn event whose face response
    # left nothing visible (E_A' drawn above the energy that reached the ECAL) now has an e.m. shower there
    redrawn = pick[ok & (ecal_new > 0.0)]
    dep.shape[redrawn, 0] = g.SHAPE_EM
    truth["e_ps"][pick] = ps_new.astype(np.float32)
    truth["e_ecal"][pick] = ecal_new.astype(np.float32)
    truth["e_invisible"][pick] = e_a.astype(np.float32)
    return {
        "t_x0": t,
        "e_emitter_gev": e_emit,
        "e_aprime_gev": e_a,
        "ps_face_gev": ps_face,
        "ps_depth_gev": ps_new,
        "redrawn": ok,
    }


def ps_threshold_correction(ps_face_gev: np.ndarray, ps_depth_gev: np.ndarray, ps_min_gev: float) -> float:
    """Fraction of events above the PS threshold with the A' at its sampled depth over the same fraction
    with the A' at the ECAL face (true deposits, strict threshold as the trigger's)."""
    face = float(np.mean(np.asarray(ps_face_gev) > ps_min_gev))
    return float(np.mean(np.asarray(ps_depth_gev) > ps_min_gev)) / face if face > 0 else math.nan
