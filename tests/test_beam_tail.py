"""The beam's low-energy electron tail (sim_frontend/beam.py, docs/physics.md 1.1): its rate and spectrum, its
transport through the same beam line (the dipoles' bend 21 mrad x E0/E), the accidental SR tag it gives
(offline/background_downstream.py ``accidental_tag``, docs/physics.md 10.7) and the ``accidental_sr`` source
(offline/background_accidental.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detector.config import ConfigError, load_calibration, load_config
from detector.records import PARTICLE_CODES
from offline import background_downstream as bd
from offline import background_sources as bs
from sim_frontend import beam, beamline
from sim_frontend import geometry as g
from sim_frontend.bremsstrahlung import brem_rate_per_x0

INTENSITY = 5.1e6  # e-/spill (Table II)
EOT = 4.3e10  # Table III exposure
E_ONLY = {"frac_pion": 0.0, "frac_kaon": 0.0, "frac_muon": 0.0, "frac_halo": 0.0}


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


@pytest.fixture(scope="module")
def calib():
    return load_calibration(load_config(None))


def test_tail_rate_and_energy_distribution(cfg):
    c = cfg.with_overrides({"beam": E_ONLY})
    p = beam.tail_probability(c)
    # thin radiator: 1 - exp(-t R), R the photons per X0 with 0.05 < y < 0.99 (complete screening)
    assert p == pytest.approx(-math.expm1(-2e-3 * brem_rate_per_x0(0.05, 0.99)), rel=1e-12)
    assert beam.tail_fraction(c, 50.0, 70.0) == pytest.approx(
        p * brem_rate_per_x0(0.3, 0.5) / brem_rate_per_x0(0.05, 0.99)
    )
    n = 400_000
    e = beam.generate_spill(c, 3, n_particles=n, start_unix=0.0).truth["e_beam"]
    k = int(np.count_nonzero(e < 94.0))  # 6 sigma of the 1% spread below E0, y > 0.06
    expect = n * (p - beam.tail_fraction(c, 94.0, 95.0))
    assert abs(k - expect) < 5 * math.sqrt(expect)
    k = int(np.count_nonzero((e > 50) & (e < 70)))
    expect = n * beam.tail_fraction(c, 50.0, 70.0)
    assert abs(k - expect) < 5 * math.sqrt(expect)
    # every electron a tail electron (the bias 1/p), weight p: the spectrum of y = 1 - E/E0
    t = beam.generate_spill(c, 4, n_particles=40_000, start_unix=0.0, bias=beam.Bias(tail=1.0 / p)).truth
    assert np.allclose(t["weight"], p, rtol=1e-6)
    y = 1.0 - t["e_beam"] / 100.0
    for lo, hi in ((0.1, 0.2), (0.3, 0.5), (0.6, 0.9)):
        frac = np.mean((y > lo) & (y < hi))
        want = brem_rate_per_x0(lo, hi) / brem_rate_per_x0(0.05, 0.99)
        assert abs(frac - want) < 5 * math.sqrt(want * (1 - want) / y.size) + 0.01 * want  # 1% spread at the edges


def test_tail_changes_only_the_tail_electrons(cfg):
    """The tail has its own random stream: without it the spill is the same particle by particle."""
    a = beam.generate_spill(cfg, 7, n_particles=100_000, start_unix=0.0).truth
    b = beam.generate_spill(
        cfg.with_overrides({"beam": {"tail_x0": 0.0}}), 7, n_particles=100_000, start_unix=0.0
    ).truth
    for f in ("time_ns", "ptype", "flags", "x_mm", "y_mm", "weight"):
        assert np.array_equal(a[f], b[f])
    diff = a["e_beam"] != b["e_beam"]
    assert np.all(a["ptype"][diff] == PARTICLE_CODES["e-"]) and np.all(a["e_beam"][diff] < b["e_beam"][diff])
    n_e = np.count_nonzero(a["ptype"] == PARTICLE_CODES["e-"])
    p = beam.tail_probability(cfg)
    assert abs(diff.sum() - n_e * p) < 5 * math.sqrt(n_e * p)
    with pytest.raises(ConfigError):
        cfg.with_overrides({"beam": {"tail_x0": -1e-3}})
    with pytest.raises(ValueError):
        beam.Bias(tail=0.5)


def test_tail_electrons_bend_21_mrad_times_e0_over_e(cfg):
    c = cfg.with_overrides({"beam": E_ONLY})
    spill = beam.generate_spill(
        c, 5, n_particles=4000, start_unix=0.0, bias=beam.Bias(tail=1.0 / beam.tail_probability(c))
    )
    tr = beamline.transport(spill, c)
    t = spill.truth
    # electrons that did not radiate in the line (their bend is that of their beam energy) above 40 GeV
    ok = (np.abs(tr.e_particle - t["e_beam"]) < 1e-3 * t["e_beam"]) & (t["e_beam"] > 40.0)
    idx = np.flatnonzero(ok)
    pos = beamline.station_positions(spill, c, idx)  # MM3, MM4 behind the dipoles, 10 m apart
    names = list(c.tracker.stations)
    z = dict(zip(c.beamline.layer_names, c.beamline.layer_z_m, strict=True))
    dz = z["MM4"] - z["MM3"]
    slope = (pos[:, names.index("MM4"), 0] - pos[:, names.index("MM3"), 0]) / dz  # mrad, nominal frame
    e = t["e_beam"][idx].astype(np.float64)
    kick = 0.2998 * sum(b * length for b, length in zip(c.beamline.magnet_field_t, c.beamline.magnet_length_m))
    assert kick / 100.0 * 1e3 == pytest.approx(21.0, abs=0.05)
    bend = kick / e * 1e3  # mrad: the whole bend of an electron of E, 21 mrad x 100 GeV / E
    assert np.allclose(bend, 21.0 * 100.0 / e, rtol=2e-3)
    resid = slope + (bend - kick / 100.0 * 1e3)  # the slope relative to the nominal 100 GeV trajectory
    # the rest: divergence (0.05 mrad) and scattering
    assert np.median(np.abs(resid)) < 0.1 and np.percentile(np.abs(resid), 99) < 0.3
    assert np.ptp(bend) > 10.0  # the sample spans tail energies
    # at the ECAL face: a 60 GeV electron lands ~ 0.7 x 10.5 mrad x (20.5 + 17.5) m = 266 mm beside the axis,
    # outside the ECAL; its SR is (60/100)^2 of a beam electron's
    sel60 = np.abs(t["e_beam"] - 60.0) < 1.0
    assert np.median(tr.x_mm[sel60]) == pytest.approx(-266.0, abs=8.0) and np.all(tr.e_front[sel60 & ok] == 0.0)
    full = beam.generate_spill(c, 5, n_particles=4000, start_unix=0.0)
    tr0 = beamline.transport(full, c)
    sr100 = float(np.mean(tr0.e_sr[full.truth["e_beam"] > 97.0]))
    assert float(np.mean(tr.e_sr[sel60])) == pytest.approx(0.36 * sr100, rel=0.08)


def test_srd_tag_of_tail_electrons_from_the_geometry(cfg, calib):
    """A tail electron tags only where its SR passes the SRD threshold (every section above srd_min_gev: an
    energy E_sr ~ E0 sqrt(3 x 15 MeV / the detected SR at E0)) AND the dipoles bend it past the HCAL face (an
    energy below E_h, where the offset at the ECAL face reaches the HCAL's half width)."""
    r = bd.accidental_tag(cfg, calib, INTENSITY, n_tail=3000, seed=2)
    assert r["n_tail"] == 3000 and 10 < r["tagged"] < 300
    lever = sum(
        0.2998 * b * length * (cfg.beamline.ecal_z_m - zm)
        for b, length, zm in zip(cfg.beamline.magnet_field_t, cfg.beamline.magnet_length_m, cfg.beamline.magnet_z_m)
    )  # GeV mm / mrad -> offset(E) = lever (1/E - 1/E0) [m rad GeV] x 1e3 mm
    e_h = 1.0 / (g.HCAL_HALF_MM * 1e-3 / lever + 1.0 / 100.0)
    e_ecal = 1.0 / (-g.ECAL_LO_X * 1e-3 / lever + 1.0 / 100.0)
    assert 56.0 < e_h < 60.0 and 70.0 < e_ecal < 80.0
    by = r["by_energy"]
    for b in by:
        if b["e_hi"] <= 40.0:
            assert b["srd"] == 0  # too little SR: (E/E0)^2 of ~132 MeV in three sections of 15 MeV
        if b["e_lo"] >= 80.0:
            assert b["srd"] > 0.8 * b["n"]  # SR above threshold
        if b["e_hi"] <= e_ecal - 2.0:
            assert b["out_of_ecal"] == b["n"]  # bent beside the ECAL
        if b["e_lo"] >= e_ecal + 2.0:
            assert b["out_of_ecal"] < 0.2 * b["n"]  # in the ECAL, save those that radiated in the line
    tagged = sum(b["tagged"] for b in by)
    # the tags come from the band between the SR threshold and the HCAL edge; above it only electrons that
    # lost energy in the line before the dipoles (their bend is that of the lower energy)
    assert sum(b["tagged"] for b in by if b["e_lo"] >= 40.0 and b["e_hi"] <= e_h + 2.5) >= 0.7 * tagged
    assert sum(b["tagged"] for b in by if b["e_lo"] >= e_h + 2.5) <= 0.25 * tagged
    assert r["p_tag_given_tail"] == pytest.approx(tagged / 3000, rel=1e-12)
    assert r["p_tag_given_tail"] < beam.tail_fraction(cfg, 40.0, 65.0) / beam.tail_probability(cfg)
    assert r["p_sr"] == pytest.approx(r["p_in_time"] * r["p_tag_given_tail"], rel=1e-12)


def test_accidental_sr_source_keys_and_bound(cfg, calib):
    r = bs.SOURCES["accidental_sr"](cfg, calib, EOT, INTENSITY, 300, 1, lambda done, total: None)
    assert set(r) >= {"n", "err", "err_stat", "err_syst", "mc"}
    mc = r["mc"]
    assert mc["events"] == 600 and {"box_events", "samples", "inputs", "n_upper_90"} <= set(mc)
    tag = mc["inputs"]["accidental_tag"]
    assert mc["inputs"]["p_sr_accidental"] == tag["p_sr"] > 0
    names = [s["name"] for s in mc["samples"]]
    assert names == ["tail_tag_hadron", "tail_tag_muon"]
    b = cfg.beam
    fe = bd.electron_fraction(cfg)
    per = {"tail_tag_hadron": (b.frac_pion + b.frac_kaon) / fe, "tail_tag_muon": b.frac_muon / fe}
    for s in mc["samples"]:
        assert list(s["cut_flow"]) == list(bd._ECAL_CUTS)
        assert s["cut_flow"]["box"]["events"] == s["selected"]
        if s["selected"] == 0:  # an empty box: 2.30 events at the natural weight 1
            assert s["n_upper_90"] == pytest.approx(2.303 * EOT * per[s["name"]] * tag["p_sr"] / 300, rel=1e-9)
    assert r["err_syst"] == pytest.approx(bd.TAIL_SYST_REL * r["n"])


def test_mc_hadrons_and_muons_have_no_tail_but_their_pile_up_has(cfg):
    """A downstream sample turns picked beam electrons into muons and hadrons: those take the energies of the
    same spill without the tail (electrons radiated it), while the pile-up around them keeps it."""
    c = cfg.with_overrides({"beam": {"particles_per_spill": INTENSITY}})
    mu = PARTICLE_CODES["mu-"]
    spill, pick = bd.sample_spill(c, bd.Sample("t", ((mu, 1.0),), 0), 20_000, 3)
    t = spill.truth
    assert np.all(t["ptype"][pick] == mu) and t["e_beam"][pick].min() > 90.0
    rest = np.setdiff1d(np.flatnonzero(t["ptype"] == PARTICLE_CODES["e-"]), pick)
    n_tail = np.count_nonzero(t["e_beam"][rest] < 94.0)
    expect = rest.size * beam.tail_probability(c)
    assert abs(n_tail - expect) < 5 * math.sqrt(expect)
    # an electron sample keeps its tail electrons (they are beam electrons)
    spill_e, pick_e = bd.sample_spill(c, bd.Sample("t", ((PARTICLE_CODES["e-"], 1.0),), 0), 20_000, 3)
    assert np.count_nonzero(spill_e.truth["e_beam"][pick_e] < 94.0) > 0.3 * pick_e.size * beam.tail_probability(c)
