"""Fast detector response: per-particle energy deposits (GeV) of every detector element, compact.

:func:`apply_response` turns the truth of a :class:`~sim_frontend.beam.BeamSpill` into :class:`Deposits`
(a few floats per particle, never a dense (N, 121) array) and fills the truth deposit fields (e_ps, e_ecal,
e_hcal, e_v2, e_srd). :func:`channel_deposits` expands any subset of particles into the full per-channel
deposits (N_sub, 121), deterministically and consistently with the compact arrays (the ECAL PS cells sum
to the PS total, PS + main cells to the ECAL total, the HCAL cells of a module to its total).

Models (constants in :mod:`sim_frontend.geometry`; docs/physics.md sections 1.3, 1.4, 1.6, 4):

- the beam line (:mod:`sim_frontend.beamline`, run here unless the spill already went through it) decides
  what reaches the ECAL: an electron's shower is made of the energy that enters the ECAL matrix (the
  electron and its bremsstrahlung photons that land on it, ``e_front``); e.m. energy landing beside the
  ECAL on the HCAL face showers in HCAL module 0 (HCAL resolution); the SRD sees the synchrotron radiation
  detected from the dipoles (``e_sr``, a third per section with ``SRD_REL_WIDTH`` sampling fluctuation;
  (m_e/m)^4 of it for muons and hadrons);
- e- (beam, A' recoil, dimuon): e.m. shower of the visible energy in the ECAL with a
  Gamma longitudinal profile ``t^(a-1) e^(-b t)``, ``b = 0.5``, ``a = 1 + b (ln(E/E_c) - 0.5)`` (E_c = 11 MeV
  effective), shower-to-shower log-normal fluctuation of ``a`` (10%); PS = the first 4 X0 (3-8% of 100 GeV);
  sampling fluctuations 10%/sqrt(E) split over PS and main, 1% constant term; an exponential leakage of
  mean 0.2% into HCAL module 0; lateral e.m. profile (75% in the central cell); SRD: 50 MeV per section of a
  MIPs in S0..S4; nothing in V2.
- A': the ECAL sees ``e_beam - e_invisible``; nothing else changes.
- dimuon: photon energy k from ``0.572 E0/k^2 sigma_BH(k)`` and x+ from ``dsigma/dx+`` of
  :mod:`sim_frontend.dimuon`; the shower keeps ``E - k``, each muon loses 0.3 GeV (visible) in the ECAL, fires
  V2, and crosses HCAL modules depositing a 2.5 GeV (e-equivalent) MIP each while it has energy
  (1.5 GeV true loss per module).
- pi-, K-: first interaction at an exponential depth (lambda units): in the PS (0.15 lambda, ~14%: PS gets
  1-15% of E, above the 0.3 GeV PS threshold), in the ECAL main section (1.5 lambda in all), else a MIP
  through the ECAL (0.3 GeV, 30 MeV in the PS) and an interaction in the HCAL. Longitudinal hadronic Gamma
  profile (a = 1.6, scale 1.2 lambda, 30% log-normal fluctuation) shares the energy between the ECAL and the
  HCAL modules (7 lambda each); what passes 4 modules is lost (punch-through); resolution 65%/sqrt(E) (+)
  5% on the HCAL part; hadronic lateral profiles; V2 sees ~1 + E_HCAL/10 GeV MIPs.
- mu-: MIPs everywhere (ECAL 0.3 GeV, each HCAL module 2.5 GeV, V2), no SRD.
- halo: muons off axis: S0, S1, V0 (and V1 for a fraction ``frac_halo_v1``), MIPs in the ECAL / V2 / HCAL
  only where the track crosses them.
- calibration beam (table on an HCAL cell): every non-halo particle becomes the calibration particle
  (``beam.calibration_particle`` at its energy), flagged TRUTH_CALIBRATION; it fires the counters (and the
  SRD for e-) and deposits in the commanded module only, around the table position (80% in the cell for
  e-), with the HCAL resolution; the ECAL, V2 and the other modules see nothing.

Counters and vetoes: Landau-like (Moyal) MIPs of 1 MeV (8 MeV in the 4 cm V2), most probable value fixed,
12% width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numba as nb
import numpy as np

from detector import channels as ch
from detector.records import PARTICLE_CODES, TRUTH_APRIME, TRUTH_CALIBRATION, TRUTH_DIMUON, TRUTH_HADRONIC, TRUTH_PILEUP
from detector.settings import Config
from sim_frontend import geometry as g
from sim_frontend.beam import (
    E_MINUS,
    HALO,
    MUON,
    PHOTON_TRACK_LENGTH_A,
    BeamSpill,
    moyal_ppf,
    normal_ppf,
    rng_next,
    rng_state,
    table_draw,
)

#: columns of Deposits.trigger (the primitive channels, detector.channels.TRIGGER_CHANNEL_NAMES)
TRIGGER_COLUMNS = ch.TRIGGER_CHANNEL_NAMES
#: columns of Deposits.other
OTHER_COLUMNS = ("S0", "S4", "V0", "V2", "SRD0", "SRD1", "SRD2")

_COUNTER_COL = {name: ("trigger", i) for i, name in enumerate(TRIGGER_COLUMNS)}
_COUNTER_COL.update({name: ("other", i) for i, name in enumerate(OTHER_COLUMNS)})


@dataclass
class Deposits:
    """Compact per-particle deposits (GeV, float32) of one spill.

    - ``trigger`` (N, 6): S1, S2, S3, V1, PS_SUM (= total PS), ECAL_SUM (= total ECAL, PS + main);
    - ``other`` (N, 7): S0, S4, V0, V2, SRD0, SRD1, SRD2;
    - ``hcal`` (N, 4): per HCAL module;
    - ``shape`` (N, 2) uint8: lateral shape code (geometry.SHAPE_*) in the ECAL and in the HCAL;
    - the ECAL shower centre is the truth impact point (x_mm, y_mm); the HCAL centre is the impact point
      plus ``hcal_shift_mm`` (zero at the physics position; the table offset in calibration mode);
    - ``calibration_module``: -1 at the physics position, else the HCAL module in the calibration beam.
    """

    trigger: np.ndarray
    other: np.ndarray
    hcal: np.ndarray
    shape: np.ndarray
    hcal_shift_mm: tuple[float, float] = (0.0, 0.0)
    calibration_module: int = -1
    table: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.trigger.shape[0])

    def counter(self, name: str) -> np.ndarray:
        """Deposit (N,) GeV of a counter, veto, SRD section or analogue sum by channel name."""
        try:
            where, col = _COUNTER_COL[name]
        except KeyError:
            raise KeyError(f"no compact deposit column {name!r}; known: {', '.join(_COUNTER_COL)}") from None
        return getattr(self, where)[:, col]


def mip_gev(name: str) -> float:
    """Most probable MIP deposit (GeV) of a counter or veto channel."""
    return g.V2_MIP_GEV if name == "V2" else g.COUNTER_MIP_GEV


def hardware_scalers(
    dep: Deposits, threshold_mip: float = 0.5, names: tuple[str, ...] = ("S0", "S1", "S2", "S3", "V0", "V1")
) -> dict[str, int]:
    """Counts of particles whose deposit in each counter is above ``threshold_mip`` MIPs (the crate's
    discriminator scalers)."""
    return {n: int(np.count_nonzero(dep.counter(n) > threshold_mip * mip_gev(n))) for n in names}


# ------------------------------------------------------------------------------ special functions
@nb.njit(cache=True, nogil=True)
def gammp(a: float, x: float) -> float:
    """Regularised lower incomplete gamma function P(a, x) (series / continued fraction)."""
    if x <= 0.0:
        return 0.0
    gln = math.lgamma(a)
    if x < a + 1.0:
        ap = a
        s = 1.0 / a
        d = s
        for _ in range(500):
            ap += 1.0
            d *= x / ap
            s += d
            if abs(d) < abs(s) * 1e-12:
                break
        return s * math.exp(-x + a * math.log(x) - gln)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        de = d * c
        h *= de
        if abs(de - 1.0) < 1e-12:
            break
    return 1.0 - math.exp(-x + a * math.log(x) - gln) * h


_PS_A_LO, _PS_A_HI, _PS_N = 1.0, 16.0, 4096
_PS_A = np.linspace(_PS_A_LO, _PS_A_HI, _PS_N)
#: P(a, b * PS_X0): fraction of a Gamma-profile e.m. shower in the preshower, on a grid of a
PS_FRACTION_TABLE = np.array([gammp(a, g.EM_B * g.PS_X0) for a in _PS_A])


@nb.njit(cache=True, nogil=True)
def _ps_fraction(a: float, table: np.ndarray) -> float:
    pos = (a - _PS_A_LO) / (_PS_A_HI - _PS_A_LO) * (_PS_N - 1)
    if pos <= 0.0:
        return table[0]
    if pos >= _PS_N - 1:
        return table[_PS_N - 1]
    i = int(pos)
    f = pos - i
    return table[i] + (table[i + 1] - table[i]) * f


# ------------------------------------------------------------------------------ dimuon tables
_N_KBINS = 48
_N_XQ = 512


@lru_cache(maxsize=8)
def dimuon_tables(e0_gev: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantile tables of the dimuon kinematics for electrons of ``e0_gev``: photon energy k (GeV) with
    density 0.572 E0/k^2 sigma_BH(k) (length 4097), log-spaced k-bin edges (_N_KBINS + 1) and, per bin,
    the quantiles of x+ from dsigma/dx+ at the bin centre (_N_KBINS, _N_XQ + 1). All from
    sim_frontend.dimuon."""
    from sim_frontend import dimuon

    lo = dimuon.THRESHOLD_GEV * 1.0001
    e0 = max(float(e0_gev), lo * 1.01)
    k = np.geomspace(lo, e0, 8001)
    dens = PHOTON_TRACK_LENGTH_A * e0 / k**2 * dimuon.sigma_total_cm2(k)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(k))])
    cdf /= cdf[-1]
    u = np.linspace(0.0, 1.0, 4097)
    k_q = np.interp(u, cdf, k)
    edges = np.geomspace(lo, e0, _N_KBINS + 1)
    centres = np.sqrt(edges[1:] * edges[:-1])
    xq = np.empty((_N_KBINS, _N_XQ + 1))
    uq = np.linspace(0.0, 1.0, _N_XQ + 1)
    for b, kc in enumerate(centres):
        x_lo, x_hi = (float(v) for v in dimuon.x_plus_limits(kc))
        x = np.linspace(x_lo, x_hi, 2049)
        d = dimuon.dsigma_dx_plus(x, kc)
        c = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]))])
        if c[-1] <= 0:
            xq[b] = 0.5
            continue
        xq[b] = np.interp(uq, c / c[-1], x)
    return k_q, np.log(edges), xq


