"""Downstream physics processes (docs/physics.md 10): photoelectron statistics, muon transport, charge
exchange, electroproduction, forced processes and their weights; data unbiased, MC biased with weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from detector.config import load_config
from detector.records import PARTICLE_CODES, TRUTH_DIMUON, TRUTH_HADRONIC
from sim_frontend import beam, geometry, processes, response
from sim_frontend.beam import moyal_ppf

E_, PI, MU = (PARTICLE_CODES[k] for k in ("e-", "pi-", "mu-"))


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


def _only(cfg, **fractions):
    b = dict.fromkeys(("frac_pion", "frac_kaon", "frac_muon", "frac_halo"), 0.0)
    b.update(fractions)
    return cfg.with_overrides({"beam": b})


def v2_miss_expected(cfg) -> float:
    """P(V2 < threshold) of a muon: Poisson(n_pe x Moyal) below the veto, integrated numerically here."""
    n_max = response.v2_pe_max(cfg)
    u = (np.arange(200_000) + 0.5) / 200_000
    lf = np.maximum(1.0 + geometry.LANDAU_WIDTH * np.array([moyal_ppf(x) for x in u[::50]]), 0.0)
    return float(np.mean(stats.poisson.cdf(n_max, processes.V2_PE_PER_MIP * lf)))


def test_recorded_data_are_unbiased(cfg):
    sp = beam.generate_spill(cfg, 41, n_particles=400_000)
    t = sp.truth
    assert np.all(t["weight"] == 1.0)
    el = t["ptype"] == E_
    n_dm = int(np.sum((t["flags"] & TRUTH_DIMUON) != 0))
    expect = beam.dimuon_probability(100.0) * el.sum()  # ~55, not x200
    assert abs(n_dm - expect) < 5 * math.sqrt(expect)
    with pytest.raises(ValueError):
        beam.Bias(dimuon=0.5)


def test_v2_inefficiency_comes_from_photoelectrons(cfg):
    c = _only(cfg, frac_muon=0.5)
    sp = beam.generate_spill(c, 42, n_particles=1_000_000)
    response.apply_response(sp, c)
    t = sp.truth[sp.truth["ptype"] == MU]
    thr = cfg.offline.v2_max_mip * geometry.V2_MIP_GEV
    miss = np.sum(t["e_v2"] < thr)
    expect = v2_miss_expected(cfg) * t.size
    assert 3e-5 < expect / t.size < 6e-4  # single-muon inefficiency ~1e-4 (PAPER)
    assert abs(miss - expect) < 5 * math.sqrt(expect) + 1
    # no hard floor: the deposits reach below half the most probable value
    assert np.sum(t["e_v2"] < 0.5 * geometry.V2_MIP_GEV) > 0
    # the HCAL never misses a muon (175 p.e. per module); only a hard interaction in the ECAL (4.75e-3 of the
    # muons, flagged) can take its energy
    hard = (t["flags"] & TRUTH_HADRONIC) != 0
    assert np.all(t["e_hcal"][~hard] > 4 * 1.0)
    assert abs(hard.sum() - processes.MU_HARD_PROB * t.size) < 5 * math.sqrt(processes.MU_HARD_PROB * t.size)


def test_forced_v2_miss_weight_is_the_inefficiency(cfg):
    c = _only(cfg, frac_muon=0.5)
    sp = beam.generate_spill(c, 43, n_particles=100_000)
    response.apply_response(sp, c, force=processes.FORCE_V2_MISS)
    t = sp.truth[sp.truth["ptype"] == MU]
    assert np.all(t["e_v2"] < cfg.offline.v2_max_mip * geometry.V2_MIP_GEV)
    # importance sampling: the mean weight of the forced miss is the miss probability
    assert np.mean(t["weight"]) == pytest.approx(v2_miss_expected(cfg), rel=0.1)


def test_muon_geometric_loss():
    st = beam.rng_state(np.uint64(7), np.uint64(1), np.uint64(2))
    _, v2, h0, h1, h2, h3, w = processes.muon_downstream(st, 20.0, 0.0, 0.0, 0.0, 0.0, 0, 29)
    assert v2 > 0 and min(h0, h1, h2, h3) > 1.0 and w == 1.0
    # 50 mrad at x = 250 mm: inside V2 (300 mm) 0.65 m on, outside the HCAL (291 mm) at 0.95 m
    _, v2, h0, h1, h2, h3, w = processes.muon_downstream(st, 20.0, 250.0, 0.0, 0.05, 0.0, 0, 29)
    assert v2 > 0 and h0 == h1 == h2 == h3 == 0.0
    # a muon of 2 GeV behind the ECAL ranges out in module 1
    _, v2, h0, h1, h2, h3, w = processes.muon_downstream(st, 2.0, 0.0, 0.0, 0.0, 0.0, 0, 29)
    assert h0 > 1.0 and 0 < h1 < h0 and h2 == h3 == 0.0


def test_charge_exchange_is_a_neutral_shower(cfg):
    c = _only(cfg, frac_pion=0.5)
    sp = beam.generate_spill(c, 44, n_particles=8000)
    response.apply_response(sp, c, force=processes.FORCE_HADRON_ECAL | processes.FORCE_CEX)
    t = sp.truth[sp.truth["ptype"] == PI]
    p_int = 1 - math.exp(-geometry.ECAL_LAMBDA)
    assert np.allclose(t["weight"], p_int * processes.CEX_FRACTION, rtol=1e-5)
    assert np.all((t["flags"] & TRUTH_HADRONIC) != 0)
    assert np.all(t["e_v2"] == 0)  # no charged particle behind the ECAL
    assert np.median(t["e_ecal"] / t["e_beam"]) > 0.95 and np.median(t["e_hcal"]) < 1.0
    # without forcing the fraction of interactions in the ECAL is 1 - exp(-1.5) and their weight 1
    sp = beam.generate_spill(c, 45, n_particles=8000)
    response.apply_response(sp, c, force=processes.FORCE_HADRON_ECAL | processes.FORCE_NO_CEX)
    t = sp.truth[sp.truth["ptype"] == PI]
    assert np.allclose(t["weight"], p_int * (1 - processes.CEX_FRACTION), rtol=1e-5)
    assert np.median(t["e_hcal"]) > 30.0 and np.all(t["e_v2"] > 0)


def test_electroproduction_rate_and_punchthrough(cfg):
    c = _only(cfg)
    sp = beam.generate_spill(c, 46, n_particles=600_000)
    response.apply_response(sp, c)
    n_ep = int(np.sum((sp.truth["flags"] & TRUTH_HADRONIC) != 0))
    expect = processes.EP_PROB * sp.n
    assert abs(n_ep - expect) < 5 * math.sqrt(expect)
    sp = beam.generate_spill(c, 47, n_particles=3000)
    response.apply_response(sp, c, force=processes.FORCE_ELECTROPRODUCTION | processes.FORCE_PUNCHTHROUGH)
    # electrons whose whole energy entered the ECAL (the beam line, sim_frontend/beamline.py, takes some away)
    t = sp.truth[sp.beamline.e_front >= 0.999 * sp.truth["e_beam"]]
    assert t.size > 0.5 * sp.n
    w = t["weight"] / processes.EP_PROB
    # the forced hadron crosses ECAL + HCAL: weight exp(-(30 lambda - production depth))
    lam_tot = geometry.ECAL_LAMBDA + processes.HCAL_LAMBDA_TOTAL
    lam_prod = processes.EP_DEPTH_X0 * processes.HADRON_LAMBDA_PER_X0
    assert np.all((w >= math.exp(-lam_tot) * 0.999) & (w <= math.exp(-lam_tot + lam_prod) * 1.001))
    visible = t["e_ecal"] + t["e_hcal"]
    assert np.mean(visible < 0.8 * t["e_beam"]) > 0.3  # the leading hadron's energy is gone


def test_photon_punchthrough_weight(cfg):
    c = _only(cfg)
    sp = beam.generate_spill(c, 48, n_particles=2000)
    response.apply_response(sp, c, force=processes.FORCE_PUNCHTHROUGH)
    t = sp.truth
    lo = processes.punchthrough_weight(0.0)
    hi = processes.punchthrough_weight(processes.PT_DEPTH_X0)
    assert np.all((t["weight"] >= lo * 0.999) & (t["weight"] <= hi * 1.001))
    assert hi < 1e-9  # 7/9 x 38 X0 of conversion
    assert np.median(t["e_hcal"]) > 0.3 * 100 * processes.PT_V_MIN  # the photon showers in the HCAL
