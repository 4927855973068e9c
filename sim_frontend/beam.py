"""Beam generator: one SPS spill of beam particles with arrival times, types, energies, impact points and
the decisions of the rare processes (A' emission, gamma -> mu mu), as simulation truth.

Per spill (``generate_spill``):

- ``N`` particles (``beam.particles_per_spill``) with arrival times distributed as a Poisson process over
  the flat top ``spill.length_s``: uniform order statistics, made as the normalised cumulative sum of
  ``N + 1`` exponential gaps (so the spacing is exponential and the times are sorted by construction);
- composition: pi- (``frac_pion``), K- (``frac_kaon``), mu- (``frac_muon``), halo (``frac_halo``: muons
  at 40-300 mm from the axis that fire S0, S1, V0 and, with ``frac_halo_v1``, V1, never S2..S4), the rest
  e- of ``beam.energy_gev`` with a Gaussian relative spread ``energy_spread``; beam spot Gaussian of
  ``sigma_mm`` around (``x_mm``, ``y_mm``) at the start of the beam line (z = 0 of ``[beamline]``). Electrons
  that interact in the beam-line material are not a population of their own: they come out of
  :mod:`sim_frontend.beamline`, which transports every particle to the ECAL face;
- low-energy tail (docs/physics.md 1.1): an electron radiated in the ``tail_x0`` radiation lengths the H4 beam
  crosses after its momentum selection and before z = 0 with probability ``1 - exp(-tail_x0 * R)``, R the
  bremsstrahlung photons per X0 with energy fraction y in [``tail_y_min``, ``TAIL_Y_MAX``]
  (:mod:`sim_frontend.bremsstrahlung`); it arrives with (1 - y) of its energy, y from that spectrum (one
  photon: the thickness is a few 1e-3 X0), and goes through the same beam line as the others (the dipoles
  bend it by 21 mrad x E0/E, its synchrotron light scales as E^2). The photon it radiated goes straight on
  with it and is not simulated: it stays on the undeflected line, ~40 cm beside the ECAL and outside the
  HCAL (docs/physics.md 1.10). Its own counter-based stream (``TAIL_STREAM``) decides, so the other
  draws of every particle are those of a beam without tail;
- A' (``aprime.enabled``): each beam e- emits an invisibly decaying A' with probability
  ``n_A'/eps^2 per EOT (sim_frontend.yields, IWW, E_A' > X_MIN_APRIME * E0) * eps^2 * b_A'``;
  its energy fraction x comes from ``sim_frontend.aprime.sample_x`` (x > X_MIN_APRIME), ``e_invisible =
  x * e_beam``, ``weight = 1/b_A'``, flag TRUTH_APRIME. At physical couplings (eps ~ 1e-4) this is ~6e-11 per
  electron, so recorded test runs and demos inject a *visible test* epsilon (e.g. eps = 0.1, excluded long
  ago) at its physical rate;
- dimuons: each beam e- produces gamma -> mu+ mu- in its shower with probability
  ``P = N_X0 * Integral 0.572 E0/k^2 sigma_BH(k) dk`` (Rossi approximation-A photon track length times the
  Bethe-Heitler cross-section of ``sim_frontend.dimuon``; 1.6e-4 per 100 GeV e- in Pb) times ``b_mumu``;
  weight = 1/b_mumu, flag TRUTH_DIMUON. The muon kinematics are drawn by the detector response
  (:mod:`sim_frontend.response`) from the same seed;
- the biases b_A', b_mumu (and b_tail of the low-energy tail) come from the ``bias`` argument (:class:`Bias`)
  and are 1 unless an MC sample asks for them: recorded data (the emulator's feed) are never biased, so their
  rates are physical. MC samples (offline simulation: signal efficiency, background estimates, dimuon
  studies) take ``Bias.from_config(cfg)`` (``beam.dimuon_bias``, ``aprime.bias``) or their own;
- unbiased electrons get the weight ``(1 - p_A' - p_mumu) / (1 - b_A' p_A' - b_mumu p_mumu)`` so that the
  weighted sample stays unbiased (1 when nothing is biased); the tail's bias multiplies it by 1/b_tail for a
  tail electron and by ``(1 - p_tail) / (1 - b_tail p_tail)`` for the others;
- TRUTH_PILEUP for every particle with another one within +/- ``PILEUP_WINDOW_NS`` (100 ns).

All randomness is counter based: a particle's random numbers are a pure function of the spill seed, its
index and a stream number (splitmix64), so any subset can be re-simulated, in any order and on any number of
threads, with the same result. The spill seed is derived from ``beam.seed`` and the spill number.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numba as nb
import numpy as np
from scipy.special import ndtri

from detector.records import PARTICLE_CODES, TRUTH_APRIME, TRUTH_DIMUON, TRUTH_DTYPE, TRUTH_PILEUP
from detector.settings import Config
from sim_frontend.bremsstrahlung import brem_quantiles, brem_rate_per_x0

PILEUP_WINDOW_NS = 100.0  #: TRUTH_PILEUP: another particle within +/- this, ns
X_MIN_APRIME = 0.5  #: A' energy fractions generated: x > 0.5 (E_miss > E0/2, where the beam e- dominates)
HALO_R_MM = (40.0, 300.0)  #: halo radius range at the ECAL face (uniform in r), mm
HALO_E_FRACTION = (0.2, 1.0)  #: halo muon energy as a fraction of the beam energy (uniform)
PHOTON_TRACK_LENGTH_A = 0.572  #: Rossi approx. A: photon track length dT/dk = 0.572 X0 E0/k^2
TAIL_Y_MAX = 0.99  #: largest energy fraction a tail electron lost upstream (it keeps at least 1% of E0)
TAIL_STREAM = 5  #: counter-RNG stream of the low-energy-tail decision

E_MINUS, PION, KAON, MUON, HALO = (PARTICLE_CODES[k] for k in ("e-", "pi-", "K-", "mu-", "halo"))

# ------------------------------------------------------------------------------ counter-based RNG
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0
_MASK64 = (1 << 64) - 1


@nb.njit(cache=True, nogil=True, inline="always")
def mix64(z: np.uint64) -> np.uint64:
    """splitmix64 finaliser (a bijective 64-bit hash)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(cache=True, nogil=True, inline="always")