# ------------------------------------------------------------------------------ the response kernel
@nb.njit(cache=True, nogil=True, inline="always")
def _moyal(st):
    st, u = rng_next(st)
    return st, moyal_ppf(u)


@nb.njit(cache=True, nogil=True, inline="always")
def _mip(st, mp, width):
    st, x = _moyal(st)
    v = mp * (1.0 + width * x)
    return st, (v if v > 0.0 else 0.0)


@nb.njit(cache=True, nogil=True)
def _hadron_profile_share(a, start, lo, hi):
    """Fraction of a hadron shower (Gamma profile, shape a, scale HAD_SCALE_LAMBDA) that started at depth
    ``start`` (lambda) deposited between depths lo and hi."""
    s = g.HAD_SCALE_LAMBDA
    p_hi = gammp(a, (hi - start) / s) if hi > start else 0.0
    p_lo = gammp(a, (lo - start) / s) if lo > start else 0.0
    return p_hi - p_lo


@nb.njit(cache=True, nogil=True)
def _response_kernel(
    seed,
    index,
    ptype,
    flags,
    e_beam,
    x_mm,
    y_mm,
    e_inv,
    ps_tab,
    k_q,
    log_kedges,
    xq,
    halo_v1,
    cal_module,
    cal_ptype,
    cal_dx,
    cal_dy,
    e_front,
    e_side,
    e_sr,
    trig,
    other,
    hcal,
    shape,
    t_ps,
    t_ecal,
    t_hcal,
    t_v2,
    t_srd,
):
    s = np.uint64(seed)
    n = ptype.shape[0]
    n_kb = log_kedges.shape[0] - 1
    nxq = xq.shape[1] - 1
    for i in range(n):
        st = rng_state(s, np.uint64(index[i]), np.uint64(2))  # keyed by the particle index: subsets agree
        pt = ptype[i]
        fl = flags[i]
        e = np.float64(e_beam[i])
        x = np.float64(x_mm[i])
        y = np.float64(y_mm[i])
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        v0 = 0.0
        v1 = 0.0
        v2 = 0.0
        srd0 = 0.0
        srd1 = 0.0
        srd2 = 0.0
        ps = 0.0
        ecal = 0.0
        h0 = 0.0
        h1 = 0.0
        h2 = 0.0
        h3 = 0.0
        esh = g.SHAPE_NONE
        hsh = g.SHAPE_NONE
        if cal_module >= 0 and pt != HALO:
            # ---------------------------------------------------------- calibration beam on an HCAL cell
            pt = cal_ptype
            ptype[i] = pt
            fl = (fl & TRUTH_PILEUP) | TRUTH_CALIBRATION
            if pt == E_MINUS:  # what the beam line lets through to the calorimeters
                e = np.float64(e_front[i] + e_side[i])
            e_inv[i] = 0.0
            st, s0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s2 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s3 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s4 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            if pt == MUON:
                st, hm = _mip(st, g.HCAL_MIP_GEV, g.HCAL_MIP_WIDTH)
                hsh = g.SHAPE_MIP
            else:
                st, u = rng_next(st)
                z = normal_ppf(u)
                res = math.sqrt(g.HCAL_STOCH * g.HCAL_STOCH / max(e, 0.1) + g.HCAL_CONST * g.HCAL_CONST)
                hm = e * (1.0 + res * z)
                if hm < 0.0:
                    hm = 0.0
                hsh = g.SHAPE_EM if pt == E_MINUS else g.SHAPE_HAD
                if pt == E_MINUS:
                    sr = e_sr[i] / 3.0
                    st, u = rng_next(st)
                    srd0 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                    st, u = rng_next(st)
                    srd1 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                    st, u = rng_next(st)
                    srd2 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
            hx = x + cal_dx
            hy = y + cal_dy
            if hsh == g.SHAPE_MIP:
                if not (-g.HCAL_HALF_MM <= hx < g.HCAL_HALF_MM and -g.HCAL_HALF_MM <= hy < g.HCAL_HALF_MM):
                    hm = 0.0
                    hsh = g.SHAPE_NONE
            else:
                p = g.HCAL_PROFILES[hsh]
                hm *= g.containment(
                    hx, hy, -g.HCAL_HALF_MM, g.HCAL_HALF_MM, -g.HCAL_HALF_MM, g.HCAL_HALF_MM, p[0], p[1], p[2]
                )
            if cal_module == 0:
                h0 = hm
            elif cal_module == 1:
                h1 = hm
            elif cal_module == 2:
                h2 = hm
            else:
                h3 = hm
        elif pt == HALO:
            st, s0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, v0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, u = rng_next(st)
            if u < halo_v1:
                st, v1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            if cal_module < 0:
                if g.ECAL_LO_X <= x < g.ECAL_HI_X and g.ECAL_LO_Y <= y < g.ECAL_HI_Y:
                    st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                    ps = g.PS_MIP_GEV * lf
                    ecal = g.ECAL_MIP_GEV * lf
                    esh = g.SHAPE_MIP
                if -g.V2_HALF_MM <= x < g.V2_HALF_MM and -g.V2_HALF_MM <= y < g.V2_HALF_MM:
                    st, v2 = _mip(st, g.V2_MIP_GEV, g.LANDAU_WIDTH)
                if -g.HCAL_HALF_MM <= x < g.HCAL_HALF_MM and -g.HCAL_HALF_MM <= y < g.HCAL_HALF_MM:
                    el = e - g.MU_LOSS_ECAL_GEV
                    for m in range(4):
                        if el <= 0.0:
                            break
                        st, hm = _mip(st, g.HCAL_MIP_GEV, g.HCAL_MIP_WIDTH)
                        if el < g.MU_LOSS_HCAL_GEV:
                            hm *= el / g.MU_LOSS_HCAL_GEV
                        el -= g.MU_LOSS_HCAL_GEV
                        if m == 0:
                            h0 = hm
                        elif m == 1:
                            h1 = hm
                        elif m == 2:
                            h2 = hm
                        else:
                            h3 = hm
                    hsh = g.SHAPE_MIP
        else:
            st, s0 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s1 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s2 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s3 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            st, s4 = _mip(st, g.COUNTER_MIP_GEV, g.LANDAU_WIDTH)
            sr = e_sr[i] / 3.0
            if pt == E_MINUS:
                # ------------------------------------------------------------------ e.m. shower
                e = np.float64(e_front[i])
                esh_e = e
                if (fl & TRUTH_APRIME) != 0:
                    esh_e = e - e_inv[i] if e > e_inv[i] else 0.0
                mu_e0 = 0.0
                mu_e1 = 0.0
                if (fl & TRUTH_DIMUON) != 0:
                    st, u = rng_next(st)
                    k = table_draw(k_q, u)
                    if k > e:
                        k = e
                    kb = int((math.log(k) - log_kedges[0]) / (log_kedges[n_kb] - log_kedges[0]) * n_kb)
                    if kb < 0:
                        kb = 0
                    elif kb >= n_kb:
                        kb = n_kb - 1
                    st, u = rng_next(st)
                    pos = u * nxq
                    j = int(pos)
                    xp = xq[kb, j] + (xq[kb, j + 1] - xq[kb, j]) * (pos - j)
                    mu_e0 = xp * k
                    mu_e1 = (1.0 - xp) * k
                    esh_e = e - k
                    if esh_e < 0.0:
                        esh_e = 0.0
                # SRD
                st, u = rng_next(st)
                srd0 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                st, u = rng_next(st)
                srd1 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                st, u = rng_next(st)
                srd2 = max(0.0, sr * (1.0 + g.SRD_REL_WIDTH * normal_ppf(u)))
                if esh_e > 0.0:
                    a = 1.0 + g.EM_B * (math.log(max(esh_e, 0.05) / g.EM_EC_GEV) - 0.5)
                    st, u = rng_next(st)
                    a *= math.exp(g.EM_A_SIGMA * normal_ppf(u) - 0.5 * g.EM_A_SIGMA * g.EM_A_SIGMA)
                    fps = _ps_fraction(a, ps_tab)
                    ps_t = fps * esh_e
                    main_t = esh_e - ps_t
                    st, u = rng_next(st)
                    leak = -math.log(1.0 - u) * g.ECAL_LEAK_MEAN * main_t
                    main_t -= leak
                    st, u = rng_next(st)
                    ps = ps_t + g.ECAL_STOCH * math.sqrt(ps_t) * normal_ppf(u)
                    st, u = rng_next(st)
                    mn = main_t + g.ECAL_STOCH * math.sqrt(main_t) * normal_ppf(u)
                    st, u = rng_next(st)
                    c = 1.0 + g.ECAL_CONST * normal_ppf(u)
                    ps = max(ps * c, 0.0)
                    mn = max(mn * c, 0.0)
                    # lateral containment in the matrix (only showers near its edge lose energy)
                    if (
                        x - g.ECAL_LO_X < 80.0
                        or g.ECAL_HI_X - x < 80.0
                        or y - g.ECAL_LO_Y < 80.0
                        or g.ECAL_HI_Y - y < 80.0
                    ):
                        p = g.ECAL_PROFILES[g.SHAPE_EM]
                        cf = g.containment(x, y, g.ECAL_LO_X, g.ECAL_HI_X, g.ECAL_LO_Y, g.ECAL_HI_Y, p[0], p[1], p[2])
                        ps *= cf
                        mn *= cf
                    ecal = ps + mn
                    esh = g.SHAPE_EM
                    h0 = leak
                    hsh = g.SHAPE_EM
                if e_side[i] > 0.0:
                    # e.m. energy beside the ECAL on the HCAL face: a shower in HCAL module 0
                    st, u = rng_next(st)
                    es = np.float64(e_side[i])
                    res = math.sqrt(g.HCAL_STOCH * g.HCAL_STOCH / max(es, 0.1) + g.HCAL_CONST * g.HCAL_CONST)
                    h0 += max(0.0, es * (1.0 + res * normal_ppf(u)))
                    hsh = g.SHAPE_EM
                if mu_e0 > 0.0 or mu_e1 > 0.0:
                    for mu in range(2):
                        em = mu_e0 if mu == 0 else mu_e1
                        st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                        vis = g.MU_LOSS_ECAL_GEV if em > g.MU_LOSS_ECAL_GEV else em
                        ecal += vis * lf
                        ps += g.PS_MIP_GEV * lf * (vis / g.MU_LOSS_ECAL_GEV)
                        el = em - g.MU_LOSS_ECAL_GEV
                        if el <= 0.0:
                            continue
                        st, vv = _mip(st, g.V2_MIP_GEV, g.LANDAU_WIDTH)
                        v2 += vv
                        for m in range(4):
                            if el <= 0.0:
                                break
                            st, hm = _mip(st, g.HCAL_MIP_GEV, g.HCAL_MIP_WIDTH)
                            if el < g.MU_LOSS_HCAL_GEV:
                                hm *= el / g.MU_LOSS_HCAL_GEV
                            el -= g.MU_LOSS_HCAL_GEV
                            if m == 0:
                                h0 += hm
                            elif m == 1:
                                h1 += hm
                            elif m == 2:
                                h2 += hm
                            else:
                                h3 += hm
                    if esh == g.SHAPE_NONE:
                        esh = g.SHAPE_MIP
                    hsh = g.SHAPE_MIP
            elif pt == MUON:
                st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                inside = g.ECAL_LO_X <= x < g.ECAL_HI_X and g.ECAL_LO_Y <= y < g.ECAL_HI_Y
                if inside:
                    ps = g.PS_MIP_GEV * lf
                    ecal = g.ECAL_MIP_GEV * lf
                    esh = g.SHAPE_MIP
                st, v2 = _mip(st, g.V2_MIP_GEV, g.LANDAU_WIDTH)
                el = e - g.MU_LOSS_ECAL_GEV
                for m in range(4):
                    if el <= 0.0:
                        break
                    st, hm = _mip(st, g.HCAL_MIP_GEV, g.HCAL_MIP_WIDTH)
                    if el < g.MU_LOSS_HCAL_GEV:
                        hm *= el / g.MU_LOSS_HCAL_GEV
                    el -= g.MU_LOSS_HCAL_GEV
                    if m == 0:
                        h0 = hm
                    elif m == 1:
                        h1 = hm
                    elif m == 2:
                        h2 = hm
                    else:
                        h3 = hm
                hsh = g.SHAPE_MIP
            else:
                # ------------------------------------------------------------------ hadron (pi-, K-)
                st, u = rng_next(st)
                z = -math.log(1.0 - u)  # first-interaction depth, lambda
                st, u = rng_next(st)
                a = g.HAD_A * math.exp(g.HAD_A_SIGMA * normal_ppf(u))
                st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
                if z < g.ECAL_LAMBDA:
                    fl |= TRUTH_HADRONIC
                    frac_ecal = _hadron_profile_share(a, z, z, g.ECAL_LAMBDA)
                    ecal_t = e * frac_ecal
                    if z < g.PS_LAMBDA:
                        st, u = rng_next(st)
                        ps = e * (0.01 + 0.14 * u) * (1.0 - z / g.PS_LAMBDA) + g.PS_MIP_GEV * z / g.PS_LAMBDA * lf
                        if ps > 0.9 * ecal_t:
                            ps = 0.9 * ecal_t
                    else:
                        ps = g.PS_MIP_GEV * lf
                        ecal_t += g.ECAL_MIP_GEV * lf * z / g.ECAL_LAMBDA
                    st, u = rng_next(st)
                    ecal = ecal_t * (1.0 + 2.0 * g.ECAL_STOCH / math.sqrt(max(ecal_t, 0.1)) * normal_ppf(u))
                    if ecal < ps:
                        ecal = ps
                    e_rest = e - ecal_t
                    start = -(g.ECAL_LAMBDA - z)  # shower start relative to the HCAL front
                    esh = g.SHAPE_HAD
                else:
                    ps = g.PS_MIP_GEV * lf
                    ecal = g.ECAL_MIP_GEV * lf
                    esh = g.SHAPE_MIP
                    e_rest = e - g.MU_LOSS_ECAL_GEV
                    start = z - g.ECAL_LAMBDA
                    if start >= g.HCAL_MODULE_LAMBDA:  # punch-through a module as a MIP
                        fl |= TRUTH_HADRONIC
                if not (g.ECAL_LO_X <= x < g.ECAL_HI_X and g.ECAL_LO_Y <= y < g.ECAL_HI_Y) and esh == g.SHAPE_MIP:
                    ps = 0.0
                    ecal = 0.0
                    esh = g.SHAPE_NONE
                if e_rest > 0.0:
                    # share of the rest of the shower per HCAL module (conditional on leaving the ECAL)
                    rem = 1.0 - (_hadron_profile_share(a, start, start, 0.0) if start < 0.0 else 0.0)
                    if rem < 1e-9:
                        rem = 1e-9
                    tot = 0.0
                    for m in range(4):
                        lo = m * g.HCAL_MODULE_LAMBDA
                        hi = lo + g.HCAL_MODULE_LAMBDA
                        if start >= hi:
                            st, hm = _mip(st, g.HCAL_MIP_GEV, g.HCAL_MIP_WIDTH)  # not yet interacted
                        else:
                            hm = e_rest * _hadron_profile_share(a, start, max(lo, start), hi) / rem
                        tot += hm
                        if m == 0:
                            h0 = hm
                        elif m == 1:
                            h1 = hm
                        elif m == 2:
                            h2 = hm
                        else:
                            h3 = hm
                    st, u = rng_next(st)
                    res = math.sqrt(g.HCAL_STOCH * g.HCAL_STOCH / max(tot, 0.1) + g.HCAL_CONST * g.HCAL_CONST)
                    c = 1.0 + res * normal_ppf(u)
                    if c < 0.0:
                        c = 0.0
                    h0 *= c
                    h1 *= c
                    h2 *= c
                    h3 *= c
                    hsh = g.SHAPE_HAD
                    # charged secondaries leaving the ECAL through V2
                    nmip = 1.0 + (h0 + h1 + h2 + h3) / 10.0 if start < 0.0 else 1.0
                    st, vv = _mip(st, 1.0, g.LANDAU_WIDTH / math.sqrt(nmip))
                    v2 = g.V2_MIP_GEV * nmip * vv
        if cal_module < 0 and pt != E_MINUS and pt != HALO:  # muons and hadrons
            srd0 = srd1 = srd2 = e_sr[i] / 3.0  # (m_e/m)^4 of an electron's: nothing above the photon threshold
        trig[i, 0] = s1
        trig[i, 1] = s2
        trig[i, 2] = s3
        trig[i, 3] = v1
        trig[i, 4] = ps
        trig[i, 5] = ecal
        other[i, 0] = s0
        other[i, 1] = s4
        other[i, 2] = v0
        other[i, 3] = v2
        other[i, 4] = srd0
        other[i, 5] = srd1
        other[i, 6] = srd2
        hcal[i, 0] = h0
        hcal[i, 1] = h1
        hcal[i, 2] = h2
        hcal[i, 3] = h3
        shape[i, 0] = esh
        shape[i, 1] = hsh
        flags[i] = fl
        # truth: sums of the float32-rounded compact values (so that the truth equals the channel sums)
        t_ps[i] = trig[i, 4]
        t_ecal[i] = trig[i, 5]
        t_hcal[i] = np.float32(hcal[i, 0]) + np.float32(hcal[i, 1]) + np.float32(hcal[i, 2]) + np.float32(hcal[i, 3])
        t_v2[i] = other[i, 3]
        t_srd[i] = np.float32(other[i, 4]) + np.float32(other[i, 5]) + np.float32(other[i, 6])


