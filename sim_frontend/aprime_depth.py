"""The A' emitted inside the ECAL shower, at a depth the primary's path implies (docs/physics.md 6.3.1,
the paper's Table II).

The response kernel (:func:`sim_frontend.response.apply_response`) first lets an A' electron shower its
visible energy E - E_A' from the ECAL face, with E_A' = x E drawn for the full beam energy. For a light A' x
is close to 1, so that recoil shower is soft and often leaves too little in the preshower. In the target the
A' is radiated by an electron of the shower somewhere along its track; with E_A' > E_miss,min (half the beam
energy and more) only the primary can radiate it, after it has already radiated part of its energy.
:func:`emit_at_depth`, which ``apply_response`` calls on every A' electron (the emulator's injection and the
offline signal simulation alike, :class:`AprimeEmission`), redraws the A' and the ECAL and preshower
deposits of the A' events accordingly:

1. the primary's path (:func:`primary_path`): bremsstrahlung emissions at exponential intervals (rate
   R_b per X0 for photon fractions y > ``Y_MIN``, :func:`sim_frontend.cascade.brems_rate_per_x0`), y from
   the complete-screening spectrum (the cascade's sampler), the electron keeping (1 - y) -- the same
   physics as the 1D cascade (docs/physics.md 3.4) -- up to ``T_CAP_X0``;
2. the emission point: (path, depth t) kept with probability sigma(E(t)) / sigma(E) of radiating an A'
   above E_miss,min at the primary's energy E(t) there (t uniform in [0, ``T_CAP_X0``], rejection, the
   rejected redrawn with a new path): the depth follows the primary's track length above E_miss,min
   (Tsai/Rossi, :func:`sim_frontend.cascade.tsai_primary_track_length`), the emitter energy E_e = E(t);
3. E_A' = x E_e with x from the IWW spectrum at E_e truncated at E_A' > E_miss,min (:func:`aprime_energy`);
4. each bremsstrahlung photon radiated before t showers from its own conversion depth (its emission depth +
   an exponential of mean 9/7 X0), the recoil electron (E_e - E_A') from t; all with
   :func:`sim_frontend.showers.em_shower` (the response's shower: profile, fluctuations, containment);
   the photons the electron radiated in the beam line behind the magnets and that land on the ECAL with it
   (the transport's ``e_front - e_particle``) shower likewise from their own conversion depth (their sum as
   one photon): they are not the emitter's energy. Several photons converting at their own depths, not
   one photon carrying E - E_e: the preshower sees the early ones, as in a real shower;
5. the primary's ionisation up to t: the MIP deposits of the ECAL and PS, in proportion to the depth.

:func:`ps_threshold_correction` is the ratio of the PS-threshold efficiencies of the two placements on the
same events. HCAL module 0 keeps the response's leak (a shower started a few X0 deep still ends well
inside the 40 X0 ECAL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from detector.settings import Config
from sim_frontend import geometry as g
from sim_frontend import physics_constants as pc
from sim_frontend.beam import X_MIN_APRIME, BeamSpill, rng_state
from sim_frontend.cascade import PHOTON_CONVERSION_RATE_PER_X0, _sample_brems_y_numpy, brems_rate_per_x0
from sim_frontend.showers import PS_FRACTION_TABLE, em_shower

if TYPE_CHECKING:
    from sim_frontend.response import Deposits

STREAM = 0xDE97  #: random stream of the depth redraw (independent of the response's streams)
#: bremsstrahlung photons of the primary below this energy fraction are neglected (they carry ~1e-3 of its
#: energy per X0)
Y_MIN = 1e-3
#: deepest emission point considered (X0): a 100 GeV primary keeps E > 50 GeV beyond it with a probability
#: P(b T, ln 2) (Tsai) below 1e-4, which the rejection ignores
T_CAP_X0 = 5.0
SIGMA_GRID_POINTS = 256  #: energies of the sigma(E, E_A' > E_miss,min) table the rejection interpolates
MAX_PASSES = 2000  #: rejection passes before giving up (each accepts ~ the track length / T_CAP_X0)
ENERGY_BINS = 16  #: emitter-energy bins of :func:`aprime_energy` (one x grid each)
X_PASSES = 200  #: rejection passes of :func:`aprime_energy` before an emitter at the threshold takes E_miss,min


@dataclass(frozen=True)
class AprimeEmission:
    """How :func:`sim_frontend.response.apply_response` places the A' of the TRUTH_APRIME electrons: mass
    ``mass_mev`` (MeV), ``emiss_min_fraction`` the smallest A' energy of the sample over the electron's beam
    energy, ``seed`` a random
    stream (combined with the spill's seed), ``at_face`` True to keep the A' at the ECAL face (the
    comparison of ``na64-offline efficiency --face``), else emitted at its depth (:func:`emit_at_depth`)."""

    mass_mev: float
    emiss_min_fraction: float
    seed: int = 0
    at_face: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> AprimeEmission:
        """The beam generator's A' (:func:`sim_frontend.beam.generate_spill`): ``aprime.mass_mev``, E_A' above
        ``X_MIN_APRIME`` of the electron's beam energy; at its depth."""
        return cls(float(cfg.aprime.mass_mev), X_MIN_APRIME)


@dataclass
class PrimaryPath:
    """Bremsstrahlung emissions of the primaries of a block of events, padded to the longest path:
    ``t_x0`` (n, k) emission depths (inf beyond the path's end), ``photon_gev`` (n, k) photon energies (0
    beyond), ``e_after_gev`` (n, k) the primary's energy after each emission, ``e0_gev`` (n,) at the face."""

    t_x0: np.ndarray
    photon_gev: np.ndarray
    e_after_gev: np.ndarray
    e0_gev: np.ndarray

    def energy_at(self, t_x0: np.ndarray) -> np.ndarray:
        """Energy (GeV) of each primary at depth ``t_x0`` (n,)."""
        k = (self.t_x0 <= np.asarray(t_x0)[:, None]).sum(axis=1)
        after = np.take_along_axis(self.e_after_gev, np.maximum(k - 1, 0)[:, None], axis=1)[:, 0]
        return np.where(k > 0, after, self.e0_gev)


def primary_path(
    e_gev: np.ndarray, e_stop_gev: float, rng: np.random.Generator, t_cap_x0: float = T_CAP_X0, y_min: float = Y_MIN
) -> PrimaryPath:
    """Bremsstrahlung path of primaries of ``e_gev`` (GeV) through the ECAL (step 1 of the module docstring),
    followed until their energy falls below ``e_stop_gev`` or the depth passes ``t_cap_x0``."""
    e0 = np.asarray(e_gev, dtype=np.float64)
    n = e0.size
    rate = brems_rate_per_x0(y_min)
    t, e = np.zeros(n), e0.copy()
    active = np.arange(n)
    ts, ks, es = [], [], []
    while active.size:
        t[active] += rng.exponential(1.0 / rate, active.size)
        active = active[t[active] <= t_cap_x0]
        y = _sample_brems_y_numpy(active.size, y_min, rng)
        k = y * e[active]
        e[active] -= k
        col_t, col_k = np.full(n, np.inf), np.zeros(n)
        col_t[active], col_k[active] = t[active], k
        ts.append(col_t)
        ks.append(col_k)
        es.append(e.copy())
        active = active[e[active] >= e_stop_gev]
    if not ts:
        return PrimaryPath(np.full((n, 0), np.inf), np.zeros((n, 0)), np.zeros((n, 0)), e0)
    return PrimaryPath(np.stack(ts, axis=1), np.stack(ks, axis=1), np.stack(es, axis=1), e0)


def _sigma_above(mass_gev: float, e_gev: np.ndarray, emiss_min_gev: float) -> np.ndarray:
    """A' cross-section (pb, eps = 1) of an electron of ``e_gev`` for E_A' > ``emiss_min_gev``."""
    from sim_frontend import aprime

    x_lo = np.minimum(emiss_min_gev / e_gev, 1.0)
    ok = e_gev * (1.0 - 1e-9) > emiss_min_gev
    out = np.zeros(e_gev.shape)
    out[ok] = aprime.sigma_x_range(mass_gev, e_gev[ok], x_lo[ok], None)
    return out


def aprime_energy(mass_gev: float, e_e: np.ndarray, emiss_min_gev: float, rng: np.random.Generator) -> np.ndarray:
    """A' energies E_A' = x E_e (GeV) radiated by emitters of ``e_e`` (GeV), E_A' > ``emiss_min_gev``: x from the
    IWW spectrum (:func:`sim_frontend.aprime.sample_x`) truncated at E_miss,min / E_e for each emitter.

    The emitters are grouped in :data:`ENERGY_BINS` quantile bins with one x grid each, drawn at the bin's
    softest emitter from the lowest x any of its emitters needs (E_miss,min over the bin's hardest); an x with
    x E_e <= E_miss,min is drawn again. That is exact up to the energy dependence of the spectrum's shape,
    which the IWW form (2.3 (c)) has only through the kinematic factor sqrt(x^2 E^2 - m^2) (negligible for
    x E >> m): a drawn x is accepted with the truncation of its own emitter. An emitter so close to
    E_miss,min that X_PASSES draws give nothing above it takes E_miss,min."""
    from sim_frontend import aprime

    e_e = np.asarray(e_e, dtype=np.float64)
    e_a = np.full(e_e.size, float(emiss_min_gev))
    if e_e.size == 0:
        return e_a
    edges = np.quantile(e_e, np.linspace(0.0, 1.0, ENERGY_BINS + 1))
    which = np.clip(np.searchsorted(edges, e_e, side="right") - 1, 0, ENERGY_BINS - 1)
    for b in range(ENERGY_BINS):
        todo = np.flatnonzero(which == b)
        if todo.size == 0:
            continue
        e_lo, e_hi = float(e_e[todo].min()), float(e_e[todo].max())
        x_hi = 1.0 - pc.M_E_GEV / e_lo  # the kinematic end of the bin's grid
        x_min = min(emiss_min_gev / e_hi, x_hi - 1e-9)
        for _ in range(X_PASSES):
            ea = aprime.sample_x(mass_gev, e_lo, todo.size, rng, x_min=x_min) * e_e[todo]
            ok = ea > emiss_min_gev
            e_a[todo[ok]] = ea[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
    return np.minimum(e_a, e_e)


@dataclass
class Emission:
    """A' emissions of a block of events (:func:`sample_emission`): depth ``t_x0``, emitter energy
    ``e_emitter_gev``, A' energy ``e_aprime_gev`` (n,), and the primary's bremsstrahlung photons radiated
    before the emission: energies ``photon_gev`` and conversion depths ``photon_conv_x0`` (n, k; 0 GeV where
    there is none)."""

    t_x0: np.ndarray
    e_emitter_gev: np.ndarray
    e_aprime_gev: np.ndarray
    photon_gev: np.ndarray
    photon_conv_x0: np.ndarray


def sample_emission(mass_gev: float, e_gev: np.ndarray, emiss_min_gev: float, rng: np.random.Generator) -> Emission:
    """The A' (E_A' > ``emiss_min_gev``) radiated by primaries of ``e_gev`` (GeV) along their path: steps
    1-3 of the module docstring, and the photons radiated before it with their conversion depths."""

    e_gev = np.asarray(e_gev, dtype=np.float64)
    n = e_gev.size
    grid = np.linspace(emiss_min_gev, max(float(e_gev.max()), emiss_min_gev) * 1.0001, SIGMA_GRID_POINTS)
    sig_grid = _sigma_above(mass_gev, grid, emiss_min_gev)
    sigma_top = np.interp(e_gev, grid, sig_grid)
    t, e_e = np.zeros(n), e_gev.copy()
    k_max = 0
    photons: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (events, energies, depths)
    todo = np.arange(n)
    for _ in range(MAX_PASSES):
        if todo.size == 0:
            break
        path = primary_path(e_gev[todo], emiss_min_gev, rng)
        tt = rng.uniform(0.0, T_CAP_X0, todo.size)
        ee = path.energy_at(tt)
        keep = (ee > emiss_min_gev) & (rng.random(todo.size) * sigma_top[todo] <= np.interp(ee, grid, sig_grid))
        before = path.t_x0[keep] < tt[keep, None]
        photons.append((todo[keep], np.where(before, path.photon_gev[keep], 0.0), path.t_x0[keep]))
        k_max = max(k_max, path.t_x0.shape[1])
        t[todo[keep]], e_e[todo[keep]] = tt[keep], ee[keep]
        todo = todo[~keep]
    if todo.size:
        raise RuntimeError(f"{todo.size} A' emissions not placed after {MAX_PASSES} passes")
    photon_gev, photon_t = np.zeros((n, k_max)), np.zeros((n, k_max))
    for idx, k, tk in photons:
        photon_gev[idx, : k.shape[1]] = k
        photon_t[idx, : k.shape[1]] = np.where(k > 0, tk, 0.0)
    conv = photon_t + rng.exponential(1.0 / PHOTON_CONVERSION_RATE_PER_X0, photon_t.shape)
    e_a = aprime_energy(mass_gev, e_e, emiss_min_gev, rng)
    return Emission(t, e_e, e_a, photon_gev, np.where(photon_gev > 0, conv, 0.0))


def emit_at_depth(
    spill: BeamSpill, dep: Deposits, pick: np.ndarray, seed: int, mass_mev: float, emiss_min_fraction: float
) -> dict[str, np.ndarray]:
    """Redraw the A' of the events ``pick`` of ``spill`` (``mass_mev``, E_A' > E_miss,min =
    ``emiss_min_fraction`` x the electron's beam energy ``e_beam``, the definition the beam generator and the
    signal sample draw x with) as radiated inside the shower (:func:`sample_emission`, drawn at the mean beam
    energy of the events and scaled to each one's: the beam's spread is ~1%) and their PS and ECAL deposits
    (in ``dep`` and in the truth, E_A' in ``e_invisible``). Returns per picked event (``index``: ``pick``) the
    depth ``t_x0``, the emitter energy ``e_emitter_gev``, the A' energy and the preshower deposit before
    (``ps_face_gev``, the A' at the face) and after (``ps_depth_gev``) the redraw."""
    from detector.records import TRUTH_APRIME

    truth = spill.truth
    pick = np.asarray(pick, dtype=np.int64)
    if spill.beamline is None:
        raise ValueError("the spill has no beam-line transport: run apply_response first")
    e_front = spill.beamline.e_front[pick].astype(np.float64)
    e_el = spill.beamline.e_particle[pick].astype(np.float64)
    # the electron itself entered the ECAL matrix (e_front holds it and its beam-line photons that land there):
    # it is the emitter; those photons shower from their own conversion depth, in front of the PS
    inside = e_front >= e_el * (1.0 - 1e-6)
    e = np.where(inside, e_el, 0.0)
    e_gamma = e_front - e
    e_beam = truth["e_beam"][pick].astype(np.float64)
    flagged = (truth["flags"][pick] & TRUTH_APRIME) != 0
    ok = flagged & (e > emiss_min_fraction * e_beam * (1.0 + 1e-6))
    rng = np.random.default_rng([int(seed), int(spill.seed) & 0xFFFFFFFF, STREAM])
    t, e_emit = np.zeros(pick.size), e.copy()
    e_a = truth["e_invisible"][pick].astype(np.float64)
    # an electron that reaches the ECAL with E_miss,min or less (it radiated in the beam line, or was bent
    # off the ECAL) cannot radiate such an A': it showers as any electron, with nothing invisible
    e_a[flagged & ~ok] = 0.0
    n_photons = np.zeros(pick.size, dtype=np.int64)
    ps_face = dep.trigger[pick, 4].astype(np.float64)
    ps_new, ecal_new = ps_face.copy(), dep.trigger[pick, 5].astype(np.float64)
    x, y = truth["x_mm"][pick].astype(np.float64), truth["y_mm"][pick].astype(np.float64)
    base = np.uint64(spill.seed) ^ np.uint64(STREAM)
    rows = np.flatnonzero(ok)
    in_shower: dict[int, list[tuple[float, float]]] = {}  # event -> (energy, conversion depth) of its photons
    if rows.size:
        e_ref = float(np.mean(e_beam[rows]))
        scale = e_beam[rows] / e_ref
        em = sample_emission(mass_mev * 1e-3, e[rows] / scale, emiss_min_fraction * e_ref, rng)
        t[rows], e_emit[rows], e_a[rows] = em.t_x0, em.e_emitter_gev * scale, em.e_aprime_gev * scale
        n_photons[rows] = (em.photon_gev > 0).sum(axis=1)
        for j, k in enumerate(rows):
            in_shower[int(k)] = list(zip(em.photon_gev[j] * scale[j], em.photon_conv_x0[j]))
    conv_front = rng.exponential(1.0 / PHOTON_CONVERSION_RATE_PER_X0, pick.size)
    for k in np.flatnonzero(flagged):
        st = np.uint64(rng_state(base, np.uint64(truth["index"][pick[k]]), np.uint64(7)))
        ps_k = ec_k = 0.0
        showers = [(e_emit[k] - e_a[k], t[k]), *in_shower.get(int(k), []), (e_gamma[k], conv_front[k])]
        for kg, tc in showers:  # the recoil (or the electron) first, then the photons
            if kg > 0.0:
                # numba hands the state back as a Python int: the next call needs the uint64 again
                st, ps_g, ec_g, _ = em_shower(np.uint64(st), kg, x[k], y[k], PS_FRACTION_TABLE, tc)
                ps_k += ps_g
                ec_k += ec_g
        ps_new[k] = ps_k + g.PS_MIP_GEV * min(t[k], g.PS_X0) / g.PS_X0
        ecal_new[k] = ec_k + g.ECAL_MIP_GEV * min(t[k], g.ECAL_X0) / g.ECAL_X0
    dep.trigger[pick, 4] = ps_new.astype(np.float32)
    dep.trigger[pick, 5] = ecal_new.astype(np.float32)
    # the cells share the sums with the shape code's lateral profile: a redrawn event whose face response
    # left nothing visible (E_A' drawn above the energy that reached the ECAL) now has an e.m. shower there
    redrawn = pick[flagged & (ecal_new > 0.0)]
    dep.shape[redrawn, 0] = g.SHAPE_EM
    truth["e_ps"][pick] = ps_new.astype(np.float32)
    truth["e_ecal"][pick] = ecal_new.astype(np.float32)
    truth["e_invisible"][pick] = e_a.astype(np.float32)
    return {
        "index": pick,
        "t_x0": t,
        "e_emitter_gev": e_emit,
        "e_aprime_gev": e_a,
        "ps_face_gev": ps_face,
        "ps_depth_gev": ps_new,
        "redrawn": ok,
        "n_photons": n_photons,
    }


def ps_threshold_correction(ps_face_gev: np.ndarray, ps_depth_gev: np.ndarray, ps_min_gev: float) -> float:
    """Fraction of events above the PS threshold with the A' at its sampled depth over the same fraction
    with the A' at the ECAL face (true deposits, strict threshold as the trigger's)."""
    face = float(np.mean(np.asarray(ps_face_gev) > ps_min_gev))
    return float(np.mean(np.asarray(ps_depth_gev) > ps_min_gev)) / face if face > 0 else math.nan
