"""Decays in flight of beam mu-, pi-, K- (sim_frontend/decays.py, their transport in sim_frontend/beamline.py)
and the ``decays_in_flight`` background source (offline/background_decays.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from detector.config import load_config
from detector.records import PARTICLE_CODES, TRUTH_DECAY
from offline import background_decays as bd
from offline import background_sources as bs
from offline import selection as sel
from sim_frontend import beamline
from sim_frontend import decays as dk
from sim_frontend.beam import generate_spill

E_, K_, PI_, MU_ = (PARTICLE_CODES[k] for k in ("e-", "K-", "pi-", "mu-"))


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


def _beam(cfg, n, ptype, seed=5):
    """A spill of ``n`` particles of type ``ptype`` on the beam axis at the beam energy (an electron-only beam
    turned into them: no halo, and no low-energy tail, which only electrons have)."""
    zero = {"frac_pion": 0.0, "frac_kaon": 0.0, "frac_muon": 0.0, "frac_halo": 0.0, "tail_x0": 0.0}
    c = cfg.with_overrides({"beam": zero})
    c = dataclasses.replace(c, spill=dataclasses.replace(c.spill, length_s=n / 1e6))
    sp = generate_spill(c, seed, n_particles=n, start_unix=0.0)
    sp.truth["ptype"][:] = ptype
    return c, sp


# ------------------------------------------------------------------------------------------ kinematics
def test_two_body_electron_energy_is_flat_between_its_lab_limits():
    p = 100.0
    m = dk.PI_MASS_GEV
    e = dk.sample_decays(dk.PI_ENU, p, 200_000)[:, 0, 0]
    e_star = (m * m + dk.E_MASS_GEV**2) / (2 * m)
    p_star = (m * m - dk.E_MASS_GEV**2) / (2 * m)
    gamma, bg = math.hypot(p, m) / m, p / m
    lo, hi = gamma * e_star - bg * p_star, gamma * e_star + bg * p_star
    assert e.min() >= lo * (1 - 1e-9) and e.max() <= hi * (1 + 1e-9)
    assert e.min() < lo + 1e-3 * hi and e.max() > hi * (1 - 1e-3)
    counts, _ = np.histogram(e, bins=20, range=(lo, hi))
    expected = e.size / 20
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))
    assert e.mean() == pytest.approx(0.5 * (lo + hi), rel=5e-3)
    # the electron's momentum is that of a massless particle of its energy, the decay angles tiny
    prod = dk.sample_decays(dk.K_ENU, p, 2000)
    pe = np.sqrt((prod[:, 0, 1:] ** 2).sum(axis=1))
    assert pe == pytest.approx(np.sqrt(prod[:, 0, 0] ** 2 - dk.E_MASS_GEV**2), rel=1e-6)
    assert np.all(prod[:, 1:, 0] == 0.0)  # no photons in a two-body e nu decay


def test_michel_spectrum_moments_in_the_muon_rest_frame():
    prod = dk.sample_decays(dk.MU_ENUNU, 0.0, 200_000)
    x = 2.0 * prod[:, 0, 0] / dk.MU_MASS_GEV
    # dN/dx = 2 x^2 (3 - 2 x): <x> = 0.7, <x^2> = 8/15; isotropic
    assert x.max() <= 1.0 + 3e-5 and x.min() >= 0.0  # x_max = 1 + (m_e / m_mu)^2
    assert x.mean() == pytest.approx(0.7, abs=4 * x.std() / math.sqrt(x.size))
    assert (x**2).mean() == pytest.approx(8.0 / 15.0, abs=4 * (x**2).std() / math.sqrt(x.size))
    cos = prod[:, 0, 3] / np.sqrt((prod[:, 0, 1:] ** 2).sum(axis=1))
    assert abs(cos.mean()) < 4 / math.sqrt(3 * x.size)


def test_ke3_products_conserve_energy_and_make_a_pi0():
    m = dk.K_MASS_GEV
    prod = dk.sample_decays(dk.KE3, 0.0, 50_000)
    g1, g2 = prod[:, 1], prod[:, 2]
    s = g1 + g2
    m_gg = np.sqrt(np.maximum(s[:, 0] ** 2 - (s[:, 1:] ** 2).sum(axis=1), 0.0))
    assert m_gg == pytest.approx(dk.PI0_MASS_GEV, abs=1e-6)
    e_nu = m - prod[:, 0, 0] - s[:, 0]
    p_nu = np.sqrt(((prod[:, 0, 1:] + s[:, 1:]) ** 2).sum(axis=1))  # the neutrino balances the momentum
    assert e_nu == pytest.approx(p_nu, abs=1e-6)
    w = (m * m - dk.PI0_MASS_GEV**2) / (2 * m)
    assert prod[:, 0, 0].max() <= w * (1 + 1e-9)
    # the V-A density vanishes at E_e -> 0 and favours hard electrons: the mean above half the endpoint
    assert prod[:, 0, 0].mean() > 0.5 * w
    assert dk.ke3_density(0.3, 0.0) == 0.0 and dk.ke3_density(0.2, 0.15) > 0.0


# ------------------------------------------------------------------------------------------ transport
def test_decay_law_and_forced_weights(cfg):
    n = 400_000
    c, sp = _beam(cfg, n, K_)
    out = beamline.transport(sp, c)
    L = float(c.beamline.ecal_z_m)
    p_line = dk.decay_probability(dk.KE3, float(c.beam.energy_gev), L)
    br = dk.BR[dk.K_ENU] + dk.BR[dk.KE3]
    natural = np.count_nonzero(out.decay)
    n_ke3 = np.count_nonzero(out.decay == dk.KE3)
    assert abs(natural - n * p_line * br) < 4 * math.sqrt(n * p_line * br)
    assert set(np.unique(out.decay)) <= {0, dk.K_ENU, dk.KE3}
    # a decayed kaon arrives as an electron, flagged, its type at z = 0 kept
    d = out.decay > 0
    assert np.all(sp.truth["ptype"][d] == E_) and np.all(sp.truth["flags"][d] & TRUTH_DECAY)
    assert np.all(out.parent == K_) and np.all(sp.truth["ptype"][~d] == K_)
    assert np.all(sp.truth["weight"] == 1.0)  # nothing forced: natural rates, unweighted
    # forced: every kaon decays inside the line, z from the truncated exponential, weight P x BR
    c, sp = _beam(cfg, 100_000, K_, seed=6)
    out = beamline.transport(sp, c, force_decay=np.full(sp.n, dk.KE3, np.uint8))
    assert np.all(out.decay == dk.KE3) and np.all((out.z_decay >= 0) & (out.z_decay < L))
    for z in (5.0, 15.0, 25.0):
        expect = dk.decay_probability(dk.KE3, 100.0, z) / p_line
        assert np.mean(out.z_decay < z) == pytest.approx(expect, abs=4 * math.sqrt(expect * (1 - expect) / sp.n))
    w = sp.truth["weight"].astype(np.float64)
    assert w.mean() == pytest.approx(p_line * dk.BR[dk.KE3], rel=2e-3)
    # the forced weights add up to the natural number of Ke3 decays (within its Poisson error)
    assert abs(w.mean() * n - n_ke3) < 4 * math.sqrt(n * w.mean())
    # a channel of another parent is not forced on a kaon
    c, sp = _beam(cfg, 1000, K_, seed=7)
    assert not beamline.transport(sp, c, force_decay=np.full(sp.n, dk.MU_ENUNU, np.uint8)).decay.any()


def test_decay_electrons_are_bent_by_their_momentum_and_radiate_in_the_dipoles(cfg):
    c, sp = _beam(cfg, 20_000, PI_, seed=8)
    out = beamline.transport(sp, c, force_decay=np.full(sp.n, dk.PI_ENU, np.uint8))
    kicks = sorted(c.beamline.magnet_z_m)
    before = out.z_decay < kicks[0] - 1.0
    after = out.z_decay > kicks[-1] + 1.0
    pos = beamline.station_positions(sp, c, np.arange(sp.n))
    assert np.array_equal(pos, beamline.station_positions(sp, c, np.arange(sp.n)), equal_nan=True)
    soft = before & (out.e_particle < 40.0) & (out.z_decay < c.beamline.layer_z_m[2] - 0.5)
    hard = before & (out.e_particle > 98.0)
    # x at MM4 (slopes in mrad, m -> mm): an electron of E bends 21 mrad x 100 / E; the axis follows 100 GeV
    assert soft.sum() > 100 and hard.sum() > 50
    # (e_particle is the energy at the ECAL face: a few radiated after the dipoles, at higher energy before)
    assert np.mean(pos[soft, 3, 0] < -100.0) > 0.9
    assert np.all(np.abs(pos[hard, 3, 0]) < 30.0)
    # SR: the decay electron radiates in the dipoles it crosses (E^2), the pion before it nothing detectable
    assert np.median(out.e_sr[hard]) > 0.08
    assert np.all(out.e_sr[after] < 1e-6)
    # straight on after the dipoles: the decay electron of a late decay stays near the parent's line
    late = after & (out.e_particle > 20.0)
    assert np.median(np.abs(out.x_mm[late])) < 20.0


# ------------------------------------------------------------------------------------------ the source
def test_allocation_and_natural_rates(cfg):
    a = bd.allocation(cfg)
    assert set(a) == set(dk.CHANNEL_NAMES) and sum(a.values()) == pytest.approx(1.0)
    assert min(a.values()) >= bd.MIN_SHARE * 0.99 and max(a, key=a.get) == dk.KE3
    fe = 1 - (cfg.beam.frac_pion + cfg.beam.frac_kaon + cfg.beam.frac_muon + cfg.beam.frac_halo)
    lam = 100.0 / dk.K_MASS_GEV * dk.K_CTAU_M
    expect = cfg.beam.frac_kaon / fe * (1 - math.exp(-cfg.beamline.ecal_z_m / lam)) * 0.0507
    assert bd.natural_per_eot(cfg, dk.KE3) == pytest.approx(expect, rel=1e-6)


def test_decays_in_flight_source_runs_with_its_keys(tmp_path):
    from offline.cli import main

    assert "decays_in_flight" in bs.SOURCES
    out = tmp_path / "dif.json"
    argv = ["background", "--sources", "--source", "decays_in_flight", "--eot", "4.3e10", "--intensity", "5.1e6"]
    assert main([*argv, "--events", "2000", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["sources"]["decays_in_flight"]
    assert set(r) >= {"n", "err", "err_stat", "err_syst", "mc"}
    assert r["n"] >= 0 and r["err"] > 0 and r["err"] == pytest.approx(math.hypot(r["err_stat"], r["err_syst"]))
    mc = r["mc"]
    assert mc["events"] == pytest.approx(2000, abs=4) and len(mc["channels"]) == 4
    assert {ch["channel"] for ch in mc["channels"]} == set(dk.CHANNEL_NAMES.values())
    flow = mc["cut_flow"]
    assert list(flow) == ["all", *sel.CUT_NAMES]
    counts = [flow[k]["events"] for k in flow]
    assert counts[0] == mc["events"] and all(a >= b for a, b in itertools.pairwise(counts)) and counts[1] > 0
    assert flow["box"]["events"] == mc["box_events"]
    for k in flow:
        assert flow[k]["z_before_dipoles"] + flow[k]["z_between"] + flow[k]["z_after"] == flow[k]["events"]
    # the generated weights are the forced probabilities: the expected decays per EOT of each channel
    for ch in mc["channels"]:
        assert ch["per_eot"] * ch["mean_w_generated"] == pytest.approx(ch["natural_per_eot"], rel=0.02)
        listed = ((ch["box_events"], ch["selected"]), (ch["near_box_events"], ch["cut_flow"][bd.NEAR_CUT]["events"]))
        for rows, count in listed:
            assert set(rows) >= {"w", "z_decay_m", "e_ecal_gev"} and all(len(v) == count for v in rows.values())
    assert flow["all"]["expected"] == pytest.approx(
        4.3e10 * sum(c["natural_per_eot"] for c in mc["channels"]), rel=0.02
    )
