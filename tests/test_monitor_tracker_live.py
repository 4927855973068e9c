"""The spectrometer views and the beam-momentum alarm on a LIVE run: na64-emulator (its beam pushed by this
test through the real feed) + na64-daq as subprocesses, the DAQ's real monitoring stream into the monitor
window (offscreen Qt). Three spills of the configured 100 GeV beam, then three of a 95 GeV beam through the
same beam line (magnets and chambers set for 100 GeV): the peak sits at the beam energy and the alarm stays
quiet, then the peak moves to 95 GeV and the alarm is raised."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    Subscriber,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    free_port,
    spills_recorded,
    start_daq,
    wait_until,
)
from emulator_fixture import deep_merge, start_emulator
from short_cycle import SHORT_CYCLE

from detector.config import load_config
from online.monitor import model as M
from online.monitor import views as V
from online.monitor.window import MonitorWindow
from sim_frontend.feed import FeedSender

PARTICLES = 4000  #: per spill; in calibration mode every beam trigger is recorded


def _inject(win: MonitorWindow, msgs) -> None:
    for m in msgs:
        win.inbox.put(m)
    win.tick()


@pytest.mark.slow
def test_tracker_views_fill_and_the_momentum_alarm_follows_the_beam(qtbot, qapp, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(address)
    sub.start()
    sub.ready.wait(5)
    try:
        config = deep_merge(DAQ_TEST_CONFIG, SHORT_CYCLE)  # the test's feed sends a spill every 0.5 s
        with start_emulator(tmp_path, config, ["--no-pty", "--external-feed"]) as emu:
            cfg = load_config(emu.config_path)
            assert cfg.beam.energy_gev == 100.0
            daq = start_daq(
                tmp_path,
                emu.config_path,
                emu.endpoints_path,
                tmp_path / "data",
                spills=6,
                monitor=address,
                extra=["--calibration-mode"],
            )
            wait_until(lambda: any(m.meta.get("ready") for m in sub.of("status")), 300, "the DAQ ready")
            sender = FeedSender(cfg, emu.feed)
            try:
                sender.run(n_spills=3, n_particles=PARTICLES, realtime=True, send_end=False)
                wait_until(lambda: spills_recorded(daq) >= 3, 120, "3 spills of the 100 GeV beam recorded")
                # the beam energy moves; the beam line (emulator config: magnets, chamber frame) does not
                sender.cfg = cfg.with_overrides({"beam": {"energy_gev": 95.0}})
                sender.run(n_spills=3, n_particles=PARTICLES, realtime=True, first_spill=4)
            finally:
                sender.close()
            assert daq.wait(180) == 0, daq.log()[-4000:]
            wait_until(
                lambda: any(str(m.meta.get("message", "")).startswith("stopped") for m in sub.of("status")),
                30,
                "the DAQ's final status",
            )
    finally:
        sub.stop()
    assert not sub.malformed
    tracker = sub.of("tracker")
    assert sorted(m.spill for m in tracker) == sorted({m.spill for m in tracker}) and len(tracker) == 6
    by_spill = sorted(tracker, key=lambda m: m.spill)
    first = by_spill[0].spill

    V.apply_dark_theme(qapp)
    win = MonitorWindow(M.MonitorSettings.from_config(cfg))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    m = win.model
    _inject(win, [x for x in sub.messages if x.spill is None or x.spill < first + 3])
    a = m.alarms["momentum"]
    assert a.level == M.OK, a.text
    assert m.momentum.peak_gev == pytest.approx(100.0, abs=0.5) and m.momentum.reference_gev == 100.0
    # the views fill with what the DAQ reconstructed
    s = m.sums["tracker"]
    n_ev = s["multiplicity"].sum()
    assert n_ev > 3 * 0.5 * PARTICLES
    v = win.tracker
    np.testing.assert_array_equal(v.c_mom.yData, s["momentum"])
    assert s["momentum"].sum() > 0.5 * n_ev and s["angle"].sum() > 0.5 * n_ev
    assert s["multiplicity"][1] > 0.5 * n_ev  # mostly one track per event at this intensity
    eff = s["eff_hit"] / s["eff_ref"]
    assert np.all((eff > 0.85) & (eff <= 1.0)), eff  # 0.97 per plane in the simulation, minus acceptance
    strips = s["strips"] / n_ev
    assert np.all((strips > 2.0) & (strips < 8.0)), strips  # a 3-strip cluster and about one noise strip
    pe = by_spill[0].meta["profile_edges"]
    centres = np.linspace(pe[0], pe[1], pe[2] + 1)[:-1] + (pe[1] - pe[0]) / pe[2] / 2
    for k, name in enumerate(by_spill[0].meta["planes"]):
        prof = s["profile"][k]
        mean = (prof * centres).sum() / prof.sum()
        assert abs(mean) < 5.0, (name, mean)  # the beam spot is centred on every chamber
        np.testing.assert_array_equal(v.c_prof[name[-1]][k // 2].yData, prof)
    # the beam energy moved: 95 GeV through a line set for 100 GeV
    _inject(win, [x for x in sub.messages if x.spill is not None and x.spill >= first + 3])
    a = m.alarms["momentum"]
    assert a.level == M.ALARM, a.text
    assert m.momentum.peak_gev == pytest.approx(95.0, abs=0.5)
    assert win.alarms.colour("momentum") == V.LEVEL_COLOURS[M.ALARM]
    win.show_central("tracker")
    path = tmp_path / "monitor-tracker-live.png"
    assert win.screenshot(path) and path.stat().st_size > 50_000
