"""Shower and MIP deposits of the fast detector response (docs/physics.md 1.3, 1.4, 10): the incomplete gamma
function of the longitudinal profiles, the preshower fraction of an e.m. shower, e.m. showers starting at any
depth of the ECAL and hadrons interacting at any depth of the ECAL or the HCAL. Called by the response kernel
(:mod:`sim_frontend.response`) with the particle's counter-based random state; energies in GeV."""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from sim_frontend import geometry as g
from sim_frontend import processes as pr
from sim_frontend.beam import moyal_ppf, normal_ppf, rng_next


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
def em_shower(st, e, x, y, ps_tab, t0):
    """(state, ps, ecal, leak) of an e.m. shower of ``e`` GeV starting at depth ``t0`` X0 of the ECAL (0: at
    its face, the PS fraction from ``ps_tab``): Gamma profile with a log-normal shape fluctuation, the leak
    into HCAL module 0 (exponential, plus the profile beyond the ECAL for a late start), sampling and
    constant terms, lateral containment near the matrix edge. ``ecal`` includes ``ps``."""
    a = 1.0 + g.EM_B * (math.log(max(e, 0.05) / g.EM_EC_GEV) - 0.5)
    st, u = rng_next(st)
    a *= math.exp(g.EM_A_SIGMA * normal_ppf(u) - 0.5 * g.EM_A_SIGMA * g.EM_A_SIGMA)
    if t0 <= 0.0:
        fps = _ps_fraction(a, ps_tab)
    elif t0 < g.PS_X0:
        fps = gammp(a, g.EM_B * (g.PS_X0 - t0))
    else:
        fps = 0.0
    ps_t = fps * e
    main_t = e - ps_t
    st, u = rng_next(st)
    leak = -math.log(1.0 - u) * g.ECAL_LEAK_MEAN * main_t
    if t0 > 0.0:
        leak += (1.0 - gammp(a, g.EM_B * max(g.ECAL_X0 - t0, 0.0))) * main_t
    if leak > main_t:
        leak = main_t
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
    if x - g.ECAL_LO_X < 80.0 or g.ECAL_HI_X - x < 80.0 or y - g.ECAL_LO_Y < 80.0 or g.ECAL_HI_Y - y < 80.0:
        p = g.ECAL_PROFILES[g.SHAPE_EM]
        cf = g.containment(x, y, g.ECAL_LO_X, g.ECAL_HI_X, g.ECAL_LO_Y, g.ECAL_HI_Y, p[0], p[1], p[2])
        ps *= cf
        mn *= cf
    return st, ps, ps + mn, leak


@nb.njit(cache=True, nogil=True)
def hadron_deposit(st, e, z, a, charged, v2_nmax):
    """(state, ecal, h0, h1, h2, h3, v2, w) of a hadron of ``e`` GeV whose first interaction is at depth ``z``
    (lambda from the ECAL face; beyond the HCAL = punch-through): ionisation before it if ``charged``,
    then a Gamma longitudinal profile (shape ``a``) shared between the ECAL and the four HCAL modules; what
    passes the last module is lost. ECAL resolution 2 x the e.m. one, HCAL 65%/sqrt(E) (+) 5%; V2 sees
    ~1 + E_HCAL/10 GeV charged secondaries of an ECAL interaction (photoelectron statistics); ``v2_nmax`` >= 0
    forces a V2 miss (at most that many p.e. per MIP) with the weight ``w`` = its probability."""
    st, lf = _mip(st, 1.0, g.LANDAU_WIDTH)
    ecal = 0.0
    e_rest = e
    if z < g.ECAL_LAMBDA:
        ecal_t = e * _hadron_profile_share(a, z, z, g.ECAL_LAMBDA)
        if charged:
            ecal_t += g.ECAL_MIP_GEV * lf * z / g.ECAL_LAMBDA
        st, u = rng_next(st)
        ecal = max(0.0, ecal_t * (1.0 + 2.0 * g.ECAL_STOCH / math.sqrt(max(ecal_t, 0.1)) * normal_ppf(u)))
        e_rest = e - ecal_t
    elif charged:
        ecal = g.ECAL_MIP_GEV * lf
        e_rest = e - g.MU_LOSS_ECAL_GEV
    start = z - g.ECAL_LAMBDA  # relative to the HCAL front
    h0 = 0.0
    h1 = 0.0
    h2 = 0.0
    h3 = 0.0
    tot = 0.0
    if e_rest > 0.0:
        rem = 1.0 - (_hadron_profile_share(a, start, start, 0.0) if start < 0.0 else 0.0)
        if rem < 1e-9:
            rem = 1e-9
        shower = np.zeros(4)
        for m in range(4):
            lo = m * g.HCAL_MODULE_LAMBDA
            hi = lo + g.HCAL_MODULE_LAMBDA
            if start < hi:
                shower[m] = e_rest * _hadron_profile_share(a, start, max(lo, start), hi) / rem
                tot += shower[m]
        st, u = rng_next(st)
        res = math.sqrt(g.HCAL_STOCH * g.HCAL_STOCH / max(tot, 0.1) + g.HCAL_CONST * g.HCAL_CONST)
        c = max(0.0, 1.0 + res * normal_ppf(u))
        for m in range(4):
            hm = shower[m] * c
            if charged and start >= m * g.HCAL_MODULE_LAMBDA + g.HCAL_MODULE_LAMBDA:  # not yet interacted
                st, mip = pr.pe_mip(st, g.HCAL_MIP_GEV, pr.HCAL_PE_PER_MIP, pr.HCAL_LANDAU_WIDTH, 1.0)
                hm += mip
            if m == 0:
                h0 = hm
            elif m == 1:
                h1 = hm
            elif m == 2:
                h2 = hm
            else:
                h3 = hm
    nmip = 1.0 + (h0 + h1 + h2 + h3) / 10.0 if start < 0.0 else (1.0 if charged else 0.0)
    v2 = 0.0
    w = 1.0
    if nmip > 0.0:
        width = g.LANDAU_WIDTH / math.sqrt(nmip)
        if v2_nmax >= 0:
            st, v2, w = pr.pe_mip_miss(st, g.V2_MIP_GEV * nmip, pr.V2_PE_PER_MIP * nmip, width, v2_nmax)
        else:
            st, v2 = pr.pe_mip(st, g.V2_MIP_GEV * nmip, pr.V2_PE_PER_MIP * nmip, width, 1.0)
    return st, ecal, h0, h1, h2, h3, v2, w
