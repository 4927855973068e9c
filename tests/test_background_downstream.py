"""Downstream background estimators (offline/background_downstream.py): biased MC through the simulation,
trigger and selection of recorded data, weights carried, compared with Table III (docs/physics.md 6.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detector.config import load_calibration, load_config
from offline import background_downstream as bd
from offline import selection as sel
from sim_frontend import beam, processes

EOT, INTENSITY = 4.3e10, 5.1e6  # Table III exposure, Table II intensity
KEYS = {"n", "err_stat", "err_syst", "mc_events"}


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


@pytest.fixture(scope="module")
def calib(cfg):
    return load_calibration(cfg)


def test_hadron_electroproduction_is_below_the_paper_bound(cfg, calib):
    r = bd.hadron_electroproduction(cfg, EOT, INTENSITY, n_mc=1600, seed=3, calib=calib)
    assert set(r) >= KEYS and r["mc_events"] == 3200
    pt = next(s for s in r["samples"] if s["name"] == "ep_punchthrough")
    # neutral leading hadrons with E_h > 50 GeV vanish: P(v > 1/2) x neutral x the selection efficiency
    p_v = math.log(2) / math.log(1 / processes.EP_V_MIN)
    frac = pt["selected"] / pt["mc_own"]  # of the events that did not radiate in the beam line
    assert 0.3 * p_v * processes.EP_NEUTRAL_FRACTION < frac < p_v * processes.EP_NEUTRAL_FRACTION
    assert 0 < r["n"] < 0.001 and r["err_stat"] < 0.5 * r["n"]  # Table III: < 0.001
    # order of magnitude from the inputs: 1e-4 x P(v > 1/2) x neutral x exp(-(31.5 - ~0.1) lambda)
    lam = cfg_lambda_total()
    rough = EOT * processes.EP_PROB * p_v * processes.EP_NEUTRAL_FRACTION * math.exp(-lam)
    assert 0.2 * rough < r["n"] < 2 * rough * math.exp(processes.EP_DEPTH_X0 * processes.HADRON_LAMBDA_PER_X0)


def cfg_lambda_total() -> float:
    from sim_frontend import geometry

    return geometry.ECAL_LAMBDA + processes.HCAL_LAMBDA_TOTAL


def test_punchthrough_and_dimuon_loss_bounds(cfg, calib):
    r = bd.punchthrough(cfg, EOT, INTENSITY, n_mc=300, seed=4, calib=calib)
    assert set(r) >= KEYS and r["mc_events"] == 300
    assert r["n"] == 0 and r["n_upper_90"] < 0.003  # Table III: < 0.001; our bound from 300 forced events
    # the bound from an empty box is the mean generated weight: heavy-tailed, 300 events do not fix it
    d = bd.dimuon_loss(cfg, EOT, INTENSITY, n_mc=1000, seed=4, calib=calib)
    assert d["mc_events"] == 1000 and d["n"] >= 0
    bound = d["n"] if d["n_upper_90"] is None else d["n_upper_90"]
    assert bound < 0.015  # the paper: 0.005 +/- 0.001 -- ours may only be below


def test_target_interactions_scale_with_the_accidental_tag(cfg, calib):
    r1 = bd.target_interactions(cfg, EOT, INTENSITY, n_mc=300, seed=5, calib=calib, p_sr=1.0)
    r2 = bd.target_interactions(cfg, EOT, INTENSITY, n_mc=300, seed=5, calib=calib, p_sr=1e-3)
    assert r1["mc_events"] == 900 and r1["inputs"]["p_sr_accidental"] == 1.0
    assert r2["n"] == pytest.approx(1e-3 * r1["n"], rel=1e-9, abs=1e-300)
    for a, b in zip(r1["samples"], r2["samples"]):
        assert b["n_upper_90"] == pytest.approx(1e-3 * a["n_upper_90"], rel=1e-9)
    # the default accidental tag is measured on simulated tail electrons: in time x tagged, nothing typed in
    tag = bd.accidental_tag(cfg, calib, INTENSITY, n_tail=400, seed=5)
    rate = INTENSITY * bd.electron_fraction(cfg) / 4.8 * beam.tail_probability(cfg)
    assert tag["p_in_time"] == pytest.approx(rate * 20e-9, rel=1e-3) and tag["n_tail"] == 400
    assert tag["p_sr"] == pytest.approx(tag["p_in_time"] * tag["tagged"] / 400, rel=1e-9)
    assert bd.p_sr_accidental(cfg, INTENSITY, calib, n_tail=400, seed=5) == tag["p_sr"]
    cex = next(s for s in r1["samples"] if s["name"] == "cex")
    # charge exchange with an accidental SR tag: an e.m. shower of ~100 GeV, so mostly not in the box
    assert cex["mean_w_generated"] == pytest.approx((1 - math.exp(-1.5)) * processes.CEX_FRACTION, rel=1e-6)


def test_histograms_and_cut_flow_carry_the_weights():
    n = 40
    t = {
        "trigger_mask": np.ones(n, np.uint8),
        "srd0": np.full(n, 0.05),
        "srd1": np.full(n, 0.05),
        "srd2": np.full(n, 0.05),
        "srd0_dt": np.zeros(n),
        "srd1_dt": np.zeros(n),
        "srd2_dt": np.zeros(n),
        "ecal_chi2": np.ones(n),
        "ecal_ndf": np.ones(n),
        "ecal_x_mm": np.zeros(n),
        "ecal_y_mm": np.zeros(n),
        "e_ps_sum": np.full(n, 1.0),
        "v2_mip": np.zeros(n),
        "e_hcal": np.zeros(n),
        "n_cells_pileup": np.zeros(n, np.int64),
        "e_ecal": np.where(np.arange(n) < 10, 20.0, 90.0),
        "truth_weight": np.full(n, 0.25, np.float32),
    }
    s = sel.select(t, sel.Cuts.from_config(load_config(None)))
    h = sel.new_histograms()
    sel.fill_histograms(h, t, s)
    assert h["ecal_vs_hcal_trigger"].values().sum() == pytest.approx(0.25 * n)
    flow = h["cutflow"].values()
    assert flow[0] == pytest.approx(0.25 * n) and flow[-1] == pytest.approx(0.25 * 10)
    assert s.cut_flow()["box"] == 10  # counts stay counts
