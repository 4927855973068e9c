"""The spectrometer in the monitor (issue 16 part 5): the ``tracker`` topic made by the one producer from
Micromegas strips (numbers checked on hand-made strips), the beam-momentum alarm of the model, and the
spectrometer view of the window (offscreen Qt)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import math

import numpy as np
import pytest

from detector import monitoring as mon
from detector.config import load_config
from detector.framing import decode, encode
from detector.tracking import PARTICLE_CLUSTER_CHARGE, Spectrometer, StripData, reconstruct_tracks
from online.monitor import model as M
from online.monitor import tracker as T
from online.monitor.synthetic import SyntheticDAQ
from online.monitor_messages import PROFILE_BIN_MM, event_messages, tracker_message


@pytest.fixture(scope="module")
def spec():
    return Spectrometer.from_config(load_config(None))


def _framed(topic, arrays, meta, seq=0, run=1, spill=1):
    return decode(encode(topic, seq, arrays, meta, run, spill, 0.0))


def _strip_pos(spec, x_mm):
    """The strip whose centre is at ``x_mm`` (a 3-strip cluster around it has its centroid there)."""
    return int(round((x_mm + spec.half_size_mm) / spec.pitch_mm - 0.5))


def hand_made(spec):
    """Five events of nominal tracks (x = y = 0 in every plane: p = p0, angle 0) with a 3-strip particle
    cluster per plane, except: event 1 misses plane 2, event 2 misses planes 0 and 5, event 4 has no strips
    at all. Every event with strips has one noise strip of 30 counts in plane 7 (far from the beam)."""
    events = []
    missing = {1: {2}, 2: {0, 5}}
    for e in range(5):
        plane, strip, charge = [], [], []
        if e != 4:
            for p in range(spec.n_planes):
                if p in missing.get(e, set()):
                    continue
                s0 = _strip_pos(spec, 0.0)
                plane += [p, p, p]
                strip += [s0 - 1, s0, s0 + 1]
                charge += [100.0, 200.0, 100.0]
            plane.append(7)
            strip.append(20)
            charge.append(30.0)
        events.append((plane, strip, charge))
    ptr = np.cumsum([0] + [len(e[0]) for e in events])
    cat = [np.concatenate([np.asarray(e[k], float) for e in events]) for k in range(3)]
    m = cat[0].shape[0]
    return StripData(
        ptr, cat[0].astype(np.uint8), cat[1].astype(np.uint16), cat[2].astype(np.float32), np.zeros(m, np.float32)
    )


def test_plane_summary_comes_from_the_same_clustering_pass(spec):
    sd = hand_made(spec)
    tracks, planes = reconstruct_tracks(sd, spec, planes=True)
    same = reconstruct_tracks(sd, spec)
    for name in tracks.dtype.names:
        np.testing.assert_array_equal(tracks[name], same[name])
    assert planes.n_strips.shape == (5, spec.n_planes)
    assert planes.n_strips[0].tolist() == [3] * 7 + [4]  # the noise strip is in plane 7
    assert planes.n_clusters[0].tolist() == [1] * 7 + [2]
    assert planes.lead_charge[0, 0] == pytest.approx(400.0) and planes.lead_mm[0, 0] == pytest.approx(
        0.0, abs=spec.pitch_mm / 2
    )
    assert planes.n_strips[1, 2] == 0 and math.isnan(planes.lead_mm[1, 2]) and planes.lead_charge[1, 2] == 0
    assert not planes.particle[4].any() and planes.n_strips[4].sum() == 0
    assert 400.0 >= PARTICLE_CLUSTER_CHARGE > 30.0


def test_tracker_message_numbers_on_hand_made_strips(spec):
    sd = hand_made(spec)
    m = tracker_message(sd, spec)
    mon.check(_framed(m.topic, m.arrays, m.meta), strict=True)
    a = m.arrays
    assert m.meta["events"] == 5 and m.meta["p0_gev"] == spec.p0_gev
    assert m.meta["planes"] == ["MM1X", "MM1Y", "MM2X", "MM2Y", "MM3X", "MM3Y", "MM4X", "MM4Y"]
    # momentum: the x track needs all 4 X planes: events 0, 2 (plane 0 missing: no), 3 -> events 0, 2?, 3
    tracks = reconstruct_tracks(sd, spec)
    has_p = np.isfinite(tracks["p_gev"])
    assert has_p.tolist() == [True, False, False, True, False]  # events 1 and 2 miss an X plane
    lo, hi, n = mon.MOMENTUM_EDGES
    k = int((spec.p0_gev - lo) / (hi - lo) * n)
    assert a["momentum"].sum() == 2 and a["momentum"][k] + a["momentum"][k - 1] == 2
    assert a["angle"].sum() == 2 and a["angle"][0] == 2  # angle 0 in the first bin
    assert a["multiplicity"].tolist() == [3, 2, 0, 0, 0, 0, 0, 0]
    # strips and clusters summed over the events
    assert a["strips"].tolist() == [9, 12, 9, 12, 12, 9, 12, 16]
    assert a["clusters"].tolist() == [3, 4, 3, 4, 4, 3, 4, 8]
    # efficiency: every plane's reference = events with particles in all other planes
    # events 0, 3: all 8 planes; event 1: all but plane 2; event 2: two planes missing (no reference)
    ref = [2] * 8
    ref[2] = 3
    assert a["eff_ref"].tolist() == ref and a["eff_hit"].tolist() == [2] * 8
    # beam profile: one entry per event with a particle in the plane, in the bin of x = 0
    pe = m.meta["profile_edges"]
    assert pe == [-spec.half_size_mm, spec.half_size_mm, int(round(2 * spec.half_size_mm / PROFILE_BIN_MM))]
    centre = pe[2] // 2
    per_plane = a["profile"].sum(axis=1)
    assert per_plane.tolist() == [3, 4, 3, 4, 4, 3, 4, 4]
    assert (a["profile"][:, centre - 1 : centre + 1].sum(axis=1) == per_plane).all()


def test_event_messages_add_the_tracker_when_the_spill_has_strips(spec):
    sd = hand_made(spec)
    wf = np.zeros((5, 121, 32), np.int16)
    args = (wf, np.arange(5), np.zeros(5, np.uint8), np.full(121, 0.01))
    kw = {"n_waveforms": 0, "amplitudes": False}
    assert [m.topic for m in event_messages(*args, **kw)] == ["calo", "ecal_hcal"]
    assert [m.topic for m in event_messages(*args, **kw, mm=sd)] == ["calo", "ecal_hcal"]  # no geometry
    msgs = event_messages(*args, **kw, mm=sd, spectrometer=spec)
    assert [m.topic for m in msgs] == ["calo", "ecal_hcal", "tracker"]
    ref = tracker_message(sd, spec)
    for name, arr in ref.arrays.items():
        np.testing.assert_array_equal(msgs[-1].arrays[name], arr)


# ------------------------------------------------------------------------------------ the model's alarm
def _spills(model, daq, n, now=1000.0):
    for _ in range(n):
        model.apply(daq.spill_messages(now=now), now=now)
        now += 30.0
    model.evaluate(now)
    return model.alarms["momentum"]


def test_momentum_peak_of_a_histogram():
    edges = mon.MOMENTUM_EDGES
    c = np.zeros(edges[2])
    assert math.isnan(T.momentum_peak(c, edges)[0])
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.normal(95.0, 0.95, 5000), rng.uniform(50.0, 95.0, 500)])
    c = np.histogram(p, bins=edges[2], range=edges[:2])[0]
    peak, n = T.momentum_peak(c, edges)
    assert peak == pytest.approx(95.0, abs=0.1) and 4500 < n < 5200


def test_momentum_alarm_on_the_configured_beam_energy():
    model = M.MonitorModel(M.MonitorSettings(beam_energy_gev=100.0, momentum_alarm_pct=2.0))
    daq = SyntheticDAQ(seed=5)
    assert model.evaluate(0.0)["momentum"].level == M.NONE
    a = _spills(model, daq, 3)
    assert a.level == M.OK and "peak 100.0 GeV vs 100" in a.text
    daq.momentum_factor = 0.99  # within the 2% tolerance
    assert _spills(model, daq, 2).level == M.OK
    daq.momentum_factor = 0.95
    a = _spills(model, daq, 1)
    assert a.level == M.ALARM and "95.0 GeV vs 100 (-5.0%)" in a.text
    assert any("MOMENTUM ALARM" in e.text for e in model.log)
    daq.momentum_factor = 1.0  # back: the alarm clears with the next spill (the latest spill has enough tracks)
    assert _spills(model, daq, 1).level == M.OK
    # a spill with too few tracks does not decide alone: it is summed with the previous ones
    daq.hist_events = 20
    daq.momentum_factor = 0.9
    a = _spills(model, daq, 1)
    assert a.level == M.OK and model.momentum.peak_spills >= 2


def test_a_malformed_tracker_message_is_counted_and_changes_nothing():
    model = M.MonitorModel(M.MonitorSettings(beam_energy_gev=100.0))
    daq = SyntheticDAQ(seed=4)
    _spills(model, daq, 2)
    before = {k: v.copy() for k, v in model.sums["tracker"].items()}
    good = next(m for m in daq.spill_messages() if m.topic == "tracker")
    for meta in ({**good.meta, "momentum_edges": [0.0, 200.0, 399]}, {**good.meta, "momentum_edges": "x"}):
        model.apply([_framed("tracker", good.arrays, meta, seq=good.seq)], now=2000.0)
    assert model.content_errors == 2 and len(model.momentum.recent) == 2
    for k, v in before.items():
        np.testing.assert_array_equal(model.sums["tracker"][k], v)


def test_momentum_alarm_without_config_uses_the_daq_beam_energy_and_the_first_spills_mode():
    model = M.MonitorModel(M.MonitorSettings(beam_energy_gev=0.0))
    daq = SyntheticDAQ(seed=6)
    daq.momentum_factor = 0.95
    a = _spills(model, daq, 1)
    assert a.level == M.ALARM and model.momentum.reference_gev == 100.0  # p0_gev of the messages
    model = M.MonitorModel(M.MonitorSettings(beam_energy_gev=100.0, momentum_reference_spills=3))
    daq = SyntheticDAQ(seed=7)
    daq.momentum_factor = 0.95  # the beam line runs at 95 GeV: the first spills are the reference
    assert _spills(model, daq, 2).level == M.NONE
    assert _spills(model, daq, 2).level == M.OK and model.momentum.reference_gev == pytest.approx(95.0, abs=0.1)
    daq.momentum_factor = 0.98  # 95 -> 98: +3% of the run's own reference
    a = _spills(model, daq, 1)
    assert a.level == M.ALARM and "(+3." in a.text
    model.reset()  # a reset forgets the reference too
    assert model.momentum.reference_gev != model.momentum.reference_gev


# ------------------------------------------------------------------------------------------------ view
def test_spectrometer_view_shows_the_run_sums(qtbot, qapp, tmp_path):
    from online.monitor import views as V
    from online.monitor.window import MonitorWindow

    V.apply_dark_theme(qapp)
    win = MonitorWindow(M.MonitorSettings(beam_energy_gev=100.0))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    assert win.tabs is not None and win.tabs.indexOf(win.tracker) >= 0 and win.tabs.indexOf(win.maps) == 0
    daq = SyntheticDAQ(seed=9)
    sums: dict[str, np.ndarray] = {}
    for k in range(4):
        daq.momentum_factor = 1.0 if k < 3 else 0.95
        msgs = daq.spill_messages()
        for m in msgs:
            win.inbox.put(m)
            if m.topic == "tracker":
                for name, arr in m.arrays.items():
                    sums[name] = sums.get(name, 0) + arr
        win.tick()
    v = win.tracker
    np.testing.assert_array_equal(v.c_mom.yData, sums["momentum"])
    np.testing.assert_array_equal(v.c_angle.yData, sums["angle"])
    np.testing.assert_array_equal(v.c_prof["X"][2].yData, sums["profile"][4])  # MM3X
    np.testing.assert_array_equal(v.c_prof["Y"][0].yData, sums["profile"][1])  # MM1Y
    eff = sums["eff_hit"] / sums["eff_ref"]
    assert [t.toPlainText() for t in v.eff_text] == [f"{e:.3f}" for e in eff]
    assert eff.min() > 0.95 and eff.max() < 0.99
    n_ev = sums["multiplicity"].sum()
    np.testing.assert_allclose(v.b_strips.opts["height"], sums["strips"] / n_ev)
    np.testing.assert_allclose(v.b_mult.opts["height"], sums["multiplicity"] / n_ev)
    # the latest spill moved: the peak line at 95 GeV in the alarm colour, the reference at 100
    assert v.l_peak.value() == pytest.approx(95.0, abs=0.2) and v.l_ref.value() == 100.0
    assert win.model.alarms["momentum"].level == M.ALARM
    assert win.alarms.colour("momentum") == V.LEVEL_COLOURS[M.ALARM]
    assert "peak 9" in v.p_mom.titleLabel.text and "ref. 100" in v.p_mom.titleLabel.text
    win.show_central("tracker")
    path = tmp_path / "monitor-tracker.png"
    assert win.screenshot(path) and path.stat().st_size > 50_000
    # "Reset accumulators" empties the view
    win.model.reset()
    win.tick()
    assert v.c_mom.yData.sum() == 0 and len(v.b_eff.opts["height"]) == 0 and not v.l_peak.isVisible()