def rng_state(seed: np.uint64, index: np.uint64, stream: np.uint64) -> np.uint64:
    """Start state of the random stream ``stream`` of particle ``index`` of the spill with ``seed``."""
    return mix64(seed ^ mix64(index * _GOLDEN + stream * _M2 + np.uint64(1)))


@nb.njit(cache=True, nogil=True, inline="always")
def rng_next(state: np.uint64):
    """(new state, uniform double in [0, 1))."""
    state = state + _GOLDEN
    return state, np.float64(mix64(state) >> _S11) * _INV53


def mix64_py(z: int) -> int:
    """Python version of :func:`mix64` (for seeds)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def spill_seed(base_seed: int, spill: int) -> int:
    """Per-spill seed (63 bit) from ``beam.seed`` and the spill number."""
    return mix64_py(mix64_py(int(base_seed)) ^ mix64_py(int(spill) + 0x5EED)) & ((1 << 63) - 1)


# Acklam's rational approximation of the normal quantile function (relative error < 1.2e-9), no tables.
_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


@nb.njit(cache=True, nogil=True)
def normal_ppf_exact(u: float) -> float:
    """Standard-normal quantile of ``u`` in (0, 1) (Acklam); u = 0 is treated as 2^-54."""
    if u <= 0.0:
        u = 5.551115123125783e-17
    if u < _P_LOW:
        q = math.sqrt(-2.0 * math.log(u))
        return (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
    if u > 1.0 - _P_LOW:
        q = math.sqrt(-2.0 * math.log(1.0 - u))
        return -(
            (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
            / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0)
        )
    q = u - 0.5
    r = q * q
    return ((((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q) / (
        ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0
    )


# Moyal distribution (Landau approximation, most probable value 0): quantile X(u) = -2 ln(-Phi^-1(u/2)).
# A 4097-node table (32 kB, cache resident) with linear interpolation in the body, exact in the tails.
_NM = 4096
MOYAL_Q = np.empty(_NM + 1)
MOYAL_Q[1:_NM] = -2.0 * np.log(-ndtri(np.arange(1, _NM) / _NM / 2.0))
MOYAL_Q[0] = MOYAL_Q[1]
MOYAL_Q[_NM] = MOYAL_Q[_NM - 1]


# Normal quantile table for speed: nodes at u = j/4096, linear interpolation for 2.9 > |z| (error < 1e-3 sigma),
# exact (Acklam) beyond.
NORMAL_Q = np.zeros(_NM + 1)
NORMAL_Q[1:_NM] = ndtri(np.arange(1, _NM) / _NM)
_N_EXACT = 8


@nb.njit(cache=True, nogil=True)
def normal_ppf(u: float) -> float:
    """Standard-normal quantile of ``u`` in [0, 1): table in the body, exact in the tails."""
    pos = u * _NM
    i = int(pos)
    if i < _N_EXACT or i >= _NM - _N_EXACT:
        return normal_ppf_exact(u)
    f = pos - i
    return NORMAL_Q[i] + (NORMAL_Q[i + 1] - NORMAL_Q[i]) * f


@nb.njit(cache=True, nogil=True)
def moyal_ppf(u: float) -> float:
    """Moyal quantile of ``u`` in [0, 1)."""
    pos = u * _NM
    i = int(pos)
    if i < 1 or i >= _NM - 1:
        return -2.0 * math.log(-normal_ppf_exact(0.5 * u))
    f = pos - i
    return MOYAL_Q[i] + (MOYAL_Q[i + 1] - MOYAL_Q[i]) * f


@nb.njit(cache=True, nogil=True)
def table_draw(q: np.ndarray, u: float) -> float:
    """Inverse-CDF draw from a quantile table ``q`` (length n + 1, nodes at j/n) at the uniform ``u``."""
    pos = u * (q.shape[0] - 1)
    i = int(pos)
    f = pos - i
    return q[i] + (q[i + 1] - q[i]) * f


@nb.njit(cache=True, nogil=True, inline="always")
def poisson_inverse(u: float, lam: float, p_zero: float, k_max: int) -> int:
    """Poisson(``lam``) count of the uniform ``u`` by inversion of the CDF (``p_zero`` = exp(-lam), passed so
    that callers can precompute it); at most ``k_max``."""
    pk = p_zero
    c = pk
    k = 0
    while u > c and k < k_max:
        k += 1
        pk *= lam / k
        c += pk
    return k


@nb.njit(cache=True, nogil=True)
def draw_normal(state: np.uint64):
    state, u = rng_next(state)
    return state, normal_ppf(u)


# ------------------------------------------------------------------------------ spill container
@dataclass
class BeamSpill:
    """One simulated spill: the truth of every beam particle, sorted by arrival time."""

    spill: int  #: spill number from the generator
    start_unix: float  #: start of the flat top, unix seconds
    length_s: float  #: flat-top length, s
    truth: np.ndarray  #: (N,) detector.records.TRUTH_DTYPE sorted by time_ns
    seed: int  #: per-spill seed: all later randomness derives from it and the particle index
    #: set by sim_frontend.beamline.transport: its per-particle result, the impact points at z = 0 (x, y in
    #: mm) and the bremsstrahlung bias used
    beamline: Any = None
    z0_xy: tuple[np.ndarray, np.ndarray] | None = None
    bias: Any = None

    @property
    def n(self) -> int:
        return int(self.truth.shape[0])

    @cached_property
    def times_ns(self) -> np.ndarray:
        """Arrival times, ns since the spill start (float64, contiguous, sorted): ``truth["time_ns"]`` copied
        once. A sorted search over the strided field itself copies the whole field on every call (30 ms at
        1e7 particles, several calls per block of events read out)."""
        return np.ascontiguousarray(self.truth["time_ns"], dtype=np.float64)

    def subset(self, idx: np.ndarray) -> BeamSpill:
        """A spill of the particles ``idx`` only (truth copied, the beam-line result with it): its detector
        response equals the full spill's for these particles (counter-based randomness)."""
        i = np.asarray(idx, dtype=np.int64)
        return BeamSpill(
            self.spill,
            self.start_unix,
            self.length_s,
            self.truth[i].copy(),
            self.seed,
            beamline=None if self.beamline is None else self.beamline.subset(i),
            z0_xy=None if self.z0_xy is None else (self.z0_xy[0][i], self.z0_xy[1][i]),
            bias=self.bias,
        )

    def counts_by_type(self) -> dict[str, int]:
        """Number of particles of each type (names of detector.records.PARTICLE_CODES)."""
        c = np.bincount(self.truth["ptype"], minlength=len(PARTICLE_CODES))
        return {name: int(c[code]) for name, code in PARTICLE_CODES.items()}


