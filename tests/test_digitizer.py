"""Digitiser of the emulated MSADC crate (sim_frontend.digitizer): energy scale through the real
reconstruction, pile-up, PMT gain law, primitives == events."""

import numpy as np
import pytest

from detector import channels as ch
from detector import reco
from detector.config import load_calibration, load_config
from detector.records import PARTICLE_CODES, TRUTH_DTYPE
from sim_frontend import beam, response
from sim_frontend.digitizer import Digitizer

TRIG = ch.trigger_channel_ids()
E_, HALO = PARTICLE_CODES["e-"], PARTICLE_CODES["halo"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None)


@pytest.fixture(scope="module")
def cal(cfg):
    return load_calibration(cfg)


@pytest.fixture(scope="module")
def sim(cfg):
    # an MC sample with the configured dimuon bias (weights 1/bias), so that the dimuon muons show in V2
    sp = beam.generate_spill(cfg, 21, n_particles=20_000, bias=beam.Bias.from_config(cfg))
    return sp, response.apply_response(sp, cfg)


def flat_gains(cfg):
    return cfg.with_overrides({"emulator": {"gain_spread": 0.0, "gain_spread_other": 0.0, "ecal_gain_spread": 0.0}})


def isolated(times, window=700.0):
    gap = np.diff(times)
    ok = np.ones(times.size, bool)
    ok[1:] &= gap > window
    ok[:-1] &= gap > window
    return ok


def test_shapes_times_and_hidden_constants(cfg, cal, sim):
    sp, dep = sim
    dz = Digitizer(cfg, cal)
    wf, t = dz.primitives(sp, dep, dz.nominal_vmon())
    assert wf.dtype == np.int16 and wf.shape == (sp.n, 6, 32) and t.dtype == np.float64
    assert np.array_equal(t, sp.truth["time_ns"])
    assert wf.min() >= 0 and wf.max() <= ch.ADC_MAX
    hc, ec = ch.ids_of_kind("hcal"), ch.ids_of_kind("ecal")
    rest = np.setdiff1d(np.arange(ch.N_CHANNELS), np.concatenate([hc, ec]))
    assert np.all(np.abs(dz.hidden_gain[hc] - 1) <= 0.3) and dz.hidden_gain[hc].std() > 0.1
    assert np.all(np.abs(dz.hidden_gain[ec] - 1) <= 0.2) and dz.hidden_gain[ec].std() > 0.07
    assert np.all(np.abs(dz.hidden_gain[rest] - 1) <= 0.02)
    assert abs(dz.hidden_gamma.mean() - 7.5) < 0.3 and 0.3 < dz.hidden_gamma.std() < 0.7
    again = Digitizer(cfg, cal)  # same hidden seed -> same hidden constants
    assert np.array_equal(again.hidden_gain, dz.hidden_gain) and np.array_equal(again.hidden_gamma, dz.hidden_gamma)
    assert not np.array_equal(Digitizer(cfg, cal, hidden_seed=1).hidden_gain, dz.hidden_gain)
    wf2, _ = again.primitives(sp, dep, dz.nominal_vmon())
    assert np.array_equal(wf2, wf)  # deterministic


def test_reconstruction_recovers_the_deposits(cfg, cal, sim):
    """detector.reco on the digitised primitives gives back the simulated energies (1-2%)."""
    sp, dep = sim
    dz = Digitizer(flat_gains(cfg), cal)
    wf, t = dz.primitives(sp, dep, dz.nominal_vmon())
    iso = np.flatnonzero(isolated(t) & (sp.truth["ptype"] == E_) & whole(sp))
    assert iso.size > 1000
    r = reco.reconstruct(wf[iso], cal.gev_per_count[TRIG])
    true = dep.trigger[iso]
    for col, name in ((5, "ECAL_SUM"), (4, "PS_SUM"), (0, "S1"), (2, "S3")):
        ok = true[:, col] > 0
        ratio = r.energy_gev[ok, col] / true[ok, col]
        assert abs(np.median(ratio) - 1) < 0.01, (name, np.median(ratio))
        assert abs(np.mean(r.energy_gev[ok, col]) / np.mean(true[ok, col]) - 1) < 0.015, name
    assert np.all(r.flags[:, 5] & reco.FLAG_PILEUP == 0)
    assert np.all(np.abs(r.time_ns[:, 5] - cal.t0_ns[TRIG[5]]) < 1.0)  # the pulse sits at t0 of the window
    e100 = r.energy_gev[:, 5]
    assert abs(np.median(e100) - 100) < 2  # 100 GeV e- -> 2500 counts x 0.04
    assert np.all(r.flags[:, 3] == reco.FLAG_NO_SIGNAL)  # V1 silent for beam electrons
    # with the hidden gains the amplitudes move by exactly the hidden gain
    dzh = Digitizer(cfg, cal)
    rh = reco.reconstruct(dzh.primitives(sp, dep, dzh.nominal_vmon())[0][iso], cal.gev_per_count[TRIG])
    g = np.median(rh.amplitude[:, 5] / r.amplitude[:, 5])
    assert abs(g / dzh.hidden_gain[TRIG[5]] - 1) < 0.003


