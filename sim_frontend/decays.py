"""Decays in flight of beam muons, pions and kaons into an electron (docs/physics.md 1.11, inputs 6.8): the
channels, their PDG inputs and the decay kinematics, for :mod:`sim_frontend.beamline`, which transports the
decay products on through the rest of the line.

Channels (code: parent, BR; PDG 2022):

- ``MU_ENUNU`` (1): mu- -> e- nu nu, BR 1; electron energy in the muon rest frame from the Michel spectrum of
  an unpolarised muon, dN/dx = 2 x^2 (3 - 2 x), x = 2 E*/m_mu in [0, 1] (mean 0.7), isotropic;
- ``PI_ENU`` (2): pi- -> e- nu, BR 1.230e-4; two-body, isotropic (spin 0);
- ``K_ENU`` (3): K- -> e- nu, BR 1.582e-5; two-body, isotropic;
- ``KE3`` (4): K- -> pi0 e- nu, BR 5.07e-2; Dalitz density of the V-A matrix element with the lepton mass
  neglected, rho(E_pi, E_e) ~ f+(t)^2 M (2 E_e E_nu - M E'_pi), E'_pi = E_pi,max - E_pi (PDG review "K_l3
  form factors"), f+(t) = 1 + lambda+ t / m_pi+^2 with the linear slope lambda+ = 0.0297 (PDG, K+- e3), the
  orientation isotropic; pi0 -> gamma gamma (the 1.2% Dalitz decay e+ e- gamma taken as gamma gamma: the
  same e.m. energy), isotropic in the pi0 rest frame.

Other decays of the parents (pi -> mu nu, K -> mu nu, K -> pi pi, ...) give no electron and are not simulated:
such a particle goes on undecayed.

Kinematics: the products in the parent's rest frame, boosted along its flight direction (z' axis), returned
as (E, px, py, pz) in GeV in the lab frame of the parent's direction; neutrinos are not returned.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from sim_frontend.beam import rng_next, rng_state

MU_MASS_GEV = 0.1056583755
PI_MASS_GEV = 0.13957039
PI0_MASS_GEV = 0.1349768
K_MASS_GEV = 0.493677
E_MASS_GEV = 0.51099895e-3
MU_CTAU_M = 658.6384  #: c tau of the muon, m (PDG)
PI_CTAU_M = 7.8045  #: c tau of the charged pion, m (PDG)
K_CTAU_M = 3.7112  #: c tau of the charged kaon, m (PDG)
KE3_LAMBDA_PLUS = 0.0297  #: linear slope of f+(t) in K+- e3 (PDG)

NONE, MU_ENUNU, PI_ENU, K_ENU, KE3 = 0, 1, 2, 3, 4
CHANNEL_NAMES = {MU_ENUNU: "mu_e_nu_nu", PI_ENU: "pi_e_nu", K_ENU: "K_e_nu", KE3: "Ke3"}
#: per channel code: branching ratio (index 0: no decay)
BR = np.array([0.0, 1.0, 1.230e-4, 1.582e-5, 5.07e-2])
#: per channel code: parent mass (GeV)
PARENT_MASS = np.array([0.0, MU_MASS_GEV, PI_MASS_GEV, K_MASS_GEV, K_MASS_GEV])
#: per channel code: parent c tau (m)
PARENT_CTAU = np.array([0.0, MU_CTAU_M, PI_CTAU_M, K_CTAU_M, K_CTAU_M])


def channel_parents(codes: dict[str, int]) -> np.ndarray:
    """Per channel code: the parent's particle code (``codes``: detector.records.PARTICLE_CODES), -1 for 0."""
    return np.array([-1, codes["mu-"], codes["pi-"], codes["K-"], codes["K-"]], dtype=np.int64)


def decay_length_m(channel: int, p_gev: float) -> float:
    """Mean decay length beta gamma c tau (m) of the parent of ``channel`` at momentum ``p_gev``."""
    return float(p_gev) / float(PARENT_MASS[channel]) * float(PARENT_CTAU[channel])


def decay_probability(channel: int, p_gev: float, length_m: float) -> float:
    """Probability that the parent of ``channel`` decays within ``length_m`` (before the branching ratio)."""
    return -math.expm1(-float(length_m) / decay_length_m(channel, p_gev))


