"""The offline figures (offline/plots.py) and the mass scan behind the exclusion plot (offline/report.py)."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest

from detector.config import load_config
from offline import plots, report


def _png(path) -> np.ndarray:
    """RGB pixels in [0, 1] of a written PNG."""
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    return img[..., :3]


def test_scan_efficiency_is_linear_in_log_mass_and_held_outside():
    signal = [{"mass_mev": 100.0, "efficiency": 0.4}, {"mass_mev": 10.0, "efficiency": 0.6}]
    eff = report.scan_efficiency(signal, [1.0, 10.0, math.sqrt(10.0 * 100.0), 100.0, 1000.0])
    assert eff == pytest.approx([0.6, 0.6, 0.5, 0.4, 0.4], abs=1e-12)
    with pytest.raises(ValueError):
        report.scan_efficiency([], [1.0])


def test_limits_carry_a_mass_scan_from_1_mev_to_1_gev():
    cfg = load_config(None)
    signal = [{"mass_mev": 16.7, "efficiency": 0.5, "efficiency_err": 0.01}]
    bkg = {"n_b": 0.1, "stat_err": 0.05, "syst_err": 0.02}
    res = report.compute_limits({"run-1": {"eot": 1.0e10, "n_obs": 0}}, bkg, signal, cfg)
    scan = res["scan"]
    masses = [p["mass_mev"] for p in scan]
    assert masses[0] == pytest.approx(1.0) and masses[-1] == pytest.approx(1000.0)
    assert masses == sorted(masses) and len(masses) == len(report.SCAN_MASSES_MEV) + 1  # + the simulated mass
    at_sim = [p for p in scan if not p["efficiency_interpolated"]]
    assert [p["mass_mev"] for p in at_sim] == [16.7]
    # the scan at the simulated mass is the limit of that mass
    assert at_sim[0]["eps_90"] == pytest.approx(res["points"][0]["eps_90"], rel=1e-12)
    eps = np.array([p["eps_90"] for p in scan])
    assert np.all(np.isfinite(eps)) and np.all(np.diff(eps) > 0)  # fewer A' the heavier, same efficiency
    assert all(p["efficiency"] == 0.5 for p in scan)
    for p in scan:  # both alpha_D of the (m_chi, y) plot, m_A' = 3 m_chi
        assert p["y90_alphaD_0.5"] == pytest.approx(p["eps_90"] ** 2 * 0.5 / 81, rel=1e-12)
        assert p["y90_alphaD_0.1"] == pytest.approx(p["eps_90"] ** 2 * 0.1 / 81, rel=1e-12)


def test_exclusion_plot_shades_the_region_above_the_curve(tmp_path):
    m = np.geomspace(1.0, 1000.0, 20)
    eps = 1e-4 * m**0.8
    path = plots.plot_exclusion(m, eps, tmp_path / "ex.png", info="1e10 EOT, 0 observed", simulated_mev=[16.7])
    img = _png(path)
    light_blue = (img[..., 2] - img[..., 0] > 0.1) & (img[..., 0] > 0.7)  # the shading, not the curve
    assert light_blue.mean() > 0.2
    # nothing to draw is an error, not an empty figure
    with pytest.raises(ValueError):
        plots.plot_exclusion([], [], tmp_path / "none.png")


def test_y_plot_draws_both_alpha_d(tmp_path):
    m = np.geomspace(1.0, 1000.0, 20)
    eps = 1e-4 * m**0.8
    y = {a: eps**2 * a / 81 for a in (0.5, 0.1)}
    img = _png(plots.plot_y_vs_mchi(m / 3, y, tmp_path / "y.png", info="test"))
    colours = [np.array(matplotlib.colors.to_rgb(f"C{i}")) for i in (0, 1)]
    for c in colours:  # one line per alpha_D
        assert (np.abs(img - c).sum(axis=-1) < 0.15).sum() > 200


def test_box_and_sidebands_count_events_by_region():
    regions = {r.name: r for r in plots.box_and_sidebands(50.0, 1.0, 150.0, 150.0)}
    e_ecal = np.array([10.0, 49.9, 50.0, 120.0, 20.0, 80.0, 149.0])
    e_hcal = np.array([0.5, 0.99, 0.5, 0.2, 30.0, 30.0, 1.0])
    assert regions["signal box"].count(e_ecal, e_hcal) == 2
    assert regions["side band C"].count(e_ecal, e_hcal) == 2
    assert regions["side band A"].count(e_ecal, e_hcal) == 1
    assert regions["side band A"].y0 == 1.0 and regions["side band A"].height == 149.0


def test_sparse_bins_become_markers(tmp_path):
    dense_x, dense_y = np.full(10, 30.5), np.full(10, 20.5)  # one bin with 10 events
    e_ecal = np.r_[dense_x, 70.5, 5.5, 5.5, 200.0]
    e_hcal = np.r_[dense_y, 0.5, 40.5, 40.5, 1.0]  # a lone event, a bin with two, one out of range
    counts, xe, ye = np.histogram2d(e_ecal, e_hcal, bins=(150, 150), range=((0, 150), (0, 150)))
    sparse = plots.sparse_events(e_ecal, e_hcal, counts, xe, ye, 2)
    assert sparse.tolist() == [False] * 10 + [True, True, True, False]
    assert plots.sparse_events(e_ecal, e_hcal, counts, xe, ye, 1).sum() == 1
    img = _png(plots.plot_ecal_vs_hcal(e_ecal, e_hcal, tmp_path / "eh.png", bins=(150, 150), ranges=((0, 150),) * 2))
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.2) & (img[..., 2] < 0.2)
    assert red.sum() > 300  # the signal box outline