def _table_info(cfg: Config, table: dict | None) -> tuple[int, float, float, dict]:
    if not table:
        return -1, 0.0, 0.0, {}
    module = int(table.get("module", -1))
    if module < 0:
        return -1, 0.0, 0.0, dict(table)
    if module >= ch.N_HCAL_MODULES:
        raise ValueError(f"table module {module} does not exist (0..{ch.N_HCAL_MODULES - 1} or -1)")
    tx, ty = float(table.get("x_mm", 0.0)), float(table.get("y_mm", 0.0))
    return module, tx - float(cfg.beam.x_mm), ty - float(cfg.beam.y_mm), dict(table)


def apply_response(spill: BeamSpill, cfg: Config, table: dict | None = None) -> Deposits:
    """Detector response of every particle of ``spill``: returns the compact :class:`Deposits` and fills
    the truth fields e_ps, e_ecal, e_hcal, e_v2, e_srd (and, in calibration mode, ptype/flags) in place.

    ``table`` = {"x_mm", "y_mm", "module", "cell"} of the HCAL table; None or module -1 = physics position.
    Deterministic: the same spill (seed, truth) gives the same deposits."""
    from sim_frontend import beamline

    bl = spill.beamline if spill.beamline is not None else beamline.transport(spill, cfg)
    truth = spill.truth
    n = truth.shape[0]
    module, dx, dy, tinfo = _table_info(cfg, table)
    e0 = float(cfg.beam.energy_gev)
    k_q, log_kedges, xq = dimuon_tables(e0)
    cal_ptype = PARTICLE_CODES[cfg.beam.calibration_particle]
    dep = Deposits(
        trigger=np.empty((n, 6), np.float32),
        other=np.empty((n, 7), np.float32),
        hcal=np.empty((n, 4), np.float32),
        shape=np.empty((n, 2), np.uint8),
        hcal_shift_mm=(dx, dy),
        calibration_module=module,
        table=tinfo,
    )
    _response_kernel(
        np.uint64(spill.seed),
        truth["index"],
        truth["ptype"],
        truth["flags"],
        truth["e_beam"],
        truth["x_mm"],
        truth["y_mm"],
        truth["e_invisible"],
        PS_FRACTION_TABLE,
        k_q,
        log_kedges,
        xq,
        float(cfg.beam.frac_halo_v1),
        module,
        cal_ptype,
        dx,
        dy,
        bl.e_front,
        bl.e_side,
        bl.e_sr,
        dep.trigger,
        dep.other,
        dep.hcal,
        dep.shape,
        truth["e_ps"],
        truth["e_ecal"],
        truth["e_hcal"],
        truth["e_v2"],
        truth["e_srd"],
    )
    if module >= 0:
        truth["weight"][truth["ptype"] != PARTICLE_CODES["halo"]] = 1.0
    return dep