# ------------------------------------------------------------------------------ kinematics (numba)
@nb.njit(cache=True, nogil=True, inline="always")
def _iso(st):
    st, u = rng_next(st)
    c = 2.0 * u - 1.0
    st, u = rng_next(st)
    phi = 2.0 * math.pi * u
    s = math.sqrt(max(0.0, 1.0 - c * c))
    return st, s * math.cos(phi), s * math.sin(phi), c


@nb.njit(cache=True, nogil=True)
def boost(bx, by, bz, e, px, py, pz):
    """(E, px, py, pz) boosted by the velocity (bx, by, bz) (units of c)."""
    b2 = bx * bx + by * by + bz * bz
    if b2 <= 0.0:
        return e, px, py, pz
    g = 1.0 / math.sqrt(1.0 - b2)
    bp = bx * px + by * py + bz * pz
    f = (g - 1.0) * bp / b2 + g * e
    return g * (e + bp), px + f * bx, py + f * by, pz + f * bz


@nb.njit(cache=True, nogil=True)
def ke3_density(e_pi, e_e):
    """Unnormalised Ke3 Dalitz density at (E_pi, E_e) in the kaon rest frame (GeV); 0 outside the region."""
    m = K_MASS_GEV
    e_nu = m - e_pi - e_e
    if e_nu < 0.0 or e_pi < PI0_MASS_GEV:
        return 0.0
    p_pi = math.sqrt(e_pi * e_pi - PI0_MASS_GEV * PI0_MASS_GEV)
    if p_pi < abs(e_e - e_nu) or p_pi > e_e + e_nu:
        return 0.0
    t = m * m + PI0_MASS_GEV * PI0_MASS_GEV - 2.0 * m * e_pi
    f = 1.0 + KE3_LAMBDA_PLUS * t / (PI_MASS_GEV * PI_MASS_GEV)
    e_pi_max = (m * m + PI0_MASS_GEV * PI0_MASS_GEV) / (2.0 * m)
    a = m * (2.0 * e_e * e_nu - m * (e_pi_max - e_pi))
    return f * f * a if a > 0.0 else 0.0


@nb.njit(cache=True, nogil=True)
def _ke3_rest(st, out):
    """Ke3 in the kaon rest frame: out[0] the electron, out[1], out[2] the photons of the pi0."""
    m = K_MASS_GEV
    w = (m * m - PI0_MASS_GEV * PI0_MASS_GEV) / (2.0 * m)  # largest E_e, E_nu
    e_pi_max = (m * m + PI0_MASS_GEV * PI0_MASS_GEV) / (2.0 * m)
    t_max = (m - PI0_MASS_GEV) ** 2
    f_max = 1.0 + KE3_LAMBDA_PLUS * t_max / (PI_MASS_GEV * PI_MASS_GEV)
    rho_max = f_max * f_max * m * 2.0 * w * w
    while True:
        st, u = rng_next(st)
        e_pi = PI0_MASS_GEV + (e_pi_max - PI0_MASS_GEV) * u
        st, u = rng_next(st)
        e_e = w * u
        st, u = rng_next(st)
        if u * rho_max < ke3_density(e_pi, e_e):
            break
    e_nu = m - e_pi - e_e
    p_pi = math.sqrt(e_pi * e_pi - PI0_MASS_GEV * PI0_MASS_GEV)
    c = (p_pi * p_pi - e_e * e_e - e_nu * e_nu) / (2.0 * e_e * e_nu) if e_e * e_nu > 0.0 else 1.0
    c = min(1.0, max(-1.0, c))
    s = math.sqrt(1.0 - c * c)
    # local frame: e along z, nu in the x-z plane, pi = -(e + nu); then a random orientation
    lpx, lpz = -e_nu * s, -(e_e + e_nu * c)
    st, n1x, n1y, n1z = _iso(st)
    # a unit vector perpendicular to n1, at a random azimuth
    ax, ay, az = (1.0, 0.0, 0.0) if abs(n1x) < 0.9 else (0.0, 1.0, 0.0)
    d = ax * n1x + ay * n1y + az * n1z
    ax, ay, az = ax - d * n1x, ay - d * n1y, az - d * n1z
    na = math.sqrt(ax * ax + ay * ay + az * az)
    ax, ay, az = ax / na, ay / na, az / na
    bx, by, bz = n1y * az - n1z * ay, n1z * ax - n1x * az, n1x * ay - n1y * ax
    st, u = rng_next(st)
    psi = 2.0 * math.pi * u
    e2x = math.cos(psi) * ax + math.sin(psi) * bx
    e2y = math.cos(psi) * ay + math.sin(psi) * by
    e2z = math.cos(psi) * az + math.sin(psi) * bz
    out[0, 0], out[0, 1], out[0, 2], out[0, 3] = e_e, e_e * n1x, e_e * n1y, e_e * n1z
    pix = lpz * n1x + lpx * e2x
    piy = lpz * n1y + lpx * e2y
    piz = lpz * n1z + lpx * e2z
    # pi0 -> gamma gamma, isotropic in the pi0 frame
    st, gx, gy, gz = _iso(st)
    h = 0.5 * PI0_MASS_GEV
    for k in range(2):
        sg = 1.0 if k == 0 else -1.0
        e, px, py, pz = boost(pix / e_pi, piy / e_pi, piz / e_pi, h, sg * h * gx, sg * h * gy, sg * h * gz)
        out[1 + k, 0], out[1 + k, 1], out[1 + k, 2], out[1 + k, 3] = e, px, py, pz
    return st


