"""CLs limits (check 21), fast vs pyhf agreement, eps_90 scaling, and the published tables (checks 17-20)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from offline import limits, paper2016

LN10 = math.log(10.0)
NO_SYST = limits.SignalSystematics(0.0, 0.0, 0.0)


# --- published tables ------------------------------------------------------------------
def test_check17_table_ii_product() -> None:
    assert paper2016.table_ii_efficiency() == pytest.approx(0.497, abs=0.005)
    assert paper2016.table_ii_efficiency() == pytest.approx(paper2016.TABLE_II_TOTAL[0], abs=0.005)


def test_check18_table_i_dimuon_efficiencies() -> None:
    for sample in paper2016.TABLE_I:
        assert sample.efficiency == pytest.approx(sample.efficiency_quoted, abs=0.011)


def test_check19_table_iii_sum() -> None:
    assert paper2016.table_iii_sum_of_central_values() == pytest.approx(0.123, abs=0.005)
    assert paper2016.table_iii_sum_of_central_values() == pytest.approx(paper2016.TABLE_III_TOTAL[0], abs=0.005)


def test_check20_eot_sum() -> None:
    assert sum(b.n_eot for b in paper2016.EXPOSURE_2016) == paper2016.TOTAL_EOT_2016
    assert sum(r.n_eot for r in limits.paper_2016_runs()) == pytest.approx(4.3e10, rel=1e-15)


# --- counting model -------------------------------------------------------------------
@pytest.mark.parametrize("b", [0.0, 0.12, 1.0, 10.0])
def test_check21_n90_zero_observed(b: float) -> None:
    assert limits.n90_counting(0, b) == pytest.approx(LN10, abs=1e-4)
    # background uncertainty cancels in CLs for n_obs = 0
    assert limits.n90_counting(0, b, background_log_width=0.3) == pytest.approx(LN10, abs=1e-4)


def test_n90_one_observed_no_background() -> None:
    # CLs = P(n <= 1 | s) = e^-s (1 + s) = 0.1
    s = limits.n90_counting(1, 0.0)
    assert math.exp(-s) * (1 + s) == pytest.approx(0.1, abs=1e-9)
    assert s == pytest.approx(3.8897, abs=1e-3)


def test_signal_systematics_weaken_the_limit() -> None:
    syst = limits.SignalSystematics()
    assert syst.log_width() == pytest.approx(math.sqrt(math.log(1.02) ** 2 + math.log(1.15) ** 2 + math.log(1.1) ** 2))
    smeared = limits.n90_counting(0, 0.12, syst.log_width())
    assert LN10 < smeared < 1.05 * LN10
    # hand integral: E[exp(-s kappa)] = 0.1 with log-normal kappa
    z = np.linspace(-8, 8, 20001)
    weights = np.exp(-0.5 * z**2)
    mean = np.sum(weights * np.exp(-smeared * np.exp(syst.log_width() * z))) / np.sum(weights)
    assert mean == pytest.approx(0.1, rel=1e-6)


def test_cls_is_monotone_in_signal() -> None:
    values = [limits.cls_counting(s, 2, 1.5, 0.2, 0.3) for s in np.linspace(0, 10, 21)]
    assert values[0] == pytest.approx(1.0)
    assert np.all(np.diff(values) < 0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        limits.cls_counting(-1.0, 0, 0.1)
    with pytest.raises(ValueError):
        limits.n90_counting(0, 0.1, level=1.5)
    with pytest.raises(ValueError):
        limits.RunExposure("x", n_eot=-1.0, efficiency=0.5)
    with pytest.raises(ValueError):
        limits.RunExposure("x", n_eot=1e10, efficiency=1.5)
    with pytest.raises(ValueError):
        limits.n90_for_runs(limits.paper_2016_runs(), NO_SYST, method="bayes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1])
def test_non_finite_background_and_systematics_are_refused(bad: float) -> None:
    """NaN and inf passed the ">= 0" checks and reached the CLs solver ("The function value at x=0.0 is NaN")."""
    with pytest.raises(ValueError, match="background and its error must be finite"):
        limits.RunExposure("x", n_eot=1e10, efficiency=0.5, background=bad)
    with pytest.raises(ValueError, match="background and its error must be finite"):
        limits.RunExposure("x", n_eot=1e10, efficiency=0.5, background=0.1, background_err=bad)
    with pytest.raises(ValueError, match="relative systematics must be finite"):
        limits.SignalSystematics(0.02, bad, 0.1)


# --- pyhf cross-checks ----------------------------------------------------------------
def test_fast_agrees_with_pyhf_asymptotic_at_large_background() -> None:
    for syst in (NO_SYST, limits.SignalSystematics(0.02, 0.10, 0.10)):
        runs = [
            limits.RunExposure("a", 2e10, 0.5, n_obs=60, background=60.0),
            limits.RunExposure("b", 2e10, 0.5, n_obs=60, background=60.0),
        ]
        fast = limits.n90_for_runs(runs, syst, "fast")
        asym = limits.n90_for_runs(runs, syst, "pyhf-asymptotic")
        assert asym == pytest.approx(fast, rel=0.05)


def test_fast_agrees_with_pyhf_hybrid_toys_on_paper_configuration() -> None:
    runs, syst = limits.paper_2016_runs(), limits.SignalSystematics()
    fast = limits.n90_for_runs(runs, syst, "fast")
    toys = limits.n90_pyhf(runs, syst, "hybrid-toys", ntoys=6000, seed=3)
    assert toys == pytest.approx(fast, rel=0.03)


def test_pyhf_frequentist_toys_without_nuisances_give_ln10() -> None:
    runs = [limits.RunExposure("a", 4.3e10, 0.5, background=0.12)]
    cls = limits.PyhfCLs(runs, NO_SYST, "frequentist-toys", ntoys=600, seed=2)
    assert cls(LN10) == pytest.approx(0.10, abs=0.04)
    assert cls(2 * LN10) < 0.05


def test_pyhf_asymptotic_is_wrong_at_zero_background() -> None:
    # documented pyhf limitation (docs/stack.md): ~1.35-1.5 events instead of 2.30
    runs = [limits.RunExposure("a", 4.3e10, 0.5, background=0.01)]
    assert limits.n90_for_runs(runs, NO_SYST, "pyhf-asymptotic") < 0.8 * LN10


# --- eps_90 and y_90 ------------------------------------------------------------------
def test_eps90_scales_as_inverse_sqrt_eot() -> None:
    yield_eps1 = 6.3e-3
    n90 = limits.n90_for_runs(limits.paper_2016_runs(), limits.SignalSystematics())
    base = limits.limit_points([16.7], [yield_eps1], limits.paper_2016_runs(), n90)[0]
    more = limits.limit_points([16.7], [yield_eps1], limits.paper_2016_runs(n_eot_total=4 * 4.3e10), n90)[0]
    assert more.eps_90 == pytest.approx(base.eps_90 / 2, rel=1e-12)
    assert base.n_aprime_eps1 == pytest.approx(4.3e10 * 0.5 * yield_eps1)
    assert base.eps_90 == pytest.approx(math.sqrt(n90 / (4.3e10 * 0.5 * yield_eps1)))


def test_y90_for_both_alpha_d() -> None:
    point = limits.limit_points([20.0], [4.76e-3], limits.paper_2016_runs(), LN10)[0]
    assert point.y90[0.5] == pytest.approx(point.eps_90**2 * 0.5 / 81, rel=1e-12)
    assert point.y90[0.005] == pytest.approx(point.y90[0.5] / 100, rel=1e-12)
    assert float(limits.y90(1.24e-4, 0.5)) == pytest.approx(9.49e-11, rel=0.005)
    keys = set(point.as_json())
    assert keys == {"mass_mev", "eps_90", "n90", "y90_alphaD_0.5", "y90_alphaD_0.005"}
    assert np.isinf(limits.eps90(2.3, 0.0)) and np.isinf(limits.y90(np.inf, 0.5))


def test_load_runs(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {
                "runs": [
                    {
                        "name": "r1",
                        "n_eot": 1e10,
                        "efficiency": 0.6,
                        "n_obs": 1,
                        "background": 0.2,
                        "background_err": 0.05,
                    }
                ],
                "systematics": {"n_eot": 0.03, "efficiency": 0.1, "aprime_yield": 0.1},
            }
        )
    )
    runs, syst = limits.load_runs(path)
    assert runs[0].n_obs == 1 and runs[0].efficiency == 0.6 and syst is not None and syst.n_eot == 0.03
    path.write_text(json.dumps([{"name": "r1", "efficiency": 0.6}]))
    with pytest.raises(ValueError, match="n_eot"):
        limits.load_runs(path)
    path.write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError):
        limits.load_runs(path)
