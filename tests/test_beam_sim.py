"""Beam generator and fast detector response (sim_frontend.beam, sim_frontend.response)."""

import math

import numpy as np
import pytest
from scipy import stats

from detector import channels as ch
from detector.config import load_config
from detector.records import (
    PARTICLE_CODES,
    TRUTH_APRIME,
    TRUTH_CALIBRATION,
    TRUTH_DIMUON,
    TRUTH_DTYPE,
    TRUTH_HADRONIC,
    TRUTH_PILEUP,
)
from sim_frontend import beam, geometry, response

N = 50_000
E_, PI, MU, HALO = (PARTICLE_CODES[k] for k in ("e-", "pi-", "mu-", "halo"))


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


@pytest.fixture(scope="module")
def sim(cfg):
    sp = beam.generate_spill(cfg, 7, n_particles=N, start_unix=1.7e9)
    dep = response.apply_response(sp, cfg)
    return sp, dep


def variant(cfg, **kw):
    over: dict = {}
    for dotted, v in kw.items():
        sec, key = dotted.split("__")
        over.setdefault(sec, {})[key] = v
    return cfg.with_overrides(over)


def plain_electrons(sp):
    """Beam electrons without A' or dimuon whose whole energy entered the ECAL (no bremsstrahlung photon
    lost in the beam line, sim_frontend/beamline.py)."""
    t = sp.truth
    whole = sp.beamline.e_front >= 0.999 * t["e_beam"]
    return (t["ptype"] == E_) & ((t["flags"] & (TRUTH_APRIME | TRUTH_DIMUON | TRUTH_HADRONIC)) == 0) & whole


# ----------------------------------------------------------------------------------- generator
def test_truth_layout(sim):
    sp, dep = sim
    assert sp.truth.dtype == TRUTH_DTYPE and sp.truth.shape == (N,)
    assert np.array_equal(sp.truth["index"], np.arange(N))
    assert sp.length_s == 4.8 and sp.start_unix == 1.7e9 and sp.spill == 7
    assert dep.trigger.shape == (N, 6) and dep.trigger.dtype == np.float32
    assert dep.hcal.shape == (N, 4) and dep.other.shape == (N, 7)


def test_composition_within_statistics(cfg, sim):
    sp, _ = sim
    counts = sp.counts_by_type()
    b = cfg.beam
    expected = {
        "pi-": b.frac_pion,
        "K-": b.frac_kaon,
        "mu-": b.frac_muon,
        "halo": b.frac_halo,
    }
    expected["e-"] = 1 - sum(expected.values())
    for name, f in expected.items():
        sigma = math.sqrt(N * f * (1 - f))
        assert abs(counts[name] - N * f) < 5 * sigma + 1, (name, counts[name], N * f)


