"""Downstream physics processes of the fast simulation (docs/physics.md section 10): photoelectron
statistics of V2 and the HCAL, muon transport behind the ECAL (energy loss, multiple scattering,
geometric losses), hadron interactions in the ECAL with charge exchange, hard muon interactions in the
ECAL, leading-hadron electroproduction and photon punch-through, each with a *forced* variant for biased MC
samples (the forced process happens in every event and the event weight carries its probability).

The numba functions here are called from the response kernel (:mod:`sim_frontend.response`); they draw
from the particle's counter-based random stream, so they are deterministic per particle. Energies in GeV,
lengths in mm at the detector planes (m where the name says so), depths in radiation lengths (X0) or
nuclear interaction lengths (lambda) as named.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from sim_frontend import geometry as g
from sim_frontend.beam import moyal_ppf, normal_ppf, rng_next
from sim_frontend.cascade import brems_rate_per_x0

# ------------------------------------------------------------------ photoelectron statistics (section 10.1)
HCAL_PE_PER_MIP = 175.0  #: p.e. of a MIP crossing one HCAL module (PAPER: 150-200)
HCAL_LANDAU_WIDTH = 0.05  #: Moyal width of the summed ionisation of the 48 scintillator layers (DEFAULT)
V2_PE_PER_MIP = 60.0  #: p.e. of a MIP crossing V2: 8 MeV in 4 cm of plastic x ~7.5 p.e./MeV (DEFAULT)
PE_EXACT_MAX = 120.0  #: Poisson means below this are drawn exactly (inversion), above by the normal limit

# ------------------------------------------------------------------ muon transport (section 10.2)
ECAL_LENGTH_M = 0.45  #: ECAL depth (150 layers of 1.5 mm Pb + 1.5 mm Sc), m (docs/physics.md 1.3)
V2_DIST_M = 0.2  #: ECAL back face to V2, m (DEFAULT)
HCAL_DIST_M = 0.5  #: ECAL back face to the front of HCAL module 0, m (DEFAULT)
HCAL_MODULE_PITCH_M = 1.3  #: module length including the gap to the next module, m (DEFAULT)
HCAL_MODULE_X0 = 68.3  #: radiation lengths of one module: 1.2 m Fe / 1.757 cm (docs/physics.md 1.4)
HIGHLAND_MEV = 13.6  #: Highland multiple-scattering constant, MeV (PDG)

# ------------------------------------------------------------------ hadron interactions (section 10.3)
#: charge-exchange-like fraction of inelastic pi-/K- Pb interactions at 100 GeV (pi- p -> pi0 n, eta n;
#: K- p -> K0bar n, pi0 Lambda): sigma_cex(pi- p) ~ 13 ub at 100 GeV (p^-1.2 fall from ~40 ub at 40 GeV)
#: times ~25 effective protons of a Pb nucleus (Z A^-1/3 with absorption) over sigma_inel(pi Pb) = 1.75 b
CEX_FRACTION = 2.0e-4
CEX_T_SLOPE_GEV2 = 10.0  #: slope b of dsigma/dt ~ exp(-b |t|), GeV^-2 (recoil-neutron kinetic energy |t|/2m_n)
M_N_GEV = 0.9396  #: neutron mass
HADRON_LAMBDA_PER_X0 = g.ECAL_LAMBDA / g.ECAL_X0  #: ECAL interaction lengths per radiation length

# ------------------------------------------------------------------ hard muon interactions (section 10.4)
#: energy-loss coefficient b(Pb) of a 100 GeV muon (bremsstrahlung + pairs + photonuclear), cm^2/g (PDG)
MU_B_PB_CM2_G = 4.0e-6
ECAL_PB_G_CM2 = 22.5 * 11.35  #: lead in the ECAL, g/cm^2
MU_V_MIN = 0.01  #: smallest energy fraction v = nu/E of a "hard" muon interaction (dN/dv ~ 1/v above it)
#: probability of a hard interaction (v > MU_V_MIN) per muon crossing the ECAL: b X / (1 - v_min) * ln(1/v_min)
MU_HARD_PROB = MU_B_PB_CM2_G * ECAL_PB_G_CM2 / (1.0 - MU_V_MIN) * math.log(1.0 / MU_V_MIN)

# ------------------------------------------------------------------ electroproduction (section 10.5)
EP_PROB = 1.0e-4  #: leading-hadron electroproduction per beam e- in the ECAL (PAPER, docs/physics.md 6.5)
EP_V_MIN = 0.05  #: the leading hadron takes v = E_h/E0 > EP_V_MIN with dN/dv ~ 1/v (DEFAULT)
EP_NEUTRAL_FRACTION = 0.5  #: n, K0L among the leading hadrons (no ionisation before they interact; DEFAULT)
EP_DEPTH_X0 = 5.0  #: production depth uniform in the first EP_DEPTH_X0 radiation lengths (primary track; DEFAULT)
HCAL_LAMBDA_TOTAL = 4.0 * g.HCAL_MODULE_LAMBDA

# ------------------------------------------------------------------ photon punch-through (section 10.6)
PHOTON_CONV_PER_X0 = 7.0 / 9.0  #: high-energy photon conversion rate per X0
PT_V_MIN = 0.3  #: hard primary bremsstrahlung photons k/E0 > PT_V_MIN are followed (DEFAULT: box-relevant)
PT_DEPTH_X0 = 2.0  #: emission depth uniform in the first PT_DEPTH_X0 X0 (primary above E0/2; DEFAULT)

# forced processes of biased MC samples (bit mask ``force`` of the response kernel)
FORCE_V2_MISS = 1  #: every V2 crossing gives fewer p.e. than the veto threshold, weight x P(miss)
FORCE_HADRON_ECAL = 2  #: pi-/K- interact in the ECAL, weight x (1 - exp(-lambda_ECAL))
FORCE_CEX = 4  #: that interaction is charge exchange, weight x CEX_FRACTION
FORCE_MU_HARD = 8  #: beam muons interact hard in the ECAL, weight x MU_HARD_PROB
FORCE_ELECTROPRODUCTION = 16  #: beam e- produce a leading hadron, weight x EP_PROB
FORCE_PUNCHTHROUGH = 32  #: the leading hadron / a hard photon crosses the ECAL (and HCAL) unseen, weight x P
FORCE_NO_CEX = 64  #: a (forced) ECAL interaction of pi-/K- is not charge exchange, weight x (1 - CEX_FRACTION)
FORCE_DIMUON_HARD = 128  #: the dimuon photon takes k > E0 - the signal-box edge, weight x P(k above it)


@nb.njit(cache=True, nogil=True)
def poisson(st, mean):
    """(state, n) Poisson draw: inversion for small means, normal limit (continuity-corrected) above."""
    st, u = rng_next(st)
    if mean <= 0.0:
        return st, 0
    if mean >= PE_EXACT_MAX:
        n = int(math.floor(mean + math.sqrt(mean) * normal_ppf(u) + 0.5))
        return st, (n if n > 0 else 0)
    p = math.exp(-mean)
    c = p
    n = 0
    while u > c and n < 10000:
        n += 1
        p *= mean / n
        c += p
    return st, n


@nb.njit(cache=True, nogil=True)
def poisson_below(st, mean, n_max):
    """(state, n, P) with P = P(N <= n_max) of a Poisson(mean) and n drawn from it conditioned on N <= n_max
    (n_max < 0: P = 0, n = 0). Exact sum; for the forced V2 miss (means of tens)."""
    st, u = rng_next(st)
    if n_max < 0:
        return st, 0, 0.0
    p = math.exp(-mean)
    terms = np.empty(n_max + 1)
    c = 0.0
    for k in range(n_max + 1):
        c += p
        terms[k] = c
        p *= mean / (k + 1)
    target = u * c
    n = 0
    while n < n_max and terms[n] < target:
        n += 1
    return st, n, c


@nb.njit(cache=True, nogil=True)
def pe_mip(st, mp_gev, n_pe, width, path):
    """(state, deposit) of a MIP crossing a scintillator read out with ``n_pe`` photoelectrons per MIP:
    Moyal ionisation (most probable 1, relative width ``width``) times the path fraction ``path``, then
    Poisson photoelectron statistics; the deposit is in GeV on the MIP scale ``mp_gev``."""
    st, u = rng_next(st)
    lf = 1.0 + width * moyal_ppf(u)
    if lf < 0.0:
        lf = 0.0
    st, n = poisson(st, n_pe * lf * path)
    return st, mp_gev * n / n_pe


@nb.njit(cache=True, nogil=True)
def pe_mip_miss(st, mp_gev, n_pe, width, n_max):
    """Forced miss: (state, deposit, P) with the p.e. count conditioned on <= n_max (a count on the scale of
    ``V2_PE_PER_MIP`` per MIP, so the threshold scales with ``mp_gev``); P = P(N <= n_max) at the drawn
    ionisation."""
    st, u = rng_next(st)
    lf = 1.0 + width * moyal_ppf(u)
    if lf < 0.0:
        lf = 0.0
    st, n, p = poisson_below(st, n_pe * lf, n_max)
    return st, mp_gev * n / n_pe, p


@nb.njit(cache=True, nogil=True)
def highland(p_gev, x_x0):
    """RMS plane scattering angle (rad) of a unit-charge particle of momentum ``p_gev`` in ``x_x0`` X0."""
    if x_x0 <= 0.0:
        return 0.0
    return HIGHLAND_MEV * 1e-3 / p_gev * math.sqrt(x_x0) * (1.0 + 0.038 * math.log(x_x0))


@nb.njit(cache=True, nogil=True)
def _scatter(st, pos, ang, theta0, length_mm):
    """Multiple scattering of one projection over ``length_mm`` (PDG correlated position/angle)."""
    st, u = rng_next(st)
    z1 = normal_ppf(u)
    st, u = rng_next(st)
    z2 = normal_ppf(u)
    pos += length_mm * ang + length_mm * theta0 * (z1 / math.sqrt(12.0) + z2 / 2.0)
    ang += theta0 * z2
    return st, pos, ang


@nb.njit(cache=True, nogil=True)
def muon_downstream(st, e_exit, x, y, tx, ty, force, v2_nmax):
    """A muon leaving the ECAL back face with energy ``e_exit`` (GeV) at (x, y) mm and angles (tx, ty) rad,
    after crossing the ECAL (its scattering there is applied here): V2 and the four HCAL modules with
    photoelectron statistics, a 1.5 GeV loss per module and multiple scattering; a muon outside V2 or the
    HCAL (geometric loss) or ranged out leaves nothing there. Returns (state, v2, h0, h1, h2, h3, weight),
    weight < 1 only for the forced V2 miss."""
    v2 = 0.0
    h = np.zeros(4)
    w = 1.0
    if e_exit <= 0.0:
        return st, v2, h[0], h[1], h[2], h[3], w
    th = highland(e_exit + 0.5 * g.MU_LOSS_ECAL_GEV, g.ECAL_X0)
    st, x, tx = _scatter(st, x, tx, th, ECAL_LENGTH_M * 1000.0)
    st, y, ty = _scatter(st, y, ty, th, ECAL_LENGTH_M * 1000.0)
    xv = x + V2_DIST_M * 1000.0 * tx
    yv = y + V2_DIST_M * 1000.0 * ty
    if -g.V2_HALF_MM <= xv < g.V2_HALF_MM and -g.V2_HALF_MM <= yv < g.V2_HALF_MM:
        if force & FORCE_V2_MISS:
            st, v2, p = pe_mip_miss(st, g.V2_MIP_GEV, V2_PE_PER_MIP, g.LANDAU_WIDTH, v2_nmax)
            w *= p
        else:
            st, v2 = pe_mip(st, g.V2_MIP_GEV, V2_PE_PER_MIP, g.LANDAU_WIDTH, 1.0)
    x += HCAL_DIST_M * 1000.0 * tx
    y += HCAL_DIST_M * 1000.0 * ty
    el = e_exit
    for m in range(4):
        if el <= 0.0:
            break
        if not (-g.HCAL_HALF_MM <= x < g.HCAL_HALF_MM and -g.HCAL_HALF_MM <= y < g.HCAL_HALF_MM):
            break  # left the HCAL sideways: nothing in this or the following modules
        path = 1.0 if el >= g.MU_LOSS_HCAL_GEV else el / g.MU_LOSS_HCAL_GEV
        st, h[m] = pe_mip(st, g.HCAL_MIP_GEV, HCAL_PE_PER_MIP, HCAL_LANDAU_WIDTH, path)
        th = highland(el, HCAL_MODULE_X0 * path)
        st, x, tx = _scatter(st, x, tx, th, HCAL_MODULE_PITCH_M * 1000.0)
        st, y, ty = _scatter(st, y, ty, th, HCAL_MODULE_PITCH_M * 1000.0)
        el -= g.MU_LOSS_HCAL_GEV
    return st, v2, h[0], h[1], h[2], h[3], w


#: hard primary photons (k/E0 > PT_V_MIN) per X0 (approximation A, the primary near E0)
PT_PHOTONS_PER_X0 = brems_rate_per_x0(PT_V_MIN)


@nb.njit(cache=True, nogil=True)
def punchthrough_weight(t0):
    """Expected hard primary photons in the first PT_DEPTH_X0 X0 per e- times the probability that one
    emitted at depth ``t0`` X0 crosses the rest of the ECAL without converting."""
    return PT_DEPTH_X0 * PT_PHOTONS_PER_X0 * math.exp(-PHOTON_CONV_PER_X0 * (g.ECAL_X0 - t0))


@nb.njit(cache=True, nogil=True)
def cex_neutron_energy(st):
    """(state, kinetic energy GeV) of the recoil neutron of a forward charge exchange, |t| ~ exp(-b |t|)."""
    st, u = rng_next(st)
    t = -math.log(1.0 - u) / CEX_T_SLOPE_GEV2
    return st, t / (2.0 * M_N_GEV)


@nb.njit(cache=True, nogil=True)
def one_over_v(st, v_min):
    """(state, v) from dN/dv ~ 1/v on [v_min, 1]."""
    st, u = rng_next(st)
    return st, v_min * math.exp(-math.log(v_min) * u)


@nb.njit(cache=True, nogil=True)
def exp_depth(st, lo, hi):
    """(state, depth, P) of an exponential depth (unit mean free path) conditioned on [lo, hi), and the
    probability P of that interval (hi = inf allowed)."""
    st, u = rng_next(st)
    a = math.exp(-lo)
    b = math.exp(-hi) if hi < 1e300 else 0.0
    p = a - b
    return st, -math.log(a - u * p), p