# ------------------------------------------------------------------------------ MC biasing
@dataclass(frozen=True)
class Bias:
    """Rate biases of the rare processes of an MC sample (1 = physical rate). Recorded data use
    :data:`UNBIASED`; the truth weight of a biased event is 1/bias (the rest of the electrons are
    reweighted so that the weighted sample stays unbiased)."""

    dimuon: float = 1.0  #: gamma -> mu+ mu- in the shower
    aprime: float = 1.0  #: A' emission
    tail: float = 1.0  #: low-energy beam tail (1 / :func:`tail_probability` makes every electron a tail electron)

    def __post_init__(self) -> None:
        if not (self.dimuon >= 1.0 and self.aprime >= 1.0 and self.tail >= 1.0):
            raise ValueError(f"biases must be >= 1, got dimuon {self.dimuon}, aprime {self.aprime}, tail {self.tail}")

    @classmethod
    def from_config(cls, cfg: Config) -> Bias:
        """The MC biases of the configuration (``beam.dimuon_bias``, ``aprime.bias``)."""
        return cls(dimuon=float(cfg.beam.dimuon_bias), aprime=float(cfg.aprime.bias))


UNBIASED = Bias()


# ------------------------------------------------------------------------------ rare-process rates
@lru_cache(maxsize=16)
def dimuon_probability(e0_gev: float) -> float:
    """Unbiased probability that an electron of ``e0_gev`` produces gamma -> mu+ mu- in the lead of the
    ECAL: N_X0 * Integral_{4 m_mu}^{E0} 0.572 E0/k^2 sigma_BH(k) dk (Rossi approximation A)."""
    from sim_frontend import dimuon
    from sim_frontend import physics_constants as pc

    lo = dimuon.THRESHOLD_GEV * 1.0001
    if e0_gev <= lo:
        return 0.0
    k = np.geomspace(lo, e0_gev, 4001)
    f = PHOTON_TRACK_LENGTH_A * e0_gev / k**2 * dimuon.sigma_total_cm2(k)
    return float(pc.PB_N_X0_PER_CM2 * np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(k)))


