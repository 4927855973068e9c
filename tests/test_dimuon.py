"""Bethe-Heitler gamma Pb -> mu+ mu- against docs/physics.md section 9 (checks 1-3)."""

from __future__ import annotations

import numpy as np
import pytest

from sim_frontend import dimuon
from sim_frontend import physics_constants as pc


@pytest.mark.parametrize("energy_gev, expected_ub", [(1.0, 30.2), (10.0, 334.0), (100.0, 886.0)])
def test_check1_total_cross_section_on_lead(energy_gev: float, expected_ub: float) -> None:
    assert dimuon.sigma_total_ub(energy_gev) == pytest.approx(expected_ub, rel=0.01)


def test_total_cross_section_at_1_tev_and_vectorised() -> None:
    sigma = dimuon.sigma_total_ub([1.0, 10.0, 100.0, 1000.0])
    assert sigma.shape == (4,)
    assert sigma[3] == pytest.approx(1477.0, rel=0.01)
    assert np.all(np.diff(sigma) > 0)
    assert dimuon.sigma_total_cm2(100.0) == pytest.approx(sigma[2] * 1e-30, rel=1e-12)


def test_check2_w_inf_lead() -> None:
    assert dimuon.w_inf() == pytest.approx(1339.8, rel=0.002)
    assert pytest.approx(1.3632e-15, rel=0.001) == dimuon.R_MU_CM


@pytest.mark.parametrize("energy_gev", [1.0, 10.0, 100.0])
def test_check3_symmetry_x_plus_x_minus(energy_gev: float) -> None:
    lo, hi = dimuon.x_plus_limits(energy_gev)
    x = np.linspace(float(lo), float(hi), 101)[1:-1]
    forward = dimuon.dsigma_dx_plus(x, energy_gev)
    backward = dimuon.dsigma_dx_plus(1.0 - x, energy_gev)
    assert np.all(forward > 0)
    np.testing.assert_allclose(forward, backward, rtol=1e-12, atol=0)


def test_below_threshold_and_bad_energies() -> None:
    assert dimuon.sigma_total_cm2(0.3) == 0.0
    assert dimuon.dsigma_dx_plus(0.5, 0.3) == 0.0
    with pytest.raises(ValueError):
        dimuon.sample_x_plus(0.3, 10, np.random.default_rng(1))
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError):
            dimuon.sigma_total_ub(bad)


def test_sampler_reproduces_the_distribution() -> None:
    rng = np.random.default_rng(11)
    energy = 50.0
    x = dimuon.sample_x_plus(energy, 200_000, rng)
    lo, hi = dimuon.x_plus_limits(energy)
    assert np.all((x >= lo) & (x <= hi))
    assert np.mean(x) == pytest.approx(0.5, abs=0.002)
    # fraction with x+ < 0.2 against the numerical integral
    grid = np.linspace(float(lo), 0.2, 4001)
    dens = dimuon.dsigma_dx_plus(grid, energy)
    part = np.sum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))
    assert np.mean(x < 0.2) == pytest.approx(part / dimuon.sigma_total_cm2(energy), abs=0.003)
    assert pytest.approx(dimuon.THRESHOLD_GEV) == pc.M_MU_GEV * 4