# ------------------------------------------------------------------------------ per-channel expansion
_ECAL_PS = slice(0, 36)
_ECAL_MAIN = slice(36, 72)


def channel_deposits(spill: BeamSpill, dep: Deposits, indices: np.ndarray) -> np.ndarray:
    """Full per-channel deposits (len(indices), N_CHANNELS) float32 GeV of the particles ``indices``.

    ECAL cells share the PS and main totals with the lateral profile of the particle (normalised over the
    matrix, so the PS cells sum to PS_SUM and all 72 cells to ECAL_SUM); HCAL cells share each module's
    deposit around the HCAL centre; counters, vetoes, SRD and sums are copied from the compact arrays.
    Deterministic (no randomness)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= dep.n):
        raise IndexError(f"particle indices must be in 0..{dep.n - 1}")
    m = idx.size
    out = np.zeros((m, ch.N_CHANNELS), dtype=np.float32)
    if m == 0:
        return out
    tr = spill.truth[idx]
    trig = dep.trigger[idx]
    x = tr["x_mm"].astype(np.float64)
    y = tr["y_mm"].astype(np.float64)
    fe = g.cell_fractions(x, y, dep.shape[idx, 0], g.ECAL_EDGES_X, g.ECAL_EDGES_Y, g.ECAL_PROFILES).reshape(m, 36)
    ps = trig[:, 4].astype(np.float64)
    main = trig[:, 5].astype(np.float64) - ps
    out[:, _ECAL_PS] = ps[:, None] * fe
    out[:, _ECAL_MAIN] = main[:, None] * fe
    fh = g.cell_fractions(
        x + dep.hcal_shift_mm[0],
        y + dep.hcal_shift_mm[1],
        dep.shape[idx, 1],
        g.HCAL_EDGES,
        g.HCAL_EDGES,
        g.HCAL_PROFILES,
    )  # (m, x, y)
    fh = np.transpose(fh, (0, 2, 1)).reshape(m, 1, 9)  # index 3*y + x
    h = dep.hcal[idx].astype(np.float64)[:, :, None] * fh  # (m, 4, 9)
    out[:, ch.HCAL_FIRST : ch.HCAL_FIRST + ch.N_HCAL] = h.reshape(m, 36)
    for name in ch.COUNTER_NAMES + ch.VETO_NAMES + ch.SRD_NAMES + ch.SUM_NAMES:
        out[:, ch.by_name(name).id] = dep.counter(name)[idx]
    return out
