"""Bethe-Heitler muon-pair production by photons, gamma Z -> mu+ mu- Z (docs/physics.md section 4; PAPER Eqs. 17-22;
Geant4 Physics Reference Manual, "Muon pair production by photons").

x+ = E_mu+/E_gamma, x- = 1 - x+. Energies in GeV; cross-sections in cm^2 (``*_ub`` variants in microbarn).
The x+ limits follow the paper, x_max,min = 1/2 +/- sqrt(1/4 - m_mu/E_gamma), so the model needs
E_gamma >= 4 m_mu; below that the cross-section is 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sim_frontend import physics_constants as pc

B_SCREENING: float = 183.0
"""Screening constant B for Z > 1 (202.4 for hydrogen)."""

R_MU_CM: float = pc.ALPHA_EM * pc.HBARC_GEV_CM / pc.M_MU_GEV
"""Classical muon radius r_mu = alpha hbar c / m_mu [cm] (1.3632e-15 cm)."""

THRESHOLD_GEV: float = 4.0 * pc.M_MU_GEV
"""Lowest photon energy [GeV] for which the paper's x+ limits are real."""


def nuclear_size_factor(a_target: float = pc.PB_A) -> float:
    """D_n = 1.54 A^0.27 (dimensionless; A = mass number)."""
    if a_target <= 0:
        raise ValueError(f"mass number must be > 0, got {a_target}")
    return 1.54 * a_target**0.27


def w_inf(z: float = pc.PB_Z, a_target: float = pc.PB_A) -> float:
    """Asymptotic screening argument W_inf = B Z^(-1/3) m_mu / (D_n m_e) (1339.8 for Pb)."""
    if z <= 0:
        raise ValueError(f"Z must be > 0, got {z}")
    return B_SCREENING * z ** (-1.0 / 3.0) * pc.M_MU_GEV / (nuclear_size_factor(a_target) * pc.M_E_GEV)


def x_plus_limits(e_gamma_gev: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Paper's x+ range (x_min, x_max) = 1/2 -/+ sqrt(1/4 - m_mu/E_gamma); (1/2, 1/2) below threshold."""
    e = _photon_energy(e_gamma_gev)
    half_width = np.sqrt(np.maximum(0.25 - pc.M_MU_GEV / e, 0.0))
    return 0.5 - half_width, 0.5 + half_width


def _photon_energy(e_gamma_gev: ArrayLike) -> NDArray[np.float64]:
    e = np.asarray(e_gamma_gev, dtype=float)
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"photon energy must be finite and > 0 GeV, got {e_gamma_gev!r}")
    return e


def w_factor(
    x_plus: ArrayLike, e_gamma_gev: ArrayLike, z: float = pc.PB_Z, a_target: float = pc.PB_A
) -> NDArray[np.float64]:
    """Screening argument W(x+, E_gamma) (dimensionless); x+ in (0, 1)."""
    e = _photon_energy(e_gamma_gev)
    x = np.asarray(x_plus, dtype=float)
    delta = pc.M_MU_GEV**2 / (2.0 * e * x * (1.0 - x))
    d_n = nuclear_size_factor(a_target)
    numerator = 1.0 + (d_n * pc.SQRT_E - 2.0) * delta / pc.M_MU_GEV
    denominator = 1.0 + B_SCREENING * z ** (-1.0 / 3.0) * pc.SQRT_E * delta / pc.M_E_GEV
    return w_inf(z, a_target) * numerator / denominator


def dsigma_dx_plus(
    x_plus: ArrayLike, e_gamma_gev: ArrayLike, z: float = pc.PB_Z, a_target: float = pc.PB_A
) -> NDArray[np.float64]:
    """dsigma/dx+ [cm^2] = 4 alpha Z^2 r_mu^2 (1 - (4/3) x+ x-) ln W; 0 outside the x+ limits.
    Symmetric under x+ <-> x-."""
    x = np.asarray(x_plus, dtype=float)
    e = _photon_energy(e_gamma_gev)
    lo, hi = x_plus_limits(e)
    inside = (x > lo) & (x < hi)
    xs = np.where(inside, x, 0.5)
    x_pm = xs * (1.0 - xs)
    log_w = np.log(w_factor(xs, e, z, a_target))
    value = 4.0 * pc.ALPHA_EM * z * z * R_MU_CM**2 * (1.0 - 4.0 / 3.0 * x_pm) * log_w
    return np.where(inside, np.maximum(value, 0.0), 0.0)


def sigma_total_cm2(
    e_gamma_gev: ArrayLike, z: float = pc.PB_Z, a_target: float = pc.PB_A, n_nodes: int = 128
) -> NDArray[np.float64]:
    """Total cross-section [cm^2]: Gauss-Legendre integral of :func:`dsigma_dx_plus` over the x+ limits
    (0 below 4 m_mu). Vectorised over the photon energy [GeV]."""
    e = _photon_energy(e_gamma_gev)
    lo, hi = x_plus_limits(e)
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    half = 0.5 * (hi - lo)
    x = 0.5 * (hi + lo)[..., None] + half[..., None] * nodes
    return half * (dsigma_dx_plus(x, e[..., None], z, a_target) @ weights)


def sigma_total_ub(e_gamma_gev: ArrayLike, z: float = pc.PB_Z, a_target: float = pc.PB_A) -> NDArray[np.float64]:
    """Total cross-section [microbarn]."""
    return sigma_total_cm2(e_gamma_gev, z, a_target) / pc.UB_TO_CM2


@lru_cache(maxsize=32)
def _x_plus_cdf(e_gamma_gev: float, z: float, a_target: float, n_grid: int) -> tuple[NDArray, NDArray]:
    lo, hi = x_plus_limits(e_gamma_gev)
    x = np.linspace(float(lo), float(hi), n_grid)
    density = dsigma_dx_plus(x, e_gamma_gev, z, a_target)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]))])
    cdf /= cdf[-1]
    x.setflags(write=False)
    cdf.setflags(write=False)
    return x, cdf


def sample_x_plus(
    e_gamma_gev: float,
    n: int,
    rng: np.random.Generator,
    z: float = pc.PB_Z,
    a_target: float = pc.PB_A,
    n_grid: int = 2049,
) -> NDArray[np.float64]:
    """Draw ``n`` values of x+ = E_mu+/E_gamma for a photon of ``e_gamma_gev`` [GeV] (inverse CDF on a grid).
    Raises ValueError below 4 m_mu."""
    e = float(_photon_energy(e_gamma_gev))
    if e <= THRESHOLD_GEV:
        raise ValueError(f"photon energy {e} GeV is below the dimuon threshold {THRESHOLD_GEV:.4f} GeV")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    x, cdf = _x_plus_cdf(e, float(z), float(a_target), int(n_grid))
    return np.interp(rng.random(n), cdf, x)