@nb.njit(cache=True, nogil=True)
def decay_products(st, channel, p_parent, out):
    """Lab-frame products of a decay of ``channel`` of a parent of momentum ``p_parent`` (GeV) flying along z:
    out[0] = (E, px, py, pz) of the electron, out[1], out[2] those of photons (E = 0: none). Returns the
    counter-RNG state (:func:`sim_frontend.beam.rng_next`)."""
    for k in range(out.shape[0]):
        for j in range(4):
            out[k, j] = 0.0
    m = PARENT_MASS[channel]
    if channel == MU_ENUNU:
        while True:  # Michel: f(x) = 2 x^2 (3 - 2 x) <= 2
            st, u = rng_next(st)
            st, v = rng_next(st)
            if 2.0 * v < 2.0 * u * u * (3.0 - 2.0 * u):
                break
        e_star = max(u * (m * m + E_MASS_GEV * E_MASS_GEV) / (2.0 * m), E_MASS_GEV)
        p_star = math.sqrt(e_star * e_star - E_MASS_GEV * E_MASS_GEV)
        st, nx, ny, nz = _iso(st)
        out[0, 0], out[0, 1], out[0, 2], out[0, 3] = e_star, p_star * nx, p_star * ny, p_star * nz
    elif channel == KE3:
        st = _ke3_rest(st, out)
    else:  # two-body e nu
        e_star = (m * m + E_MASS_GEV * E_MASS_GEV) / (2.0 * m)
        p_star = (m * m - E_MASS_GEV * E_MASS_GEV) / (2.0 * m)
        st, nx, ny, nz = _iso(st)
        out[0, 0], out[0, 1], out[0, 2], out[0, 3] = e_star, p_star * nx, p_star * ny, p_star * nz
    bz = p_parent / math.sqrt(p_parent * p_parent + m * m)
    for k in range(out.shape[0]):
        if out[k, 0] > 0.0:
            e, px, py, pz = boost(0.0, 0.0, bz, out[k, 0], out[k, 1], out[k, 2], out[k, 3])
            out[k, 0], out[k, 1], out[k, 2], out[k, 3] = e, px, py, pz
    return st


@nb.njit(cache=True)
def _sample(channel, p_parent, seed, out):
    for i in range(out.shape[0]):
        st = rng_state(np.uint64(seed), np.uint64(i), np.uint64(0))
        decay_products(st, channel, p_parent, out[i])


def sample_decays(channel: int, p_parent_gev: float, n: int, seed: int = 1) -> np.ndarray:
    """(n, 3, 4) lab-frame products (:func:`decay_products`) of ``n`` decays of ``channel`` at ``p_parent_gev``."""
    out = np.zeros((int(n), 3, 4))
    _sample(int(channel), float(p_parent_gev), int(seed), out)
    return out