@lru_cache(maxsize=16)
def _aprime_yield_eps1(mass_gev: float, e0_gev: float) -> float:
    from sim_frontend import yields

    return float(yields.yield_per_eot(mass_gev, e0_gev, emiss_min_gev=X_MIN_APRIME * e0_gev, model="IWW", eps=1.0))


def aprime_probability(cfg: Config) -> float:
    """Unbiased A' probability per beam electron (E_A' > X_MIN_APRIME * E0) for the configured mass and
    epsilon; 0 when ``aprime.enabled`` is false."""
    ap = cfg.aprime
    if not ap.enabled or ap.epsilon <= 0:
        return 0.0
    return _aprime_yield_eps1(ap.mass_mev * 1e-3, float(cfg.beam.energy_gev)) * ap.epsilon**2


def tail_probability(cfg: Config) -> float:
    """Probability that a beam electron is in the low-energy tail: 1 - exp(-``beam.tail_x0`` x photons per X0
    with y in [``beam.tail_y_min``, TAIL_Y_MAX])."""
    b = cfg.beam
    if b.tail_x0 <= 0.0:
        return 0.0
    return -math.expm1(-float(b.tail_x0) * brem_rate_per_x0(float(b.tail_y_min), TAIL_Y_MAX))


def tail_fraction(cfg: Config, e_lo_gev: float, e_hi_gev: float) -> float:
    """Fraction of the beam electrons whose tail energy (1 - y) E0 lies in [``e_lo_gev``, ``e_hi_gev``] (the
    nominal energy E0, without the Gaussian spread)."""
    e0 = float(cfg.beam.energy_gev)
    y_lo = max(1.0 - e_hi_gev / e0, float(cfg.beam.tail_y_min))
    y_hi = min(1.0 - e_lo_gev / e0, TAIL_Y_MAX)
    if y_hi <= y_lo:
        return 0.0
    full = brem_rate_per_x0(float(cfg.beam.tail_y_min), TAIL_Y_MAX)
    return tail_probability(cfg) * brem_rate_per_x0(y_lo, y_hi) / full