def whole(sp):
    """Particles that lost no energy in the beam line (sim_frontend/beamline.py): the whole beam energy
    reaches the calorimeters."""
    return sp.beamline.e_front >= 0.999 * sp.truth["e_beam"]


def hand_spill(times_ns, e_beam=100.0, seed=5):
    t = np.zeros(len(times_ns), dtype=TRUTH_DTYPE)
    t["index"] = np.arange(len(times_ns))
    t["ptype"] = E_
    t["time_ns"] = times_ns
    t["e_beam"] = e_beam
    t["weight"] = 1.0
    return beam.BeamSpill(spill=1, start_unix=0.0, length_s=1e-5, truth=t, seed=seed)


def test_pileup_appears_when_two_particles_are_close(cfg, cal):
    sp = hand_spill([1000.0, 1060.0, 5000.0])
    dep = response.apply_response(sp, cfg)
    dz = Digitizer(flat_gains(cfg), cal)
    wf, _ = dz.primitives(sp, dep, dz.nominal_vmon())
    r = reco.reconstruct(wf, cal.gev_per_count[TRIG])
    ecal = 5
    assert r.flags[0, ecal] & reco.FLAG_PILEUP and r.flags[1, ecal] & reco.FLAG_PILEUP
    assert r.flags[2, ecal] == 0
    # the second particle's pulse is in record 0's window 60 ns (4.8 samples) after the first
    s0 = wf[0, ecal].astype(float) - cal.pedestal_even[ch.by_name("ECAL_SUM").id]
    k1, k2 = 8 + 2, 8 + 2 + 5  # peaks: onset 100 ns + 24 ns, and 60 ns later
    assert s0[k2] > 0.5 * s0[k1] and s0[k2 + 8] < s0[k2]
    clean = wf[2, ecal].astype(float) - cal.pedestal_even[ch.by_name("ECAL_SUM").id]
    assert clean[k2 + 2] < 0.3 * clean[k1]  # a lone pulse has decayed by then
    # noise-free check of the superposition: the sum of the two single pulses
    sp1 = hand_spill([1000.0])
    d1 = response.apply_response(sp1, cfg)
    w1, _ = dz.primitives(sp1, d1, dz.nominal_vmon())
    assert np.abs(wf[0, ecal, :8].astype(int) - w1[0, ecal, :8]).max() <= 6  # before the pulses: pedestal
    # pile-up also seen by the crate counters: S1 of record 0 has two pulses
    rs = reco.reconstruct(wf[:, :1], cal.gev_per_count[TRIG[:1]])
    assert rs.flags[0, 0] & reco.FLAG_PILEUP


