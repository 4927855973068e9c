"""The spectrometer (issue 16): beam-line configuration, the transport of sim_frontend/beamline.py
(bremsstrahlung, dipoles, synchrotron radiation), the Micromegas strips of sim_frontend/mmhits.py, the track
reconstruction of detector/tracking.py, the tracker cuts of the selection and the background-source registry."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from detector.config import ConfigError, load_config
from detector.records import PARTICLE_CODES, TRUTH_BEAMLINE
from detector.tracking import HIT_MIN_CHARGE, Spectrometer, StripData, reconstruct_tracks
from offline import background_sources as bs
from offline import selection as sel
from sim_frontend import beamline, mmhits
from sim_frontend.beam import generate_spill
from sim_frontend.response import apply_response

E_ = PARTICLE_CODES["e-"]
NOISE_CHARGE = 60.0  # ADC counts: a noise strip (threshold + an exponential of a few tens of counts)
PARTICLE_CHARGE = 400.0  # ADC counts: the 3-strip clusters of the hand-made events


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


def _spill(cfg, n, seed=3, **beam):
    c = cfg.with_overrides({"beam": beam}) if beam else cfg
    rate = c.beam.particles_per_spill / c.spill.length_s
    c = dataclasses.replace(c, spill=dataclasses.replace(c.spill, length_s=n / rate))
    return c, generate_spill(c, seed, n_particles=n, start_unix=0.0)


# ------------------------------------------------------------------------------------------ config
def test_beamline_config_is_checked(cfg):
    with pytest.raises(ConfigError, match="same length"):
        cfg.with_overrides({"beamline": {"layer_x0": [0.001]}})
    with pytest.raises(ConfigError, match="not beamline layers"):
        cfg.with_overrides({"tracker": {"stations": ["MM1", "MM2", "MM3", "MMX"]}})
    with pytest.raises(ConfigError, match="none between them"):
        cfg.with_overrides({"beamline": {"magnet_z_m": [10.5, 18.0]}})
    spec = Spectrometer.from_config(cfg)
    # 7 T m bend a 100 GeV electron by 21 mrad (docs/physics.md 1.2)
    assert spec.bend_mrad == pytest.approx(0.299792458 * 7.0 / 100.0 * 1e3, rel=1e-9)
    with pytest.raises(ConfigError, match="no layer inside"):  # MM2 (8.5 m) inside a pipe
        cfg.with_overrides({"beamline": {"pipe_from_m": [2.0, 9.0, 18.0], "pipe_to_m": [8.6, 17.0, 27.0]}})
    with pytest.raises(ConfigError, match="must not overlap"):
        cfg.with_overrides({"beamline": {"pipe_from_m": [9.0, 10.0], "pipe_to_m": [11.0, 12.0]}})
    bl = cfg.beamline
    b = beamline.line_from_config(cfg).budget()
    piped = sum(hi - lo for lo, hi in zip(bl.pipe_from_m, bl.pipe_to_m, strict=True))
    assert piped > 0 and bl.pipe_gas_x0_m == 0.0  # the default line: vacuum pipes
    air = (bl.ecal_z_m - piped) / bl.gap_x0_m
    windows = 2 * len(bl.pipe_from_m) * bl.pipe_window_x0
    assert b["total_x0"] == pytest.approx(sum(bl.layer_x0) + windows + air, rel=1e-9)
    # between the dipoles the beam is in vacuum: no material at all
    assert b["between_magnets_x0"] == 0.0
    # helium in the pipes instead of vacuum: its radiation length over the piped length
    he = beamline.line_from_config(cfg.with_overrides({"beamline": {"pipe_gas_x0_m": 5671.0}})).budget()
    assert he["total_x0"] - b["total_x0"] == pytest.approx(piped / 5671.0, rel=1e-9)
    # no pipes: air all the way (the budget of the line before the pipes)
    bare = cfg.with_overrides({"beamline": {"pipe_from_m": [], "pipe_to_m": []}})
    assert beamline.line_from_config(bare).total_x0 == pytest.approx(sum(bl.layer_x0) + bl.ecal_z_m / bl.gap_x0_m)


# ------------------------------------------------------------------------------------------ spectra
def test_synchrotron_spectrum_and_srd_energy(cfg):
    x, cn, above = beamline.sr_spectrum()
    # mean photon energy of the synchrotron spectrum: 8 / (15 sqrt 3) E_c
    dlx = np.diff(np.log(x))
    pdf = np.diff(cn)
    xm = np.sqrt(x[1:] * x[:-1])
    assert np.sum(pdf * xm) == pytest.approx(beamline.SR_MEAN_X, rel=0.01)
    assert np.all(dlx > 0) and above[0] == pytest.approx(1.0, abs=1e-6) and above[-1] == 0.0
    ec = beamline.critical_energy_gev(100.0, 1.75)
    assert ec == pytest.approx(0.01164, rel=2e-3)  # docs/physics.md 1.2: 11.6 MeV
    kick = 0.299792458 * 1.75 * 2.0
    n = beamline.sr_photons_per_bend(100.0, kick)
    assert n == pytest.approx(21.6, rel=0.01)
    # detected SR of nominal electrons: 2 dipoles x N x <eps> x acceptance x (energy above the threshold)
    c, sp = _spill(cfg, 40_000, frac_pion=0.0, frac_kaon=0.0, frac_muon=0.3, frac_halo=0.0)
    tr = beamline.transport(sp, c)
    t = sp.truth
    plain = (t["ptype"] == E_) & (tr.e_front > 0.999 * t["e_beam"])
    frac = float(np.interp(math.log(50e-6 / ec), np.log(x), above))
    expect = 2 * n * beamline.SR_MEAN_X * ec * c.beamline.srd_acceptance * frac
    assert np.mean(tr.e_sr[plain]) == pytest.approx(expect, rel=0.03)
    # compound-Poisson spread: <x^2> = 11/27 (Sands) of 2 x 21.6 x acceptance photons
    rel = math.sqrt(11.0 / 27.0 / beamline.SR_MEAN_X**2 / (2 * n * c.beamline.srd_acceptance))
    assert np.std(tr.e_sr[plain]) / np.mean(tr.e_sr[plain]) == pytest.approx(rel, rel=0.06)
    # muons: (m_e/m_mu)^4 less, nothing above the photon threshold
    assert np.all(tr.e_sr[t["ptype"] == PARTICLE_CODES["mu-"]] == 0.0)
    # a softer electron radiates less: E^2
    c50, sp50 = _spill(cfg, 20_000, energy_gev=50.0)
    tr50 = beamline.transport(sp50, c50)
    p50 = (sp50.truth["ptype"] == E_) & (tr50.e_front > 0.999 * sp50.truth["e_beam"])
    ratio = np.mean(tr50.e_sr[p50]) / np.mean(tr.e_sr[plain])
    assert 0.2 < ratio < 0.3


def test_bremsstrahlung_rate_geometry_and_bias(cfg):
    # one thick layer before the magnets, no air: the hard-photon rate per electron is t x R(y > 0.5)
    t0 = 0.02
    c = cfg.with_overrides(
        {"beamline": {"layer_names": ["W0", "MM1", "MM2", "MM3", "MM4"], "layer_z_m": [0.0, 1.5, 8.5, 17.5, 27.5],
                      "layer_x0": [t0, 0.0, 0.0, 0.0, 0.0], "gap_x0_m": 1e6, "pipe_window_x0": 0.0}}
    )  # fmt: skip
    c, sp = _spill(c, 100_000, frac_pion=0.0, frac_kaon=0.0, frac_muon=0.0, frac_halo=0.0)
    e0 = sp.truth["e_beam"].copy()
    tr = beamline.transport(sp, c)
    kept = tr.e_particle / e0  # the electron's energy after the layer
    rate = t0 * beamline.brem_rate_per_x0(0.5, 1.0)
    hard = np.mean(kept < 0.5)
    assert hard == pytest.approx(rate, abs=4 * math.sqrt(rate / e0.size))
    # the flag marks electrons that radiated more than 5%
    flagged = (sp.truth["flags"] & TRUTH_BEAMLINE) != 0
    r5 = 1 - math.exp(-t0 * beamline.brem_rate_per_x0(0.05, 1.0))
    assert flagged.mean() == pytest.approx(r5, abs=4 * math.sqrt(r5 / e0.size) + 2e-3)
    # energy is conserved, and the photon of a brem before the dipoles lands K/p0 x (z_ecal - z_i) ~ 40 cm
    # beside the axis, off the ECAL and the HCAL: after a hard brem nothing enters the ECAL (but for a hard
    # brem in the little air left after the dipoles, whose photon goes on to the ECAL)
    assert np.all(tr.e_front + tr.e_side <= e0 * (1 + 1e-6))
    assert np.mean(tr.e_front[kept < 0.5] > 0.0) < 0.01
    # biased: the hard rate x 5 with weights that undo it
    c2, sp2 = _spill(c, 100_000, seed=4, frac_pion=0.0, frac_kaon=0.0, frac_muon=0.0, frac_halo=0.0)
    e2 = sp2.truth["e_beam"].copy()
    tr2 = beamline.transport(sp2, c2, beamline.Bias(5.0, 0.3))
    hard2 = tr2.e_particle / e2 < 0.5
    assert np.mean(hard2) > 3.5 * rate
    w = tr2.weight
    assert np.sum(w * hard2) / w.size == pytest.approx(rate, rel=0.12)
    assert np.mean(w) == pytest.approx(1.0, abs=0.03)


def test_nominal_electrons_hit_the_ecal_centre_and_subsets_agree(cfg):
    c, sp = _spill(cfg, 20_000)
    x0 = sp.truth["x_mm"].copy()
    apply_response(sp, c)  # transports first
    t = sp.truth
    # beam electrons of the core (the low-energy tail, 1.1, lost more than 5% upstream) that did not radiate
    core = np.abs(t["e_beam"] / c.beam.energy_gev - 1) < 0.05
    plain = (t["ptype"] == E_) & (sp.beamline.e_front > 0.999 * t["e_beam"]) & core
    dx = t["x_mm"][plain] - x0[plain]
    # dispersion: a momentum offset d moves the impact by d x sum K_i / p0 (z_ecal - z_i) (~0.4 m)
    spec = Spectrometer.from_config(c)
    disp = float(np.sum(spec.kick_gev / spec.p0_gev * (c.beamline.ecal_z_m - spec.magnet_z_m))) * 1e3  # mm
    d = t["e_beam"][plain] / c.beam.energy_gev - 1
    assert np.polyfit(d, dx, 1)[0] == pytest.approx(disp, rel=0.02)
    # the rest: divergence 0.05 mrad x 31 m and multiple scattering, ~2 mm; centred
    rest = dx - disp * d
    assert abs(np.median(rest)) < 0.1 and 1.2 < np.std(rest) < 2.5
    idx = np.arange(0, 20_000, 7)
    pos = beamline.station_positions(sp, c, idx)
    pos2 = beamline.station_positions(sp, c, idx[::-1])[::-1]
    np.testing.assert_array_equal(pos, pos2)
    halo = t["ptype"][idx] == PARTICLE_CODES["halo"]
    assert np.all(np.isnan(pos[halo])) and np.all(np.isfinite(pos[~halo]))


# ------------------------------------------------------------------------------------------ tracking
def test_tracking_momentum_angle_and_multiplicity(cfg):
    c, sp = _spill(cfg, 30_000, energy_spread=0.0)
    e0 = sp.truth["e_beam"].copy()
    tr = beamline.transport(sp, c)
    spec = Spectrometer.from_config(c)
    ev = np.flatnonzero((sp.truth["ptype"] == E_) & (tr.e_front > 0.999 * e0))[:5000]
    strips = mmhits.event_strips(sp, c, ev)
    rec = reconstruct_tracks(strips, spec)
    ok = np.isfinite(rec["p_gev"]) & (rec["n_tracks"] == 1) & (rec["n_incoming"] == 1)
    assert 0.7 < ok.mean() < 0.9  # pile-up within +/- 100 ns at 5e6 e-/spill: P = 0.19
    r = rec["p_gev"][ok] / e0[ev][ok] - 1
    assert abs(np.median(r)) < 1e-3
    core = 1.4826 * np.median(np.abs(r - np.median(r)))
    assert 5e-4 < core < 5e-3
    assert np.median(rec["angle_mrad"][ok]) < 0.2
    # a second particle in the window is counted: isolated events have one track, crowded ones more
    # a second particle in time (within the hit time cut, by 3 time resolutions) is counted, one out of time
    # (beyond it by as much, still in the readout window) is not
    t_ns = sp.truth["time_ns"]
    ptr, lst = mmhits.neighbours(t_ns, ev, c.tracker.time_window_ns)
    alone = np.diff(ptr) == 1
    assert np.mean(rec["n_incoming"][alone] <= 1) > 0.99
    dt = np.abs(t_ns[lst] - np.repeat(t_ns[ev], np.diff(ptr)))
    dt[ptr[:-1]] = np.inf  # the event itself
    nearest = np.minimum.reduceat(dt, ptr[:-1])
    margin = 3.0 * c.tracker.time_resolution_ns
    crowded = nearest < c.tracker.hit_time_cut_ns - margin
    assert crowded.sum() > 50 and np.mean(rec["n_incoming"][crowded] >= 2) > 0.5
    late = ~alone & (nearest > c.tracker.hit_time_cut_ns + margin)
    assert late.sum() > 100 and np.mean(rec["n_incoming"][late] <= 1) > 0.99
    # a 90 GeV beam is measured at 90 GeV: the momentum comes from the deflection
    c90 = c.with_overrides({"beam": {"energy_gev": 90.0, "energy_spread": 0.0}})
    sp90 = generate_spill(c90, 5, n_particles=5000, start_unix=0.0)
    # the chambers stay aligned on the 100 GeV axis: transport with p0 = 100 GeV
    tr90 = beamline.transport(sp90, c)
    ev90 = np.flatnonzero((sp90.truth["ptype"] == E_) & (tr90.e_front > 0.999 * 90.0))[:500]
    rec90 = reconstruct_tracks(mmhits.event_strips(sp90, c, ev90), spec)
    assert np.nanmedian(rec90["p_gev"]) == pytest.approx(90.0, rel=3e-3)


def test_clustering_of_hand_made_strips(cfg):
    spec = Spectrometer.from_config(cfg)
    # one event: every plane a 3-strip cluster centred on strip 160 (x = 160.5 * 0.25 - 40 = 0.125 mm) and a
    # noise strip of 30 counts far away (at places that do not line up into a track)
    plane, strip, charge = [], [], []
    for p in range(spec.n_planes):
        plane += [p, p, p, p]
        strip += [159, 160, 161, 20 + 37 * p * p]
        charge += [100.0, 200.0, 100.0, 30.0]
    sd = StripData(np.array([0, len(plane)]), np.array(plane, np.uint8), np.array(strip, np.uint16),
                   np.array(charge, np.float32), np.zeros(len(plane), np.float32))  # fmt: skip
    rec = reconstruct_tracks(sd, spec)[0]
    assert rec["p_gev"] == pytest.approx(spec.p0_gev, rel=1e-6)  # a straight line in the nominal frame
    assert rec["x_mm"] == pytest.approx(0.125, abs=1e-6) and rec["angle_mrad"] == pytest.approx(0.0, abs=1e-6)
    assert rec["n_tracks"] == 1 and rec["n_incoming"] == 1 and rec["n_hits"] == spec.n_planes


def test_noise_strips_that_line_up_do_not_replace_the_particles_hits(cfg):
    """With 4 X hits and 3 parameters, a combination of noise strips can fit better than the particle's own
    hits (chi2 ~1.6 against ~5.5 here) and would give its momentum (95 GeV here): noise strips are not hit
    candidates (charge < HIT_MIN_CHARGE), so the particle's 100 GeV track is found; the same strips with a
    particle's charge are candidates and win on chi2, which shows the trap is set."""
    spec = Spectrometer.from_config(cfg)
    assert NOISE_CHARGE < HIT_MIN_CHARGE <= PARTICLE_CHARGE
    true_x = [160, 161, 160, 160]  # cluster centre strip per station: x = 0.125, 0.375, 0.125, 0.125 mm
    noise_x = [200, 200, 175, 131]  # one strip per X plane on the line of a 95 GeV track at x = 10 mm

    def event(noise_charge: float) -> StripData:
        plane, strip, charge = [], [], []
        for p in range(spec.n_planes):
            c = true_x[p // 2] if p % 2 == 0 else 160
            plane += [p, p, p]
            strip += [c - 1, c, c + 1]
            charge += [100.0, 200.0, 100.0]
            if p % 2 == 0:
                plane.append(p)
                strip.append(noise_x[p // 2])
                charge.append(noise_charge)
        return StripData(np.array([0, len(plane)]), np.array(plane, np.uint8), np.array(strip, np.uint16),
                         np.array(charge, np.float32), np.zeros(len(plane), np.float32))  # fmt: skip

    rec = reconstruct_tracks(event(NOISE_CHARGE), spec)[0]
    assert rec["p_gev"] == pytest.approx(99.86, abs=0.05) and rec["chi2"] == pytest.approx(5.51, abs=0.05)
    assert rec["n_tracks"] == 1 and rec["n_incoming"] == 1
    trap = reconstruct_tracks(event(PARTICLE_CHARGE), spec)[0]
    assert trap["p_gev"] == pytest.approx(95.03, abs=0.05) and trap["chi2"] < rec["chi2"]


def test_hits_that_do_not_line_up_make_no_track(cfg):
    """A best track must be a track: X hits of different particles (here MM3's 5 mm off the line of the
    others, chi2 ~ 1e3 per view at 70 um) give no momentum, however many hits they have."""
    spec = Spectrometer.from_config(cfg)
    plane, strip, charge = [], [], []
    for p in range(spec.n_planes):
        centre = 160 + (20 if p == 4 else 0)  # plane 4 = X of the third station: 20 strips = 5 mm off
        plane += [p, p, p]
        strip += [centre - 1, centre, centre + 1]
        charge += [100.0, 200.0, 100.0]
    sd = StripData(np.array([0, len(plane)]), np.array(plane, np.uint8), np.array(strip, np.uint16),
                   np.array(charge, np.float32), np.zeros(len(plane), np.float32))  # fmt: skip
    rec = reconstruct_tracks(sd, spec)[0]
    assert np.isnan(rec["p_gev"]) and np.isnan(rec["angle_mrad"]) and rec["n_tracks"] == 0
    assert np.isfinite(rec["y_mm"])  # the Y view lines up and is still measured


def _track_strips(spec, p_gev, x0_mm, y0_mm, time_ns):
    """(plane, strip, charge, time) of a straight-in track of momentum ``p_gev`` at (x0, y0) at the first
    station (nominal direction): a 3-strip particle cluster (100, 200, 100 counts) per plane at ``time_ns``."""
    kappa = 1.0 / p_gev - 1.0 / spec.p0_gev
    glev = -spec.bend_lever_m() * 1e3
    plane, strip, charge = [], [], []
    for p in range(spec.n_planes):
        u = x0_mm + kappa * glev[p // 2] if p % 2 == 0 else y0_mm
        c = int(round((u + spec.half_size_mm) / spec.pitch_mm - 0.5))
        plane += [p, p, p]
        strip += [c - 1, c, c + 1]
        charge += [100.0, 200.0, 100.0]
    return plane, strip, charge, [time_ns] * len(plane)


def test_a_pile_up_track_out_of_time_is_not_a_track(cfg):
    """A 100 GeV electron in time and a second beam particle (95 GeV, 10 mm away) 60 ns later, both leaving a
    cluster in every plane: the later one's clusters are out of time (|t| > hit_time_cut_ns), so one track
    with the in-time momentum and one incoming particle; without the time cut (main's reconstruction, which
    took every hit of the readout window) the same strips make two tracks, and the event fails the
    single-track cut."""
    spec = Spectrometer.from_config(cfg)
    assert spec.hit_time_cut_ns < 60.0
    a = _track_strips(spec, 100.0, 0.0, 0.0, 0.0)
    b = _track_strips(spec, 95.0, 10.0, -10.0, 60.0)
    plane, strip, charge, time = (a[k] + b[k] for k in range(4))
    sd = StripData(np.array([0, len(plane)]), np.array(plane, np.uint8), np.array(strip, np.uint16),
                   np.array(charge, np.float32), np.array(time, np.float32))  # fmt: skip
    rec, summ = reconstruct_tracks(sd, spec, planes=True)
    assert rec[0]["n_tracks"] == 1 and rec[0]["n_incoming"] == 1 and rec[0]["n_hits"] == spec.n_planes
    assert rec[0]["p_gev"] == pytest.approx(100.0, rel=2e-3)
    assert rec[0]["x_mm"] == pytest.approx(0.0, abs=0.2) and rec[0]["y_mm"] == pytest.approx(0.0, abs=0.2)
    assert (summ.n_clusters[0] == 2).all()  # the plane summaries still see both particles
    # the same particle in time is a second track: the trap is set
    late = reconstruct_tracks(dataclasses.replace(sd, time_ns=np.zeros(len(plane), np.float32)), spec)[0]
    assert late["n_tracks"] == 2 and late["n_incoming"] == 2
    # a strip without a time (samples not of one pulse) is never in time; the cut is inclusive
    for t, n_tr in ((np.nan, 0), (spec.hit_time_cut_ns, 1), (-spec.hit_time_cut_ns, 1)):
        one = _track_strips(spec, 100.0, 0.0, 0.0, t)
        sd1 = StripData(np.array([0, len(one[0])]), *(np.array(one[k], dt) for k, dt in
                        enumerate((np.uint8, np.uint16, np.float32, np.float32))))  # fmt: skip
        r1 = reconstruct_tracks(sd1, spec)[0]
        assert r1["n_tracks"] == n_tr and r1["n_incoming"] == n_tr, t


def test_pile_up_strips_beside_the_track_do_not_move_its_clusters(cfg):
    """A later particle crossing every plane 3 strips (0.75 mm) beside the event's own: by strip number
    alone the two form one cluster whose time, charge-weighted, is out of time; clustered apart, the event's
    particle keeps its own clusters and its track."""
    spec = Spectrometer.from_config(cfg)
    a = _track_strips(spec, 100.0, 0.0, 0.0, 2.0)
    b = _track_strips(spec, 100.0, 0.75, 0.75, -70.0)
    plane, strip, charge, time = (a[k] + b[k] for k in range(4))
    sd = StripData(np.array([0, len(plane)]), np.array(plane, np.uint8), np.array(strip, np.uint16),
                   np.array(charge, np.float32), np.array(time, np.float32))  # fmt: skip
    rec = reconstruct_tracks(sd, spec)[0]
    assert rec["n_tracks"] == 1 and rec["p_gev"] == pytest.approx(100.0, rel=2e-3)
    assert rec["x_mm"] == pytest.approx(0.0, abs=0.2) and np.isfinite(rec["angle_mrad"])


def test_strip_times_of_the_simulation(cfg):
    """mmhits: the event's own particle's strips carry its time (0) smeared by time_resolution_ns, one draw
    per plane shared by the cluster's strips; a pile-up particle's strips its arrival time relative to the
    event's; noise strips a time uniform over the readout window."""
    c, sp = _spill(cfg, 20_000)
    beamline.transport(sp, c)
    ev = np.flatnonzero(sp.truth["ptype"] == E_)[:3000]
    t_ns = sp.truth["time_ns"]
    ptr, lst = mmhits.neighbours(t_ns, ev, c.tracker.time_window_ns)
    alone = ev[np.diff(ptr) == 1]
    quiet = c.with_overrides({"tracker": {"noise_strips": 0.0}})
    s = mmhits.event_strips(sp, quiet, alone)
    sigma = c.tracker.time_resolution_ns
    assert s.time_ns.dtype == np.float32 and s.time_ns.shape == s.charge.shape
    assert np.std(s.time_ns) == pytest.approx(sigma, rel=0.05) and abs(np.mean(s.time_ns)) < 0.1 * sigma
    # one time per plane hit: the strips of one plane of one event share it
    for e in range(20):
        p, _, _, t = s.event(e)
        for pl in np.unique(p):
            assert np.ptp(t[p == pl]) == 0.0
    # a pair: the second particle's strips at its arrival time relative to the first
    two = np.flatnonzero(np.diff(ptr) == 2)[:200]
    s2 = mmhits.event_strips(sp, quiet, ev[two])
    dt = t_ns[lst[ptr[two] + 1]] - t_ns[ev[two]]
    for e in range(len(two)):
        t = s2.event(e)[3]
        near = np.abs(t - dt[e]) < 5 * sigma
        assert np.all(near | (np.abs(t) < 5 * sigma))
    # noise: uniform over +/- time_window_ns
    noisy = c.with_overrides({"tracker": {"noise_strips": 5.0, "efficiency": 0.0}})
    tn = mmhits.event_strips(sp, noisy, alone).time_ns
    w = c.tracker.time_window_ns
    assert tn.size > 1000 and np.all(np.abs(tn) <= w) and np.mean(tn) == pytest.approx(0.0, abs=0.1 * w)
    assert np.std(tn) == pytest.approx(2 * w / math.sqrt(12), rel=0.1)


# ------------------------------------------------------------------------------------------ selection
def test_tracker_cuts_apply_only_with_track_columns(cfg):
    cuts = sel.Cuts.from_config(cfg)
    n = 5
    t = {
        "trigger_mask": np.ones(n, np.uint8),
        "ecal_chi2": np.zeros(n), "ecal_ndf": np.full(n, 33), "ecal_x_mm": np.zeros(n), "ecal_y_mm": np.zeros(n),
        "e_ps_sum": np.ones(n), "v2_mip": np.zeros(n), "e_hcal": np.zeros(n), "n_cells_pileup": np.zeros(n, int),
        "e_ecal": np.full(n, 30.0),
        **{f"srd{i}": np.full(n, 0.05) for i in range(3)}, **{f"srd{i}_dt": np.zeros(n) for i in range(3)},
    }  # fmt: skip
    s = sel.select(t, cuts)
    assert not s.tracker_applied and s.cut_flow()["box"] == n
    t.update(
        {
            "trk_p_gev": np.array([100.0, 80.0, 100.0, 100.0, np.nan]),
            "trk_angle_mrad": np.array([0.1, 0.1, 6.0, 0.1, np.nan]),
            "trk_n_tracks": np.array([1, 1, 1, 2, 0]),
            "trk_n_incoming": np.array([1, 1, 1, 2, 0]),
            "trk_chi2": np.zeros(n), "trk_ndf": np.full(n, 3), "trk_n_hits": np.full(n, 8),
        }
    )  # fmt: skip
    s = sel.select(t, cuts)
    flow = s.cut_flow()
    assert s.tracker_applied
    assert (flow["srd"], flow["momentum"], flow["angle"], flow["tracks"], flow["box"]) == (5, 3, 2, 1, 1)
    assert list(flow) == ["all", *sel.CUT_NAMES]
    # SRD timing is its own line of the cut flow: an SRD pulse out of time fails it, not the energy tag
    t["srd1_dt"] = np.array([0.0, 0.0, 0.0, 50.0, np.nan])
    s = sel.select(t, cuts)
    assert s.masks["srd"].all() and s.masks["srd_time"].tolist() == [True, True, True, False, False]
    flow = s.cut_flow()
    assert (flow["srd"], flow["srd_time"], flow["momentum"], flow["tracks"]) == (5, 3, 2, 1)
    # the tagged electrons: beam triggers with both SRD cuts, and of those the ones with a good track
    from detector.records import TRIGGER_BITS

    t["trigger_mask"] = np.array([TRIGGER_BITS["beam"]] * 4 + [TRIGGER_BITS["physics"]], np.uint8)
    s = sel.select(t, cuts)
    assert sel.tagged_electrons(t, s) == {"beam_electrons": 3, "good_track": 1}  # events 0-2; 1 and 2 fail
    h = sel.new_histograms()
    sel.fill_histograms(h, t, s)
    assert h["momentum_beam"].values().sum() == 4 and h["momentum_physics"].values().sum() == 0  # NaN: no track
    assert h["momentum_beam"][sel.hist.loc(100.0)].value == 3 and h["momentum_beam"][sel.hist.loc(80.0)].value == 1


def test_background_source_registry(cfg):
    calls = []

    def fake(c, calib, eot, intensity, n_mc, seed, progress):
        calls.append((eot, intensity, n_mc))
        progress(n_mc, n_mc)
        return {"n": 0.03, "err": 0.04, "mc": {"events": n_mc}}

    bs.register("test_fake", fake)
    try:
        seen = []
        r = bs.predict(cfg, 1e10, 2e6, 10, ["test_fake"], calib=object(), progress=lambda *a: seen.append(a))
        assert calls == [(1e10, 2e6, 10)] and seen == [("test_fake", 10, 10)]
        assert r["total"]["n"] == pytest.approx(0.03) and r["total"]["err"] == pytest.approx(0.04)
        assert set(r["sources"]) == {"test_fake"}
        with pytest.raises(ValueError, match="unknown background sources"):
            bs.predict(cfg, 1e10, 2e6, 10, ["nope"], calib=object())
    finally:
        del bs.SOURCES["test_fake"]
    assert "upstream" in bs.SOURCES


def test_background_cli_upstream_source(tmp_path):
    from offline.cli import main

    out = tmp_path / "bg.json"
    argv = [
        "background",
        "--sources",
        "--serial",
        "--eot",
        "4.3e10",
        "--intensity",
        "5.1e6",
        "--events",
        "3000",
        "--json",
        str(out),
    ]
    assert main(argv) == 0

    r = json.loads(out.read_text())
    assert set(r) >= {"total", "sources"} and set(r["sources"]) == set(bs.SOURCES)
    assert set(bs.SOURCES) >= {"upstream", "dimuon_loss", "target_interactions", "punchthrough"}
    up = r["sources"]["upstream"]
    srcs = r["sources"].values()
    assert r["total"]["n"] == pytest.approx(sum(s["n"] for s in srcs))
    assert r["total"]["err"] == pytest.approx(math.sqrt(sum(s["err"] ** 2 for s in srcs)))
    assert up["n"] >= 0 and up["err"] > 0
    mc = up["mc"]
    assert mc["events"] == 3000 and mc["bias"] == bs.FORCE_FACTOR
    assert mc["material"]["total_x0"] == pytest.approx(beamline.line_from_config(load_config(None)).total_x0)
    # the upstream source alone, with a split set (~0.015% of the electrons, each SPLIT_K times). Its replicas
    # no longer trigger at this size: 13 of 820 replicas of 41 split events did at 100k before the Micromegas
    # hit times, 15 split events remain with them (an electron that radiated y > 0.4 upstream cannot give the
    # 95-105 GeV track itself: the ones lost had it from a pile-up particle now out of time, or a wrong fit)
    assert main([*argv[:7], "--events", "100000", "--source", "upstream", "--json", str(out)]) == 0
    mc = json.loads(out.read_text())["sources"]["upstream"]["mc"]
    flow = mc["cut_flow"]
    assert list(flow) == ["all", *sel.CUT_NAMES]
    counts = [flow["all"]] + [flow[k]["events"] for k in sel.CUT_NAMES]
    assert all(a >= b for a, b in itertools.pairwise(counts))
    assert mc["split_events"] > 0 and mc["digitised"] == mc["split_events"] * mc["split_k"]
    # without --sources the side-band fit needs its inputs
    assert main(["background", "--eot", "1e10"]) == 2


def test_neighbours_lists_the_event_first_then_everyone_in_its_window():
    # particles at these times (ns); events in any order, duplicates allowed
    times = np.array([0.0, 50.0, 120.0, 130.0, 400.0, 401.0, 402.0, 900.0])
    ev = np.array([3, 0, 5, 7, 5, 2])
    ptr, lst = mmhits.neighbours(times, ev, 100.0)
    segs = [lst[a:b].tolist() for a, b in itertools.pairwise(ptr)]
    assert segs == [[3, 1, 2], [0, 1], [5, 4, 6], [7], [5, 4, 6], [2, 1, 3]]
    # the same as the definition, on a crowded random spill
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0.0, 1e6, 20_000))
    ev = rng.integers(0, t.size, 3000)
    ptr, lst = mmhits.neighbours(t, ev, 100.0)
    for n in range(0, ev.size, 7):
        inside = np.flatnonzero(np.abs(t - t[ev[n]]) <= 100.0)
        assert lst[ptr[n]] == ev[n] and lst[ptr[n] + 1 : ptr[n + 1]].tolist() == inside[inside != ev[n]].tolist()