# ------------------------------------------------------------------------------ generator kernel
@nb.njit(cache=True, nogil=True)
def _gen_kernel(
    n,
    seed,
    length_ns,
    e0,
    spread,
    bx,
    by,
    sigma,
    cum,
    halo_v1,
    p_a,
    p_d,
    w_a,
    w_d,
    w_norm,
    p_t,
    yq_t,
    w_t,
    w_nt,
    index,
    t_out,
    ptype,
    flags,
    e_beam,
    x_mm,
    y_mm,
    weight,
    e_inv,
):
    s = np.uint64(seed)
    # arrival times: normalised cumulative sum of n + 1 exponential gaps (uniform order statistics)
    acc = 0.0
    for i in range(n + 1):
        st = rng_state(s, np.uint64(i), np.uint64(0))
        st, u = rng_next(st)
        acc += -math.log(1.0 - u)
        if i < n:
            t_out[i] = acc
    scale = length_ns / acc
    for i in range(n):
        t_out[i] *= scale
    for i in range(n):
        st = rng_state(s, np.uint64(i), np.uint64(1))
        st, u = rng_next(st)
        if u < cum[0]:
            pt = PION
        elif u < cum[1]:
            pt = KAON
        elif u < cum[2]:
            pt = MUON
        elif u < cum[3]:
            pt = HALO
        else:
            pt = E_MINUS
        index[i] = i
        ptype[i] = pt
        fl = np.uint8(0)
        w = 1.0
        if pt == HALO:
            st, u = rng_next(st)
            r = HALO_R_MM[0] + (HALO_R_MM[1] - HALO_R_MM[0]) * u
            st, u = rng_next(st)
            phi = 2.0 * math.pi * u
            x_mm[i] = bx + r * math.cos(phi)
            y_mm[i] = by + r * math.sin(phi)
            st, u = rng_next(st)
            e_beam[i] = e0 * (HALO_E_FRACTION[0] + (HALO_E_FRACTION[1] - HALO_E_FRACTION[0]) * u)
        else:
            st, z = draw_normal(st)
            x_mm[i] = bx + sigma * z
            st, z = draw_normal(st)
            y_mm[i] = by + sigma * z
            st, z = draw_normal(st)
            e = e0 * (1.0 + spread * z)
            if pt == E_MINUS:
                st_t, u = rng_next(rng_state(s, np.uint64(i), np.uint64(TAIL_STREAM)))
                if u < p_t:  # radiated upstream: the low-energy tail
                    st_t, u = rng_next(st_t)
                    e *= 1.0 - table_draw(yq_t, u)
                    w *= w_t
                else:
                    w *= w_nt
            e_beam[i] = e if e > 0.01 * e0 else 0.01 * e0
            if pt == E_MINUS:
                st, u = rng_next(st)
                if u < p_a:
                    fl |= TRUTH_APRIME
                    w *= w_a
                elif u < p_a + p_d:
                    fl |= TRUTH_DIMUON
                    w *= w_d
                else:
                    w *= w_norm
        e_inv[i] = 0.0
        weight[i] = w
        # pile-up with the previous particle (the next one sets it below)
        if i > 0 and t_out[i] - t_out[i - 1] < PILEUP_WINDOW_NS:
            fl |= TRUTH_PILEUP
            flags[i - 1] |= TRUTH_PILEUP
        flags[i] = fl