def test_times_sorted_uniform_and_poisson_spaced(sim):
    sp, _ = sim
    t = sp.truth["time_ns"]
    length = sp.length_s * 1e9
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] <= length
    # uniform over the flat top
    assert stats.kstest(t / length, "uniform").pvalue > 1e-3
    # exponential spacing with mean length/N
    gaps = np.diff(t)
    mean = length / N
    assert abs(gaps.mean() / mean - 1) < 0.02
    assert stats.kstest(gaps / mean, "expon").pvalue > 1e-3
    # pile-up flag: another particle within +/-100 ns (docs/physics.md 1.7 rate formula)
    close = np.zeros(N, bool)
    close[1:] |= gaps < 100
    close[:-1] |= gaps < 100
    assert np.array_equal((sp.truth["flags"] & TRUTH_PILEUP) != 0, close)
    p = 1 - math.exp(-2 * N / sp.length_s * 100e-9)
    assert abs(close.mean() - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_reproducible_by_seed_and_subset(cfg, sim):
    sp, dep = sim
    sp2 = beam.generate_spill(cfg, 7, n_particles=N, start_unix=1.7e9)
    assert sp2.seed == sp.seed
    dep2 = response.apply_response(sp2, cfg)
    assert sp2.truth.tobytes() == sp.truth.tobytes()
    assert np.array_equal(dep2.trigger, dep.trigger) and np.array_equal(dep2.hcal, dep.hcal)
    other = beam.generate_spill(cfg, 8, n_particles=N)
    assert other.seed != sp.seed and not np.array_equal(other.truth["time_ns"], sp.truth["time_ns"])
    # any subset of particles, re-simulated alone, gets the same deposits (counter-based randomness)
    idx = np.sort(np.random.default_rng(1).choice(N, 500, replace=False))
    sub = sp.subset(idx)  # the truth and the beam-line transport of these particles
    sub.truth[["e_ps", "e_ecal", "e_hcal", "e_v2", "e_srd"]] = 0
    dsub = response.apply_response(sub, cfg)
    assert np.array_equal(dsub.trigger, dep.trigger[idx]) and np.array_equal(dsub.other, dep.other[idx])


# ----------------------------------------------------------------------------------- electrons
def test_electron_energy_and_resolution(cfg, sim):
    sp, _dep = sim
    t = sp.truth
    e = t[plain_electrons(sp)]
    assert abs(np.median(e["e_ecal"]) / 100.0 - 1) < 0.01
    tot = (e["e_ecal"] + e["e_hcal"]) / e["e_beam"]
    assert abs(tot.mean() - 1) < 0.002  # energy conserved (leakage in the HCAL)
    expect = math.hypot(0.10 / math.sqrt(100), 0.01)  # 10%/sqrt(E) (+) 1%
    assert abs(tot.std() / expect - 1) < 0.08
    assert e["e_hcal"].mean() < 0.5 and np.all(e["e_v2"] == 0)
    # lower energy: the stochastic term shows
    c20 = variant(cfg, beam__energy_gev=20.0, beam__energy_spread=0.0)
    s20 = beam.generate_spill(c20, 1, n_particles=8000)
    response.apply_response(s20, c20)
    e20 = s20.truth[plain_electrons(s20)]
    r = (e20["e_ecal"] + e20["e_hcal"]) / e20["e_beam"]
    assert abs(r.std() / math.hypot(0.10 / math.sqrt(20), 0.01) - 1) < 0.08


def test_preshower_fraction(sim):
    sp, _ = sim
    e = sp.truth[plain_electrons(sp)]
    f = e["e_ps"] / e["e_ecal"]
    assert 0.03 < f.mean() < 0.06  # PS = first ~4 X0: 3-8% of 100 GeV
    lo, med, hi = np.percentile(e["e_ps"], [10, 50, 90])
    assert 1.0 < lo < med < hi < 10.0 and 3.0 < med < 6.0
    assert np.mean(e["e_ps"] < 0.3) < 0.005  # electrons pass the PS trigger threshold


def test_central_cell_fraction_and_channel_sums(sim):
    sp, dep = sim
    t = sp.truth
    sel = np.flatnonzero(plain_electrons(sp) & (np.abs(t["x_mm"]) < 1.5) & (np.abs(t["y_mm"]) < 1.5))
    assert sel.size > 500
    cd = response.channel_deposits(sp, dep, sel)
    main = cd[:, 36:72].sum(axis=1)
    central = cd[:, ch.ecal_id(1, 3, 3)] / main
    assert abs(central.mean() - 0.75) < 0.02
    # consistency with the compact deposits, for every particle type
    idx = np.arange(0, N, 17)
    cd = response.channel_deposits(sp, dep, idx)
    np.testing.assert_allclose(cd[:, :36].sum(1), dep.trigger[idx, 4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cd[:, :72].sum(1), t["e_ecal"][idx], rtol=1e-5, atol=1e-6)
    hc = cd[:, ch.HCAL_FIRST : ch.HCAL_FIRST + ch.N_HCAL].reshape(-1, 4, 9).sum(2)
    np.testing.assert_allclose(hc, dep.hcal[idx], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hc.sum(1), t["e_hcal"][idx], rtol=1e-5, atol=1e-6)
    for name in ("S1", "S2", "S3", "V1", "PS_SUM", "ECAL_SUM", "S0", "V0", "V2", "SRD1"):
        assert np.array_equal(cd[:, ch.by_name(name).id], dep.counter(name)[idx])
    np.testing.assert_allclose(cd[:, [ch.by_name(n).id for n in ch.SRD_NAMES]].sum(1), t["e_srd"][idx], rtol=1e-6)
    assert np.array_equal(response.channel_deposits(sp, dep, idx), cd)  # deterministic


def test_counters_srd_and_halo(sim):
    sp, dep = sim
    t = sp.truth
    beamlike = t["ptype"] != HALO
    s1 = dep.counter("S1")
    assert np.all(s1 > 0.5e-3)  # everything crosses S1
    assert abs(np.median(s1[beamlike]) / 1e-3 - 1.08) < 0.06  # Moyal MIP: mode 1 MeV, median ~1.08
    halo = t["ptype"] == HALO
    assert np.all(dep.counter("V0")[halo] > 0) and np.all(dep.counter("V0")[~halo] == 0)
    assert np.all(dep.counter("S2")[halo] == 0) and np.all(dep.counter("S3")[halo] == 0)
    f_v1 = np.mean(dep.counter("V1")[halo] > 0.5e-3)
    assert abs(f_v1 - 0.05) < 5 * math.sqrt(0.05 * 0.95 / halo.sum())
    assert np.all(dep.counter("V1")[~halo] == 0)
    scal = response.hardware_scalers(dep)
    assert scal["S1"] == N and scal["V0"] == halo.sum() and scal["S2"] == (~halo).sum()
    e = plain_electrons(sp)
    # synchrotron radiation of 2 x 21.6 photons, E_c = 11.6 MeV, 90% acceptance: ~132 MeV (docs/physics.md 1.10)
    assert abs(np.median(t["e_srd"][e]) - 0.13) < 0.01
    assert np.all(t["e_srd"][(t["ptype"] == PI) | (t["ptype"] == MU) | halo] == 0)


# ----------------------------------------------------------------------------------- hadrons, muons, dimuons
def test_hadron_response(cfg):
    c = variant(cfg, beam__frac_pion=0.3)
    sp = beam.generate_spill(c, 3, n_particles=20_000)
    dep = response.apply_response(sp, c)
    pi = sp.truth["ptype"] == PI
    t = sp.truth[pi]
    f_ps = np.mean(t["e_ps"] > 0.3)
    assert abs(f_ps - (1 - math.exp(-geometry.PS_LAMBDA))) < 0.02  # ~14% shower in the PS (docs/physics.md 1.6)
    assert abs(np.mean(t["e_ecal"] < 1.0) - math.exp(-geometry.ECAL_LAMBDA)) < 0.04  # MIP through the ECAL
    assert abs(np.mean((t["e_ecal"] + t["e_hcal"]) / t["e_beam"]) - 1) < 0.03
    h = dep.hcal[pi]
    assert h[:, 0].mean() > 10 * h[:, 1].mean() > 0  # mostly module 0, some punch-through
    silent = t["e_v2"] == 0  # only charge exchange (a neutral final state) leaves V2 dark
    assert silent.sum() <= 5 and np.all(t["e_hcal"][silent] < 1.0)
    had = (t["flags"] & TRUTH_HADRONIC) != 0
    assert abs(had.mean() - (1 - math.exp(-geometry.ECAL_LAMBDA))) < 0.03


def test_muon_response(cfg):
    c = variant(cfg, beam__frac_muon=0.3)
    sp = beam.generate_spill(c, 4, n_particles=10_000)
    dep = response.apply_response(sp, c)
    mu = sp.truth["ptype"] == MU
    t = sp.truth[mu]
    assert 0.28 < np.median(t["e_ecal"]) < 0.36  # ECAL MIP ~0.3 GeV
    for m in range(4):
        assert 2.4 < np.median(dep.hcal[mu, m]) < 2.9  # ~2.5 GeV per module (docs/physics.md 1.4)
    # V2 misses a muon only through photoelectron statistics (~1e-4: test_downstream_processes.py)
    assert np.sum(t["e_v2"] < 0.5 * geometry.V2_MIP_GEV) <= 3 and np.all(t["e_srd"] == 0)
    assert np.all(dep.shape[mu, 1] == geometry.SHAPE_MIP)


def test_dimuon_rate_weights_and_response(cfg):
    p = beam.dimuon_probability(100.0)
    assert 1.4e-4 < p < 1.8e-4  # N_X0 * int 0.572 E0/k^2 sigma_BH dk
    bias = beam.Bias.from_config(cfg)  # an MC sample: dimuons biased, weights 1/bias
    sp = beam.generate_spill(cfg, 5, n_particles=100_000, bias=bias)
    dep = response.apply_response(sp, cfg)
    t = sp.truth
    el = t["ptype"] == E_
    dm = (t["flags"] & TRUTH_DIMUON) != 0
    assert np.all(el[dm])
    expect = p * bias.dimuon
    assert abs(dm.sum() / el.sum() - expect) < 5 * math.sqrt(expect / el.sum())
    assert np.allclose(t["weight"][dm], 1 / bias.dimuon)
    assert t["weight"][el].sum() == pytest.approx(el.sum(), rel=1e-3)  # the weighted sample is unbiased
    assert np.all(t["weight"][el & ~dm] > 1.0)  # unbiased remainder
    h = dep.hcal[dm]
    assert 7.0 < t["e_hcal"][dm].mean() < 13.0  # region I: E_HCAL ~ 10 GeV
    assert np.mean((h[:, 0] > 1) & (h[:, 0] < 6)) > 0.7  # two MIPs: 1-6 GeV per module
    plain = plain_electrons(sp)
    assert (t["e_beam"] - t["e_ecal"])[dm].mean() > (t["e_beam"] - t["e_ecal"])[plain].mean() + 3.0  # muons escape
    assert np.mean(t["e_v2"][dm] > 0.5 * geometry.V2_MIP_GEV) > 0.9


def test_aprime_injection(cfg):
    c = variant(cfg, aprime__enabled=True, aprime__epsilon=1e-2, aprime__bias=1e4)  # visible test point
    p = beam.aprime_probability(c)
    assert 0.5e-6 < p < 0.8e-6  # 6.3e-3 eps^2 (docs/physics.md 3.5)
    sp = beam.generate_spill(c, 9, n_particles=40_000, bias=beam.Bias.from_config(c))
    response.apply_response(sp, c)
    t = sp.truth
    ap = (t["flags"] & TRUTH_APRIME) != 0
    n_e = np.sum(t["ptype"] == E_)
    assert abs(ap.sum() - n_e * p * 1e4) < 5 * math.sqrt(n_e * p * 1e4)
    a = t[ap & (sp.beamline.e_particle >= 0.999 * t["e_beam"])]  # the electron lost no energy in the beam line
    x = a["e_invisible"] / a["e_beam"]
    assert np.all((x > beam.X_MIN_APRIME) & (x < 1))
    visible = a["e_beam"] - a["e_invisible"]
    sigma = np.sqrt(0.01 * visible + (0.01 * visible) ** 2) + 0.05
    pull = (a["e_ecal"] + a["e_hcal"] - visible) / sigma
    assert abs(pull.mean()) < 0.3 and pull.std() < 1.5  # E_ECAL = (1 - x) E
    assert np.all(a["e_ecal"] < 0.55 * a["e_beam"]) and np.mean(a["e_hcal"] < 1.0) > 0.98
    assert np.allclose(a["weight"], 1e-4)


# ----------------------------------------------------------------------------------- calibration beam
def test_calibration_beam_lands_in_the_commanded_cell(cfg):
    table = {"x_mm": 194.0, "y_mm": -194.0, "module": 2, "cell": "2-0-2"}
    sp = beam.generate_spill(cfg, 11, n_particles=5000)
    dep = response.apply_response(sp, cfg, table=table)
    t = sp.truth
    cal = t["ptype"] != HALO
    assert np.all(t["flags"][cal] & ~TRUTH_PILEUP == TRUTH_CALIBRATION) and np.all(t["ptype"][cal] == E_)
    assert np.any(t["flags"][cal] & TRUTH_PILEUP)  # the pile-up flag survives
    assert np.all(t["e_ecal"] == 0) and np.all(t["e_v2"] == 0)
    assert np.all(dep.hcal[:, [0, 1, 3]] == 0)
    # electrons that lost no energy in the beam line (sim_frontend/beamline.py)
    whole = cal & (sp.beamline.e_front >= 0.999 * t["e_beam"])
    assert whole.sum() > 0.5 * cal.sum()
    cd = response.channel_deposits(sp, dep, np.flatnonzero(whole))
    cell = cd[:, ch.hcal_id(2, 0, 2)]
    frac = cell / dep.hcal[whole, 2]
    assert abs(np.mean(cell / t["e_beam"][whole]) - 0.80) < 0.02  # ~80% of the energy in the hit cell
    assert abs(cell.mean() / 80.0 - 1) < 0.02  # 100 GeV e- x 80%
    assert 0.85 < frac.mean() < 0.95  # corner cell: the rest leaks out
    hres = dep.hcal[whole, 2] / t["e_beam"][whole]
    assert abs(hres.std() / hres.mean() / math.hypot(0.65 / 10, 0.05) - 1) < 0.1  # HCAL resolution (relative)
    hc = cd[:, ch.HCAL_FIRST : ch.HCAL_FIRST + ch.N_HCAL]
    assert np.argmax(hc.mean(0)) + ch.HCAL_FIRST == ch.hcal_id(2, 0, 2)
    assert np.all(dep.counter("S1")[cal] > 0.5e-3) and np.all(dep.trigger[:, 4:] == 0)
    # physics position again: the ECAL sees the beam
    dep0 = response.apply_response(
        beam.generate_spill(cfg, 11, n_particles=5000),
        cfg,
        table={"x_mm": 0.0, "y_mm": 0.0, "module": -1, "cell": "PHYSICS"},
    )
    assert dep0.calibration_module == -1 and np.median(dep0.trigger[:, 5]) > 90
