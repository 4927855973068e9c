"""The na64-monitor window on offscreen Qt: a real ZeroMQ PUB on a free loopback port, direct injection
through the inbox, a replayed run directory written with detector.spillfile, and the CLI screenshot.
Assertions are on what the widgets show (image data, curve data, labels, table colours)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt (docs/stack.md)

import logging
import math
import time

import numpy as np
import pytest
from PyQt5 import QtCore, QtGui

from detector import channels as ch
from detector.config import load_calibration
from detector.records import TRIGGER_BITS
from detector.runrecord import write_run_record
from detector.spillfile import SpillContent, write_spill
from online.monitor import model as M
from online.monitor import views as V
from online.monitor.synthetic import SyntheticDAQ, SyntheticPublisher, write_example_yields
from online.monitor.window import MonitorWindow
from online.monitor_cli import main


@pytest.fixture
def yields_file(tmp_path):
    return write_example_yields(str(tmp_path / "yields.json"))


@pytest.fixture
def window(qtbot, qapp, yields_file):
    V.apply_dark_theme(qapp)
    win = MonitorWindow(M.MonitorSettings(yields_file=yields_file, stall_s=60.0, hv_deviation_v=5.0))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.stop_sources()


def inject(win: MonitorWindow, msgs, now: float | None = None) -> None:
    for m in msgs:
        win.inbox.put(m)
    win.tick(now)


def totals(msgs):
    out = {"ecal_energy": 0.0, "ecal_occupancy": 0.0, "hcal_energy": 0.0, "counts": 0.0, "S1": [], "eot": []}
    for m in msgs:
        if m.topic == "calo":
            for k in ("ecal_energy", "ecal_occupancy", "hcal_energy"):
                out[k] = out[k] + m.arrays[k]
        elif m.topic == "ecal_hcal":
            out["counts"] = out["counts"] + m.arrays["counts"]
        elif m.topic == "scalers":
            out["S1"].append(m.meta["S1"])
            out["eot"].append(m.meta["eot"])
    return out


# ------------------------------------------------------------------------------------------------
def test_live_stream_over_real_zeromq(qtbot, window, caplog):
    win = window
    pub = SyntheticPublisher("tcp://127.0.0.1:0")
    try:
        daq = SyntheticDAQ(seed=11)
        win.connect_stream(pub.endpoint)
        assert win.receiver.running

        def joined() -> bool:  # PUB/SUB slow joiner: heartbeat until one arrives
            pub.send(daq.status("IDLE"))
            return win.inbox.stats().received > 0

        qtbot.waitUntil(joined, timeout=5000)
        sent = []
        for i in range(3):
            if i == 1:
                daq.skip_seq = 3  # the publisher "loses" three messages
            msgs = daq.spill_messages()
            for m in msgs:
                pub.send(m)
            sent += msgs
            if i == 1:
                pub.send_raw([b"calo", b"{not json"])
        qtbot.waitUntil(lambda: (win.tick(), win.model.spill == 3 and win.model.state == "RECORDED")[1], timeout=5000)
        exp = totals(sent)
        t = win.status.tiles
        assert t["run"].value.text() == "1" and t["spill"].value.text() == "3"
        assert t["state"].value.text() == "RECORDED" and t["state"].bg == V.STATE_COLOURS["RECORDED"]
        assert t["missed"].value.text() == "3"
        assert t["malformed"].value.text() == "1"
        assert t["missed"].bg == V.LEVEL_COLOURS[M.WARN]
        assert win.alarms.colour("missed") == V.LEVEL_COLOURS[M.WARN]
        assert win.alarms.colour("data") == V.LEVEL_COLOURS[M.WARN]
        np.testing.assert_allclose(win.maps.image_of("main"), exp["ecal_energy"][1])
        np.testing.assert_allclose(win.maps.image_of("ps"), exp["ecal_energy"][0])
        np.testing.assert_allclose(win.rates.curves["S1"].yData, exp["S1"])
        np.testing.assert_allclose(win.rates.curves["eot_total"].yData, np.cumsum(exp["eot"]))
        assert win.hv.table.rowCount() == 119
        thread = win.receiver._thread
        assert thread is not None and thread.is_alive()
        with caplog.at_level(logging.ERROR, logger="online.monitor.stream"):
            win.stop_sources()  # the inproc control message ends the receiver's thread, which is joined
        assert not thread.is_alive() and win.receiver is None
        assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
    finally:
        pub.close()


def test_maps_histogram_and_occupancy_toggle(window):
    win = window
    daq = SyntheticDAQ(seed=4)
    msgs = []
    for _ in range(3):
        batch = daq.spill_messages()
        msgs += batch
        inject(win, batch)
    exp = totals(msgs)
    np.testing.assert_allclose(win.maps.image_of("main"), exp["ecal_energy"][1])
    for mod in range(4):  # HCAL arrays are [module][y][x]; the image is [x][y]
        np.testing.assert_allclose(win.maps.image_of(f"hcal{mod}"), exp["hcal_energy"][mod].T)
    win.maps.set_mode("occupancy")
    win.tick()
    np.testing.assert_allclose(win.maps.image_of("ps"), exp["ecal_occupancy"][0])
    _lo, hi = win.maps.bars["ps"].levels()
    assert hi == V.nice_ceil(exp["ecal_occupancy"][0].max()) >= exp["ecal_occupancy"][0].max()
    assert V.nice_ceil(1234.0) == 1500.0 and V.nice_ceil(0.0) == 1.0 and V.nice_ceil(5e6) == 5e6
    # a cell label shows its name and value
    x, y = 3, 2
    assert win.maps.maps["ps"].texts[x][y].text().startswith("3-2\n")
    # E_ECAL vs E_HCAL: log10 of the accumulated increments, empty bins transparent (NaN)
    c = exp["counts"]
    img = win.ecal_hcal.images["full"].image
    np.testing.assert_allclose(img[c > 0], np.log10(c[c > 0]))
    assert np.isnan(img[c == 0]).all()
    # signal box: E_ECAL < 50 GeV (bins 0..49 of 1 GeV), E_HCAL < 1 GeV (bin 0)
    assert win.ecal_hcal.in_box == pytest.approx(c[:50, :1].sum())
    assert win.ecal_hcal.in_box > 0
    assert f"{win.ecal_hcal.entries:.0f}" == f"{c.sum():.0f}"


def test_rates_and_triggers_curves(window):
    win = window
    daq = SyntheticDAQ(seed=8)
    sc = []
    for _ in range(5):
        batch = daq.spill_messages()
        sc.append(next(m for m in batch if m.topic == "scalers"))
        inject(win, batch)
    c = win.rates.curves
    np.testing.assert_array_equal(c["S0"].xData, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(c["V0"].yData, [m.meta["V0"] for m in sc])
    for name in ("physics", "beam", "random", "dimuon"):
        np.testing.assert_allclose(c[f"trig:{name}:raw"].yData, [m.meta["triggers"][name]["raw"] for m in sc])
        np.testing.assert_allclose(c[f"trig:{name}:acc"].yData, [m.meta["triggers"][name]["accepted"] for m in sc])
    np.testing.assert_allclose(c["eot"].yData, [m.meta["eot"] for m in sc])
    assert win.status.tiles["eot_total"].value.text() == V.fmt_count(daq.eot_total)


def test_click_on_cell_selects_waveforms(qtbot, window):
    win = window
    daq = SyntheticDAQ(seed=2)
    inject(win, daq.spill_messages())
    target = ch.hcal_id(1, 1, 0)
    cm = win.maps.maps["hcal0"]
    view = win.maps.glw
    pos = view.mapFromScene(cm.scene_pos_of(1, 1))
    qtbot.mouseClick(view.viewport(), QtCore.Qt.LeftButton, pos=pos)
    assert win.waveforms.channel == target
    assert win.waveforms.combo.currentText() == "HCAL-1-1-0"
    assert cm.frame.isVisible() and cm.frame.rect() == QtCore.QRectF(1, 1, 1, 1)
    win.tick()
    shown = win.waveforms.shown()
    assert len(shown) == win.model.waveforms.shape[0] == 8
    for i, y in enumerate(shown):
        np.testing.assert_array_equal(y, win.model.waveforms[i, target])
    assert "HCAL-1-1-0" in win.waveforms.info.text()
    # an ECAL main cell of another map
    pos = view.mapFromScene(win.maps.maps["main"].scene_pos_of(4, 0))
    qtbot.mouseClick(view.viewport(), QtCore.Qt.LeftButton, pos=pos)
    assert win.waveforms.channel == ch.ecal_id(1, 4, 0)


def test_hv_table_alarm_colours(window):
    win = window
    daq = SyntheticDAQ(seed=6)
    inject(win, [daq.status("IDLE"), daq.hv()])
    assert win.alarms.colour("hv") == V.LEVEL_COLOURS[M.OK]
    ok_id = ch.by_name("S1").id
    assert win.hv.cell(ok_id, "State").text() == "OK"
    assert win.hv.cell(ok_id, "State").data(QtCore.Qt.BackgroundRole) is None
    trip, dev = ch.by_name("HCAL-2-0-3").id, ch.by_name("ECAL0-1-4").id
    daq.trip = {trip}
    daq.deviate = {dev: 9.0}
    inject(win, [daq.hv()])
    assert win.hv.row_of(trip) == 0  # worst first
    st = win.hv.cell(trip, "State")
    assert st.text() == "TRIP" and st.background().color().name() == V.HV_COLOURS[M.HV_TRIPPED]
    assert win.hv.cell(trip, "Status").text() == "0x0088"
    d = win.hv.cell(dev, "VMON")
    assert d.background().color().name() == V.HV_COLOURS[M.HV_DEVIATION]
    assert float(d.text()) == pytest.approx(float(win.hv.cell(dev, "VSET").text()) + 9.0, abs=0.05)
    assert win.alarms.colour("hv") == V.LEVEL_COLOURS[M.ALARM]
    assert "HCAL-2-0-3" in win.alarms.tiles["hv"].detail.text()
    assert win.hv.summary.bg == V.LEVEL_COLOURS[M.ALARM]
    assert any("HV ALARM" in line and "HCAL-2-0-3" in line for line in win.log_pane.lines())
    daq.trip = set()  # trip cleared: back to normal colours
    inject(win, [daq.hv()])
    assert win.hv.cell(trip, "State").data(QtCore.Qt.BackgroundRole) is None
    assert win.alarms.colour("hv") == V.LEVEL_COLOURS[M.WARN]


def test_rate_drop_stall_and_error_alarms(window):
    win = window
    daq = SyntheticDAQ(seed=9)
    for _ in range(5):
        inject(win, daq.spill_messages())
    assert win.alarms.colour("beam") == V.LEVEL_COLOURS[M.OK]
    assert win.alarms.colour("daq") == V.LEVEL_COLOURS[M.OK]
    daq.beam_factor = 0.2
    inject(win, daq.spill_messages())
    assert win.alarms.colour("beam") == V.LEVEL_COLOURS[M.ALARM]
    assert "RATE DROP" in win.alarms.tiles["beam"].detail.text()
    assert win.alarms.tiles["beam"].value.text() == "ALARM"
    win.tick(time.time() + 61.0)  # no status for longer than monitor.stall_s
    assert win.alarms.colour("daq") == V.LEVEL_COLOURS[M.ALARM]
    assert "STALLED" in win.alarms.tiles["daq"].detail.text()
    daq.error = "MSADC crate not responding"
    inject(win, [daq.status()])
    assert win.status.tiles["state"].value.text() == "ERROR"
    assert win.status.tiles["state"].bg == V.STATE_COLOURS["ERROR"]
    assert "MSADC crate not responding" in win.alarms.tiles["daq"].detail.text()
    text = "\n".join(win.log_pane.lines())
    assert "BEAM ALARM" in text and "DAQ ALARM" in text
    inject(win, [daq.log("operator note: beam tuning", "INFO")])
    assert win.log_pane.lines()[-1].endswith("[daq] operator note: beam tuning")


def test_sensitivity_view_against_hand_computation(window, qtbot, tmp_path):
    win = window
    daq = SyntheticDAQ(seed=1)
    for _ in range(2):
        inject(win, daq.spill_messages())
    yields = {2.0: 9.89e-2, 16.7: 6.30e-3, 100.0: 2.57e-4, 500.0: 5.41e-6}
    for mass, y in yields.items():
        eps = math.sqrt(2.3 / (daq.eot_total * 0.5 * y))
        assert win.sensitivity.values[mass].text() == f"{eps:.2e}"
    x, y = win.sensitivity.curve.xData, win.sensitivity.curve.yData
    np.testing.assert_allclose(y[x == 16.7], math.sqrt(2.3 / (daq.eot_total * 0.5 * 6.30e-3)))
    # missing file: the view says so
    win2 = MonitorWindow(M.MonitorSettings(yields_file=str(tmp_path / "missing.json")))
    qtbot.addWidget(win2)
    win2.tick()
    assert "not found" in win2.sensitivity.header.text()
    assert win2.sensitivity.values[16.7].text() == "—"


# ------------------------------------------------------------------------------------------------
RUN = 7
N_EV = 12


def _amplitudes(spill: int) -> np.ndarray:
    amp = np.zeros((N_EV, ch.N_CHANNELS))
    amp[:, ch.ecal_id(1, 2, 3)] = 800.0 + 50.0 * np.arange(N_EV) + 100.0 * spill
    amp[:, ch.ecal_id(0, 2, 3)] = 300.0
    amp[:, ch.hcal_id(1, 1, 0)] = 500.0
    return amp


def write_small_run(rdir) -> None:
    from detector.pulse import synthesize

    hv_ids = [ch.hcal_id(x, y, 0) for y in range(3) for x in range(3)]
    for spill in (1, 2):
        amp = _amplitudes(spill)
        wf = synthesize(amp, np.full(amp.shape, 100.0), 150.0, 156.0, noise_rms=0.0, seed=spill)
        mask = np.where(np.arange(N_EV) % 3 == 0, TRIGGER_BITS["beam"], TRIGGER_BITS["physics"]).astype(np.uint8)
        attrs = {
            "scalers": {"S0": 5.0e6 + spill, "S1": 4.7e6 + spill, "S2": 4.6e6, "S3": 4.5e6, "V0": 6.0e5, "V1": 3.0e4},
            "triggers": {"physics": {"raw": 9000 + spill, "accepted": 8}, "beam": {"raw": 4.2e6, "accepted": 4}},
            "eot": 4_200_000 + spill,
            "length_s": 4.8,
            "start_unix": 1.7e9 + 30 * spill,
            "n_particles": 5_000_000,
            "n_accepted": N_EV,
            "n_read_out": N_EV,
            "flags": ["retried"] if spill == 2 else [],
            "hv": {
                "channel_ids": hv_ids,
                "vset": [850.0] * 9,
                "vmon": [850.2] * 8 + [0.0],
                "imon": [170.0] * 9,
                "status": [1] * 8 + [0x88],
            },
        }
        write_spill(
            rdir,
            SpillContent(
                RUN, spill, np.arange(N_EV, dtype=np.uint32) * 7, mask, np.arange(N_EV) * 1e3, wf, None, attrs
            ),
        )
    (rdir / "spill-000003.h5").write_bytes(b"not an HDF5 file")  # a corrupt spill: skipped, logged
    write_run_record(rdir, {"run": RUN, "spills": [{"spill": s, "flags": []} for s in (1, 2, 3)]})


def test_replay_of_a_recorded_run(window, qtbot, tmp_path):
    win = window
    rdir = tmp_path / "run-000007"
    write_small_run(rdir)
    win.start_replay(rdir, None, interval_s=0.01)
    qtbot.waitUntil(lambda: (win.tick(), win.feeder.finished)[1], timeout=30000)
    win.tick()
    assert win.feeder.error == ""
    m = win.model
    assert m.run == RUN and m.spill == 2 and m.calo_spills == 2
    g = load_calibration().gev_per_count
    e_main = sum(_amplitudes(s)[:, ch.ecal_id(1, 2, 3)].sum() for s in (1, 2)) * g[ch.ecal_id(1, 2, 3)]
    e_hcal = 2 * N_EV * 500.0 * g[ch.hcal_id(1, 1, 0)]
    img = win.maps.image_of("main")
    assert img[2, 3] == pytest.approx(e_main, rel=2e-3)
    assert img.sum() == pytest.approx(e_main, rel=2e-3)  # zero suppression: other cells empty
    assert win.maps.image_of("hcal0")[1, 1] == pytest.approx(e_hcal, rel=2e-3)
    win.maps.set_mode("occupancy")
    win.tick()
    assert win.maps.image_of("ps")[2, 3] == 2 * N_EV and win.maps.image_of("ps").sum() == 2 * N_EV
    # rates from the spill attributes
    np.testing.assert_allclose(win.rates.curves["S1"].yData, [4.7e6 + 1, 4.7e6 + 2])
    np.testing.assert_allclose(win.rates.curves["trig:physics:raw"].yData, [9001, 9002])
    np.testing.assert_allclose(win.rates.curves["eot_total"].yData, [4_200_001, 8_400_003])
    # ECAL vs HCAL: every event in one (E_ECAL, E_HCAL) bin of 1 GeV
    assert win.ecal_hcal.entries == 2 * N_EV
    # waveforms of the recorded events, HV from the spill attributes, flags logged, bad file skipped
    win.waveforms.set_channel(ch.ecal_id(1, 2, 3))
    win.tick()
    assert len(win.waveforms.shown()) == 8
    assert win.hv.table.rowCount() == 9
    assert win.hv.cell(ch.hcal_id(2, 2, 0), "State").text() == "TRIP"
    text = "\n".join(win.log_pane.lines())
    assert "flags retried" in text and "skipped" in text and "replay finished" in text
    assert win.status.tiles["eot_total"].value.text() == V.fmt_count(8_400_003)


# ------------------------------------------------------------------------------------------------
def _check_png(path, min_w=1200, min_h=700):
    assert path.exists() and path.stat().st_size > 50_000
    img = QtGui.QImage(str(path))
    assert img.width() >= min_w and img.height() >= min_h
    small = img.scaled(64, 36)
    colours = {small.pixel(x, y) for x in range(64) for y in range(36)}
    assert len(colours) > 50  # not a blank window


def test_cli_screenshot_synthetic(qapp, tmp_path, yields_file):
    png = tmp_path / "monitor.png"
    rc = main(
        [
            "--synthetic",
            "--replay-interval",
            "0.1",
            "--yields",
            yields_file,
            "--screenshot",
            str(png),
            "--exit-after",
            "1.2",
        ]
    )
    assert rc == 0
    _check_png(png)


def test_cli_screenshot_replay(qapp, tmp_path):
    rdir = tmp_path / "run-000007"
    write_small_run(rdir)
    png = tmp_path / "replay.png"
    rc = main(["--replay", str(rdir), "--replay-interval", "0.05", "--screenshot", str(png), "--exit-after", "1.5"])
    assert rc == 0
    _check_png(png)


def test_cli_help_and_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--connect", "--replay", "--screenshot", "--exit-after", "--yields", "sqrt(2.3"):
        assert word in out
    assert main(["--replay", str(tmp_path / "nope")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[monitor]\nrepaint_hz = 50\n")
    assert main(["--config", str(bad), "--exit-after", "0"]) == 2
    assert "repaint_hz" in capsys.readouterr().err
