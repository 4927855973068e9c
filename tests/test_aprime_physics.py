"""A' production physics against docs/physics.md section 9 (checks 4-10, 15, 16, 22, 23) and self-consistency."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from sim_frontend import aprime, yields
from sim_frontend import physics_constants as pc

Z2 = pc.PB_Z**2


def test_n_x0_of_lead() -> None:
    assert pytest.approx(1.851e22, rel=1e-3) == pc.PB_N_X0_PER_CM2


@pytest.mark.parametrize("mass_gev, e0_gev", [(0.001, 100.0), (0.0167, 100.0), (0.1, 100.0), (0.5, 30.0), (1.0, 150.0)])
def test_check4_chi_closed_form_equals_numerical_integral(mass_gev: float, e0_gev: float) -> None:
    closed = aprime.chi_elastic(mass_gev, e0_gev)
    gauss = aprime.chi_numerical(mass_gev, e0_gev, inelastic=False)
    tmin, tmax = aprime.iww_t_limits(mass_gev, e0_gev)

    def integrand(u: float) -> float:  # dt (t - tmin)/t^2 G2 with t = e^u
        t = np.exp(u)
        return (1.0 - tmin / t) * aprime.form_factor_elastic(t)

    a, _, d = aprime.screening_parameters()
    knots = [u for u in (np.log(1 / a**2), np.log(d)) if np.log(tmin) < u < np.log(tmax)]
    quad, _ = integrate.quad(integrand, np.log(tmin), np.log(tmax), points=knots or None, epsrel=1e-12, limit=500)
    assert gauss == pytest.approx(closed, rel=1e-6)
    assert quad == pytest.approx(closed, rel=1e-6)


@pytest.mark.parametrize("mass_mev, expected", [(5, 10.032), (16.7, 12.336), (100, 12.230), (1, 6.824), (1000, 3.294)])
def test_check5_chi_over_z2_elastic(mass_mev: float, expected: float) -> None:
    assert aprime.chi_elastic(mass_mev * 1e-3, 100.0) / Z2 == pytest.approx(expected, rel=0.005)


def test_check6_inelastic_over_elastic_ratio() -> None:
    masses = np.array([1, 2, 5, 10, 16.7, 20, 50, 100]) * 1e-3
    ratio = aprime.chi_numerical(masses, 100.0) / aprime.chi_elastic(masses, 100.0)
    assert np.all(ratio > 1.013 - 0.003) and np.all(ratio < 1.014 + 0.003)
    assert aprime.photon_flux(0.0167, 100.0, "elastic+inelastic") / Z2 == pytest.approx(12.499, rel=0.005)


def test_check7_leading_log_total_cross_section() -> None:
    assert aprime.sigma_leading_log(0.0167, 100.0, eps=1e-4) == pytest.approx(4188.0, rel=0.01)


@pytest.mark.parametrize("mass_mev", [5, 10, 16.7, 20, 50, 100])
def test_check8_integral_of_c_vs_leading_log(mass_mev: float) -> None:
    ratio = aprime.sigma_iww(mass_mev * 1e-3, 100.0) / aprime.sigma_leading_log(mass_mev * 1e-3, 100.0)
    assert 0.99 <= ratio <= 1.04


@pytest.mark.parametrize(
    "mass_mev, expected_pb",
    [(1, 1.658e13), (2, 8.233e12), (16.7, 4.281e11), (100, 1.737e10), (500, 3.835e8), (1000, 5.288e7)],
)
def test_integral_of_c_matches_physics_table(mass_mev: float, expected_pb: float) -> None:
    assert aprime.sigma_iww(mass_mev * 1e-3, 100.0) == pytest.approx(expected_pb, rel=0.01)


def test_check9_iww_equals_ww_for_heavy_aprime() -> None:
    x = np.linspace(0.1, 0.99, 200)
    ratio = aprime.dsigma_dx_iww(x, 0.1, 100.0) / aprime.dsigma_dx_ww(x, 0.1, 100.0)
    assert np.max(np.abs(ratio - 1.0)) < 0.003


@pytest.mark.parametrize("x", [0.3, 0.7, 0.95, 0.999])
def test_double_differential_integrates_to_iww(x: float) -> None:
    mass, e0 = 0.0167, 100.0
    u0 = (mass**2 * (1 - x) / x + pc.M_E_GEV**2 * x) / (2 * e0**2 * x)  # angular scale of U
    value, _ = integrate.quad(
        lambda lu: aprime.d2sigma_dx_du(x, np.exp(lu), mass, e0) * np.exp(lu),
        np.log(u0) - 30,
        np.log(u0) + 40,
        limit=500,
    )
    assert value == pytest.approx(float(aprime.dsigma_dx_iww(x, mass, e0)), rel=1e-6)


def test_check10_dmg4_reference_etl_cross_section() -> None:
    k = aprime.k_factor(0.0167, 150.0)
    assert k == pytest.approx(1.146, abs=0.001)
    assert aprime.sigma_leading_log(0.0167, 150.0, eps=1e-4) / k == pytest.approx(3643.0, rel=0.02)


def test_k_factor_grid_points_and_clamping() -> None:
    assert aprime.k_factor(0.030, 100.0) == pytest.approx(1.29257, abs=1e-12)  # corrected 30 MeV row
    assert aprime.k_factor(0.040, 20.0) == pytest.approx(1.67437, abs=1e-12)
    assert aprime.k_factor(1.0, 160.0) == pytest.approx(2.00084, abs=1e-12)
    assert aprime.k_factor(0.0005, 100.0) == aprime.k_factor(0.001, 100.0)
    assert aprime.k_factor(0.0167, 300.0) == aprime.k_factor(0.0167, 160.0)
    assert aprime.k_factor(3.0, 10.0) == aprime.k_factor(1.0, 20.0)
    midpoint = aprime.k_factor(0.015, 110.0)
    corners = [1.08268, 1.07945, 1.20018, 1.19038]
    assert midpoint == pytest.approx(np.mean(corners), abs=1e-12)


def test_etl_is_iww_over_k() -> None:
    assert aprime.sigma_etl(0.05, 100.0) == pytest.approx(aprime.sigma_iww(0.05, 100.0) / 1.44284, rel=1e-12)


def test_x_limits_and_threshold() -> None:
    lo, hi = aprime.x_limits(0.0167, 100.0)
    assert lo == pytest.approx(1.67e-4) and hi == pytest.approx(1 - pc.M_E_GEV / 100.0)
    assert aprime.kinematic_threshold_gev(0.1) == pytest.approx(0.1 * (1 + pc.M_E_GEV / 193.0 + 0.2 / 193.0), rel=1e-3)
    assert aprime.dsigma_dx_iww(lo * 0.99, 0.0167, 100.0) == 0.0
    assert aprime.dsigma_dx_iww(hi + 1e-7, 0.0167, 100.0) == 0.0


def test_cross_sections_scale_with_eps_squared() -> None:
    base = aprime.sigma_x_range(0.02, 80.0, x_lo=0.4)
    assert aprime.sigma_x_range(0.02, 80.0, x_lo=0.4, eps=3e-4) / 9e-8 == pytest.approx(float(base), rel=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda: aprime.sigma_iww(-0.01, 100.0),
        lambda: aprime.sigma_iww(0.0, 100.0),
        lambda: aprime.sigma_iww(0.01, 100.0, eps=0.0),
        lambda: aprime.sigma_leading_log(0.01, 100.0, eps=-1e-4),
        lambda: aprime.sigma_iww(0.5, 0.3),
        lambda: aprime.chi_elastic(np.nan, 100.0),
        lambda: aprime.sample_x(0.5, 0.4, 10, np.random.default_rng(1)),
        lambda: aprime.width_ee(0.01, 0.0),
        lambda: yields.yield_per_eot(-0.01),
        lambda: yields.yield_per_eot(0.01, eps=0.0),
        lambda: yields.yield_per_eot(0.01, emiss_min_gev=120.0),
    ],
)
def test_absurd_input_raises_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_below_threshold_names_the_numbers() -> None:
    """The error names the first energy/mass pair below the threshold in plain numbers (it printed numpy
    array reprs, and no threshold), and how many pairs are below it."""
    with pytest.raises(ValueError) as exc:
        aprime.sigma_iww(np.array([0.01, 0.5]), 0.3)
    msg = str(exc.value)
    assert "electron energy 0.3 GeV" in msg and "for m = 0.5 GeV" in msg and "array" not in msg
    thr = float(aprime.kinematic_threshold_gev(0.5))
    assert f"threshold {thr:g} GeV" in msg and "(1 of 2 energy/mass pairs)" in msg


def test_check22_y_parameter() -> None:
    y = aprime.y_parameter(1.24e-4, 0.5, 20.0 / 3.0, 20.0)
    assert y == pytest.approx(9.49e-11, rel=0.005)
    assert y == pytest.approx(1.24e-4**2 * 0.5 / 81, rel=1e-12)


def test_check23_widths() -> None:
    m = 0.03
    assert aprime.width_dirac_fermion(m, m / 3, 0.5) / m == pytest.approx(0.1518, rel=0.001)
    assert aprime.width_complex_scalar(m, m / 3, 0.5) / m == pytest.approx(0.01725, rel=0.001)
    assert aprime.width_ee(0.0167, 1e-4) == pytest.approx(4.06e-13, rel=0.005)
    assert aprime.width_dirac_fermion(0.01, 0.006, 0.5) == 0.0  # below 2 m_chi


def test_sample_x_follows_the_cross_section() -> None:
    rng = np.random.default_rng(7)
    x = aprime.sample_x(0.0167, 100.0, 200_000, rng)
    lo, hi = aprime.x_limits(0.0167, 100.0)
    assert np.all((x >= lo) & (x <= hi))
    expected = aprime.sigma_x_range(0.0167, 100.0, x_lo=0.5) / aprime.sigma_iww(0.0167, 100.0)
    assert np.mean(x > 0.5) == pytest.approx(float(expected), abs=0.003)
    cut = aprime.sample_x(0.0167, 100.0, 50_000, rng, x_min=0.5)
    assert cut.min() >= 0.5
    again = aprime.sample_x(0.0167, 100.0, 10, np.random.default_rng(3))
    assert np.array_equal(again, aprime.sample_x(0.0167, 100.0, 10, np.random.default_rng(3)))


# --- yields (PAPER Eq. 8) ----------------------------------------------------------------
@pytest.mark.parametrize("mass_mev, expected", [(16.7, 6.3e-3), (100.0, 2.6e-4)])
def test_check15_yield_per_eot(mass_mev: float, expected: float) -> None:
    assert yields.yield_per_eot(mass_mev * 1e-3) == pytest.approx(expected, rel=0.15)


def test_etl_yield_matches_reference_row() -> None:
    assert yields.yield_per_eot(0.0167, model="ETL") == pytest.approx(5.37e-3, rel=0.15)
    assert yields.yield_per_eot(0.1, model="ETL") == pytest.approx(1.51e-4, rel=0.15)


def test_check16_yield_scales_with_eps_squared() -> None:
    base = yields.yield_per_eot(0.0167)
    for eps in (1e-4, 3.3e-3, 0.7):
        assert yields.yield_per_eot(0.0167, eps=eps) / eps**2 == pytest.approx(base, rel=1e-12)


def test_spectrum_above_cut_integrates_to_yield() -> None:
    edges = np.linspace(0.0, 100.0, 41)
    spectrum = yields.aprime_energy_spectrum(0.0167, edges)
    above = np.sum(spectrum[20:] * np.diff(edges)[20:])
    assert above == pytest.approx(yields.yield_per_eot(0.0167), rel=0.005)
    assert np.all(spectrum >= 0)