def test_hv_gain_law(cfg, cal):
    dz = Digitizer(cfg, cal)
    hc = ch.ids_of_kind("hcal")
    cell = int(hc[np.argmin(dz.hidden_gain[hc] * 1.05 ** dz.hidden_gamma[hc])])  # stays below saturation
    c = ch.CHANNELS[cell]
    v1 = dz.nominal_vmon()
    v2 = v1.copy()
    v2[cell] *= 1.05
    a1, a2 = dz.amplitude_scale(v1), dz.amplitude_scale(v2)
    assert a2[cell] / a1[cell] == pytest.approx(1.05 ** dz.hidden_gamma[cell], rel=1e-12)
    others = np.arange(ch.N_CHANNELS) != cell
    assert np.array_equal(a1[others], a2[others])
    assert a1[cell] == pytest.approx(dz.hidden_gain[cell] / cal.gev_per_count[cell])
    v0 = v1.copy()
    v0[cell] = 0.0
    assert dz.amplitude_scale(v0)[cell] == 0.0  # PMT off
    # the sums follow the ECAL HV
    ve = v1.copy()
    ve[ch.ids_of_kind("ecal")] *= 1.02
    ratio = dz.amplitude_scale(ve)[TRIG[5]] / a1[TRIG[5]]
    assert ratio == pytest.approx(np.mean(1.02 ** dz.hidden_gamma[ch.ids_of_kind("ecal")]), rel=1e-12)
    # digitised: calibration beam on that cell, amplitudes through the reconstruction
    table = {
        "x_mm": (c.x - 1) * 194.0,
        "y_mm": (c.y - 1) * 194.0,
        "module": c.module,
        "cell": ch.hcal_cell_name(c.x, c.y, c.module),
    }
    sp = beam.generate_spill(cfg, 31, n_particles=3000)
    dep = response.apply_response(sp, cfg, table=table)
    idx = np.flatnonzero(isolated(sp.truth["time_ns"]) & (sp.truth["ptype"] != HALO) & whole(sp))[:400]
    amp = []
    for v in (v1, v2):
        ev = dz.events(sp, dep, idx, v)
        amp.append(reco.reconstruct(ev, cal.gev_per_count).amplitude[:, cell])
    assert np.all(amp[1] < ch.ADC_MAX - 200)
    g_meas = np.log(np.mean(amp[1]) / np.mean(amp[0])) / np.log(1.05)
    assert g_meas == pytest.approx(dz.hidden_gamma[cell], abs=0.05)
    # the nominal amplitude is ~2500 x hidden gain (80 GeV in the cell at 0.032 GeV/count)
    assert np.mean(amp[0]) / dz.hidden_gain[cell] == pytest.approx(2500, rel=0.03)


def test_primitives_and_events_agree(cfg, cal, sim):
    sp, dep = sim
    dz = Digitizer(cfg, cal)
    hv = dz.nominal_vmon()
    hv[ch.ids_of_kind("hcal")] *= 0.97
    wf, _ = dz.primitives(sp, dep, hv)
    pile = np.flatnonzero(np.diff(sp.truth["time_ns"]) < 100)[:50]
    idx = np.concatenate([pile, pile + 1, np.arange(0, sp.n, 97), [0, sp.n - 1]])
    idx = np.random.default_rng(3).permutation(np.unique(idx))
    ev = dz.events(sp, dep, idx, hv)
    assert ev.shape == (idx.size, ch.N_CHANNELS, 32) and ev.dtype == np.int16
    assert np.array_equal(ev[:, TRIG], wf[idx])  # bit-identical trigger channels
    assert dz.events(sp, dep, np.array([], dtype=np.int64), hv).shape == (0, ch.N_CHANNELS, 32)


def test_events_cells_reconstruct_the_channel_deposits(cfg, cal, sim):
    sp, dep = sim
    dz = Digitizer(flat_gains(cfg), cal)
    idx = np.flatnonzero(isolated(sp.truth["time_ns"]) & (sp.truth["ptype"] == E_) & whole(sp))[:300]
    ev = dz.events(sp, dep, idx, dz.nominal_vmon())
    r = reco.reconstruct(ev, cal.gev_per_count)
    cd = response.channel_deposits(sp, dep, idx)
    central = ch.ecal_id(1, 3, 3)
    assert abs(np.median(r.energy_gev[:, central] / cd[:, central]) - 1) < 0.01
    ecal_reco = r.energy_gev[:, :72].sum(1)
    assert abs(np.median(ecal_reco / sp.truth["e_ecal"][idx]) - 1) < 0.02
    srd = [ch.by_name(n).id for n in ch.SRD_NAMES]
    assert abs(np.median(r.energy_gev[:, srd].sum(1) / sp.truth["e_srd"][idx]) - 1) < 0.02
    v2 = ch.by_name("V2").id
    assert np.all(r.flags[cd[:, v2] == 0, v2] == reco.FLAG_NO_SIGNAL)  # showers do not reach V2
    assert np.all(r.flags[cd[:, v2] > 0, v2] != reco.FLAG_NO_SIGNAL)  # the muons of dimuons do
    assert np.count_nonzero(cd[:, v2] > 0) >= 3
