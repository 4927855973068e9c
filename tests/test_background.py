"""Side-band exponential fit and its extrapolation into the signal box."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offline import background

SLOPE = -0.35  # 1/GeV
N_TOTAL = 4000


def _sample(seed: int, n: int = N_TOTAL) -> np.ndarray:
    return np.random.default_rng(seed).exponential(-1.0 / SLOPE, n)


def _true_count(lo: float, hi: float, n: int = N_TOTAL) -> float:
    return n * (math.exp(SLOPE * lo) - math.exp(SLOPE * hi))


def test_fit_recovers_known_exponential() -> None:
    fit = background.fit_sideband(_sample(1), (2.0, 12.0), n_bins=40)
    assert fit.valid and fit.shape == "exp"
    p0_true = math.log(N_TOTAL * -SLOPE)  # density N k exp(-k E) = exp(p0 + p1 E)
    assert fit.params[1] == pytest.approx(SLOPE, abs=3 * fit.errors[1])
    assert fit.params[0] == pytest.approx(p0_true, abs=3 * fit.errors[0])
    assert 0.4 < fit.chi2 / fit.ndf < 2.0


def test_box_integral_within_errors_and_pulls() -> None:
    pulls = []
    for seed in range(12):
        estimate = background.estimate_background(_sample(seed), (2.0, 12.0), (0.0, 1.0))
        pulls.append((estimate.n_b - _true_count(0.0, 1.0)) / estimate.stat_err)
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls) < 4.0)
    assert abs(pulls.mean()) < 1.5  # no gross bias of the extrapolation
    assert 0.3 < pulls.std() < 2.0  # the quoted error has the right size


def test_integral_matches_closed_form() -> None:
    params = (2.0, -0.4)
    exact = math.exp(2.0) / 0.4 * (math.exp(-0.4 * 1.0) - math.exp(-0.4 * 7.0))
    assert background.integral(1.0, 7.0, "exp", params) == pytest.approx(exact, rel=1e-10)
    fit = background.SidebandFit("exp", (1.0, 7.0), params, (0.1, 0.01), ((0.01, 0.0), (0.0, 1e-4)), 0.0, 1, True)
    value, error = background.box_integral(fit, (1.0, 7.0))
    # d integral / d p0 = integral: with var(p0) = 0.01 and var(p1) = 1e-4
    d_p1 = math.exp(2.0) * ((-1.0 / 0.4 - 1.0 / 0.16) * math.exp(-0.4) - (-7.0 / 0.4 - 1.0 / 0.16) * math.exp(-2.8))
    assert value == pytest.approx(exact, rel=1e-10)
    assert error == pytest.approx(math.sqrt(exact**2 * 0.01 + d_p1**2 * 1e-4), rel=1e-5)


def test_systematic_variations_present_and_result_serialisable() -> None:
    estimate = background.estimate_background(_sample(5), (2.0, 12.0), (0.5, 1.0))
    assert {"shape=exp2", "range_lo+", "range_hi-", "shape=power"} <= set(estimate.variations)
    assert estimate.syst_err == pytest.approx(max(abs(v - estimate.n_b) for v in estimate.variations.values()))
    out = estimate.as_json()
    assert out["n_b"] == estimate.n_b and out["fit"]["shape"] == "exp" and len(out["fit"]["params"]) == 2
    assert out["chi2_ndf"] == pytest.approx(estimate.chi2_ndf)


def test_power_law_skipped_when_box_reaches_zero() -> None:
    estimate = background.estimate_background(_sample(6), (2.0, 12.0), (0.0, 1.0))
    assert "shape=power" not in estimate.variations


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        background.fit_sideband(np.array([3.0, 4.0]), (2.0, 12.0))
    with pytest.raises(ValueError):
        background.fit_sideband(_sample(1), (12.0, 2.0))
    with pytest.raises(ValueError):
        background.fit_sideband(_sample(1), (2.0, 12.0), shape="gauss")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        background.box_integral(background.fit_sideband(_sample(1), (2.0, 12.0)), (1.0, 0.0))