def _beam_params(cfg: Config) -> dict:
    b = cfg.beam
    fr = [b.frac_pion, b.frac_kaon, b.frac_muon, b.frac_halo]
    if sum(fr) >= 1.0:
        raise ValueError(f"beam fractions add up to {sum(fr):.3f} >= 1")
    return dict(
        e0=float(b.energy_gev),
        spread=float(b.energy_spread),
        bx=float(b.x_mm),
        by=float(b.y_mm),
        sigma=float(b.sigma_mm),
        cum=np.cumsum(fr).astype(np.float64),
        halo_v1=float(b.frac_halo_v1),
    )


def generate_spill(
    cfg: Config,
    spill: int,
    n_particles: int | None = None,
    start_unix: float | None = None,
    bias: Bias = UNBIASED,
) -> BeamSpill:
    """Generate the truth of one spill (types, times, energies, impact points, A'/dimuon decisions).

    ``cfg`` is a validated configuration (detector.config.load_config); ``n_particles`` overrides
    ``beam.particles_per_spill``; ``start_unix`` defaults to now; ``bias``: the MC biases (default none,
    as for recorded data). The detector response fields of the truth
    (e_ps, e_ecal, e_hcal, e_v2, e_srd) are zero until :func:`sim_frontend.response.apply_response`."""
    n = int(round(cfg.beam.particles_per_spill)) if n_particles is None else int(n_particles)
    if n < 0:
        raise ValueError(f"n_particles must be >= 0, got {n}")
    if n >= 2**32:
        raise ValueError(f"n_particles = {n} does not fit the uint32 record index")
    p = _beam_params(cfg)
    seed = spill_seed(cfg.beam.seed, spill)
    length_s = float(cfg.spill.length_s)
    p_a = aprime_probability(cfg)
    p_d = dimuon_probability(p["e0"])
    b_a = float(bias.aprime)
    b_d = float(bias.dimuon)
    if p_a * b_a + p_d * b_d >= 0.5:
        raise ValueError(
            f"A' ({p_a:.3g} x bias {b_a:g}) plus dimuon ({p_d:.3g} x bias {b_d:g}) probabilities per "
            "electron exceed 0.5: lower the A' bias, aprime.epsilon or the dimuon bias"
        )
    w_norm = (1.0 - p_a - p_d) / (1.0 - p_a * b_a - p_d * b_d)
    p_t = tail_probability(cfg)
    b_t = float(bias.tail)
    if p_t * b_t > 1.0 + 1e-12:
        raise ValueError(f"tail probability {p_t:.3g} x bias {b_t:g} exceeds 1")
    p_tb = min(p_t * b_t, 1.0)
    w_nt = (1.0 - p_t) / (1.0 - p_tb) if p_tb < 1.0 else 0.0  # electrons outside the tail (none at p_tb = 1)
    y_min = float(cfg.beam.tail_y_min)
    truth = np.zeros(n, dtype=TRUTH_DTYPE)
    _gen_kernel(
        n,
        np.uint64(seed),
        length_s * 1e9,
        p["e0"],
        p["spread"],
        p["bx"],
        p["by"],
        p["sigma"],
        p["cum"],
        p["halo_v1"],
        p_a * b_a,
        p_d * b_d,
        1.0 / b_a,
        1.0 / b_d,
        w_norm,
        p_tb,
        brem_quantiles(y_min, TAIL_Y_MAX),
        1.0 / b_t,
        w_nt,
        truth["index"],
        truth["time_ns"],
        truth["ptype"],
        truth["flags"],
        truth["e_beam"],
        truth["x_mm"],
        truth["y_mm"],
        truth["weight"],
        truth["e_invisible"],
    )
    ap = np.flatnonzero(truth["flags"] & TRUTH_APRIME)
    if ap.size:
        from sim_frontend import aprime

        rng = np.random.default_rng([seed, 0xA9])
        x = aprime.sample_x(cfg.aprime.mass_mev * 1e-3, p["e0"], ap.size, rng, x_min=X_MIN_APRIME)
        truth["e_invisible"][ap] = (x * truth["e_beam"][ap]).astype(np.float32)
    return BeamSpill(
        spill=int(spill),
        start_unix=time.time() if start_unix is None else float(start_unix),
        length_s=length_s,
        truth=truth,
        seed=int(seed),
    )
