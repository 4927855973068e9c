"""LED gain monitoring, piece by piece (issue 19 point 4): the emulator's LED pulser and its digitisation,
the crate's LED queries read by the real driver over a real VISA socket, the spill-file layout (old files
stay readable), the monitor's LED alarm and view, and the offline correction. The end-to-end acceptance
(real emulator and DAQ processes) is tests/test_led_live.py."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import h5py
import numpy as np
import pytest

from detector import channels as ch
from detector.config import load_calibration, load_config
from detector.led import LED_CHANNELS, LedEvents, LedReference, cell_means, correction_factor, deviation_pct
from detector.records import EventType
from detector.spillfile import SpillContent, SpillFileError, read_led, read_spill, write_spill

CELL = ch.by_name("ECAL1-3-3").id


@pytest.fixture(scope="module")
def chain():
    from sim_frontend.digitizer import Digitizer
    from sim_frontend.led_pulser import LedPulser

    cfg = load_config(None)
    cal = load_calibration(cfg)
    dig = Digitizer(cfg, cal)
    return cfg, cal, dig, LedPulser(cfg.led, cal.gev_per_count, dig.hidden_seed)


def fire(chain, spill: int, vmon=None, t_unix: float = 1e9) -> LedEvents:
    _, _, dig, pulser = chain
    v = dig.nominal_vmon() if vmon is None else vmon
    return pulser.fire(spill, 4.8, t_unix, lambda light, t: dig.led_events(light, t, v, t_unix, 77 + spill))


def test_led_amplitude_is_light_times_hidden_gain_with_photostatistics(chain):
    cfg, _, dig, _ = chain
    led = fire(chain, 1)
    assert led.waveforms.shape == (cfg.led.pulses_per_cycle, ch.N_CHANNELS, ch.N_SAMPLES)
    # out of spill: every pulse after the flat top, period apart
    assert led.time_ns[0] == pytest.approx((4.8 + cfg.led.delay_s) * 1e9)
    np.testing.assert_allclose(np.diff(led.time_ns), cfg.led.period_ms * 1e6)
    mean, rms = cell_means(led.waveforms)
    ratio = mean / (cfg.led.amplitude_adc * dig.hidden_gain[LED_CHANNELS])
    # the mean of 50 pulses: photostatistics 1/sqrt(2000) = 2.2% per pulse, 0.3% per spill
    assert np.all(np.abs(ratio - 1.0) < 0.015), np.abs(ratio - 1).max()
    per_pulse = np.median(rms / mean)
    expect = np.hypot(1.0 / np.sqrt(cfg.led.photoelectrons), cfg.led.jitter)
    assert per_pulse == pytest.approx(expect, rel=0.2)
    # channels the LED does not reach (counters, vetoes, SRD, sums) stay at their pedestal
    r_other = led.waveforms[:, ch.N_CALO :].astype(float)
    assert np.ptp(r_other, axis=2).max() < 40


def test_led_follows_gain_jump_and_hv_of_one_cell_only(chain):
    _, _, dig, _ = chain
    before, _ = cell_means(fire(chain, 5).waveforms)
    dig.drift.jump(CELL, 1.03, t_unix=1e9 - 1)
    try:
        after, _ = cell_means(fire(chain, 5).waveforms)  # the same spill: the same light and noise
    finally:
        dig.drift._jumps.clear()
    assert after[CELL] / before[CELL] == pytest.approx(1.03, abs=0.002)
    others = np.delete(after / before, CELL)
    assert np.abs(others - 1.0).max() < 1e-3
    # an HV change of one cell changes its LED amplitude by the gain law, and only its
    v = dig.nominal_vmon()
    other = ch.by_name("ECAL1-0-0").id
    v[other] *= 0.99
    lowered, _ = cell_means(fire(chain, 5, v).waveforms)
    assert lowered[other] / before[other] == pytest.approx(0.99 ** dig.hidden_gamma[other], rel=0.003)
    assert lowered[CELL] == pytest.approx(before[CELL], rel=1e-3)


def test_crate_led_queries_through_the_driver(chain):
    from online.msadc import MSADC
    from sim_frontend.beam import generate_spill
    from sim_frontend.emu_msadc import MSADCCrate, SpillRecord
    from sim_frontend.msadc_server import MSADCServer
    from sim_frontend.response import apply_response, hardware_scalers

    cfg, _, dig, _ = chain
    crate = MSADCCrate(dig, buffer=2)
    for sid, with_led in ((3, True), (4, False)):
        spill = generate_spill(cfg, sid, n_particles=500)
        dep = apply_response(spill, cfg, None)
        prim, times = dig.primitives(spill, dep, dig.nominal_vmon())
        rec = SpillRecord(
            spill, dep, prim, times, {"cell": "PHYSICS", "module": -1}, dig.nominal_vmon(), hardware_scalers(dep)
        )
        rec.led = fire(chain, sid) if with_led else None
        crate.spill_completed(rec)
    with MSADCServer(crate) as server:
        d = MSADC(server.resource, timeout_ms=5000).open()
        try:
            d.select_spill(3)
            info = d.spill_info()
            assert info["led"] == cfg.led.pulses_per_cycle
            wf, t = d.read_led(0, info["led"])
            np.testing.assert_array_equal(wf, crate.record(3).led.waveforms)
            np.testing.assert_array_equal(t, crate.record(3).led.time_ns)
            assert t.min() > 4.8e9  # after the flat top
            wf2, _ = d.read_led(10, 5)
            np.testing.assert_array_equal(wf2, wf[10:15])
            d.select_spill(4)
            assert d.spill_info()["led"] == 0
            assert d.query("LED:COUN?") == "0"
            assert d.read_led(0, 0)[0].shape == (0, ch.N_CHANNELS, ch.N_SAMPLES)
        finally:
            d.close()
    # beyond the pulses of the spill: no block, an SCPI error
    assert crate.execute(f"LED:DATA? 0,{cfg.led.pulses_per_cycle + 1},3")[1] is None
    assert crate.execute("SYST:ERR?")[1].startswith("-222")


def _content(led: LedEvents | None, n: int = 3) -> SpillContent:
    rng = np.random.default_rng(1)
    return SpillContent(
        run=1,
        spill=2,
        event_id=np.arange(n, dtype=np.uint32),
        trigger_mask=np.full(n, 1, np.uint8),
        time_ns=np.linspace(0, 1e6, n),
        waveforms=rng.integers(0, 4096, (n, ch.N_CHANNELS, ch.N_SAMPLES)).astype(np.int16),
        attrs={"n_led": 0 if led is None else led.n},
        led=led,
    )


def test_spill_file_keeps_led_events_apart_and_old_files_read(tmp_path, chain):
    led = fire(chain, 9)
    p = write_spill(tmp_path / "a", _content(led))
    d = read_spill(p)
    assert d.n_events == 3 and d.led is not None
    np.testing.assert_array_equal(d.led.waveforms, led.waveforms)
    np.testing.assert_array_equal(d.led.time_ns, led.time_ns)
    assert np.all(d.led.event_type == EventType.LED)
    assert read_led(p).n == led.n
    assert read_spill(p, waveforms=False).led.n == led.n
    # a file without /led (every file written before the LED system) reads as before
    q = write_spill(tmp_path / "b", _content(None))
    assert read_spill(q).led is None and read_led(q) is None
    # a corrupt /led is an error naming the file, never LED events of another type
    with h5py.File(p, "r+") as f:
        f["led/event_type"][0] = EventType.BEAM
    with pytest.raises(SpillFileError, match="spill-000002"):
        read_spill(p)
    with pytest.raises(ValueError, match="int16"):
        LedEvents(np.arange(2, dtype=np.uint32), np.zeros(2), np.zeros((2, 3, 32), np.int16)).check()


def test_reference_deviation_and_correction():
    ref = LedReference(2)
    a = np.full(ch.N_CALO, 1000.0)
    assert not ref.add(1, a * 0.99)
    assert not ref.add(2, np.full(ch.N_CALO, np.nan))  # a spill without LED amplitudes does not count
    assert ref.add(3, a * 1.01)
    np.testing.assert_allclose(ref.reference, 1000.0)
    b = a.copy()
    b[CELL] = 1030.0
    b[5] = np.nan
    dev = deviation_pct(b, ref.reference)
    assert dev[CELL] == pytest.approx(3.0) and np.isnan(dev[5]) and dev[0] == pytest.approx(0.0)
    f = correction_factor(b, ref.reference)
    assert f[CELL] == pytest.approx(1 / 1.03) and f[5] == 1.0 and f[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        LedReference.fixed(np.ones(3))


def test_offline_correction_scales_the_ecal_cells_of_the_spill(chain):
    from detector.reco import reconstruct
    from offline.led_correction import correct

    _, cal, dig, _ = chain
    ref, _ = cell_means(fire(chain, 11).waveforms)
    dig.drift.jump(CELL, 1.03, t_unix=1e9 - 1)
    try:
        led = fire(chain, 12)
    finally:
        dig.drift._jumps.clear()
    wf = led.waveforms[:4]  # any waveforms: the energies are scaled per cell
    reco = reconstruct(wf, cal.gev_per_count)
    e0 = reco.energy_gev.copy()
    info = correct(reco, led, ref)
    assert info["corrected"] and info["cell"] == "ECAL1-3-3" and info["change_pct"] == pytest.approx(-2.9, abs=0.4)
    np.testing.assert_allclose(reco.energy_gev[:, CELL] / e0[:, CELL], 1 / 1.03, rtol=0.005)
    np.testing.assert_array_equal(reco.energy_gev[:, ch.N_ECAL :], e0[:, ch.N_ECAL :])  # HCAL and the rest
    assert not correct(reco, None, ref)["corrected"] and not correct(reco, led, None)["corrected"]


def _model_with_led(jump_at: int, spills: int, alarm_pct: float = 2.0):
    from online.monitor import model as M
    from online.monitor.synthetic import SyntheticDAQ

    daq = SyntheticDAQ(seed=4)
    model = M.MonitorModel(M.MonitorSettings(led_alarm_pct=alarm_pct, led_reference_spills=3), now=0.0)
    levels = []
    for k in range(1, spills + 1):
        daq.spill = k
        if k == jump_at:
            daq.led_gain[CELL] = 1.03
        model.apply([daq.led(float(k))], now=float(k))
        levels.append(model.evaluate(now=float(k))["led"].level)
    return M, model, levels


def test_monitor_led_alarm_names_the_jumped_cell():
    M, model, levels = _model_with_led(jump_at=6, spills=8)
    assert levels[:5] == [M.OK] * 5  # the reference (3 spills), then within 2%
    assert levels[5:] == [M.ALARM] * 3
    assert model.led.alarming().tolist() == [CELL]
    assert "ECAL1-3-3 +3.0%" in model.alarms["led"].text
    assert any("LED ALARM" in e.text for e in model.log)
    # a 3% change below a 5% limit raises nothing
    _, _, quiet = _model_with_led(jump_at=6, spills=8, alarm_pct=5.0)
    assert quiet == [M.OK] * 8


def test_led_view_draws_every_cell_and_the_alarm(qtbot, qapp, tmp_path):
    from online.monitor import views as V
    from online.monitor.window import MonitorWindow

    _, model, _ = _model_with_led(jump_at=6, spills=10)
    V.apply_dark_theme(qapp)
    win = MonitorWindow(model.s, model=model)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    try:
        view = win.led
        view.set_channel(CELL)
        win.tick(now=10.0)
        view.refresh(model, 10.0)
        x, y = view.chosen_curve.getData()
        assert len(x) == 10 and y[-1] == pytest.approx(3.0, abs=1.0) and abs(y[0]) < 1.0
        assert view.curves[CELL].opts["pen"].color().name() == "#ff5252"
        assert view.curves[0].opts["pen"].color().name() != "#ff5252"
        assert [line.value() for line in view.band] == [-2.0, 2.0]
        assert "ECAL1-3-3" in view.info.text() and "beyond 2%" in view.info.text()
        path = tmp_path / "led-view.png"
        assert view.grab().save(str(path))
        assert path.stat().st_size > 5_000
        if os.environ.get("LED_VIEW_PNG"):
            view.grab().save(os.environ["LED_VIEW_PNG"])
            assert win.screenshot(os.environ["LED_VIEW_PNG"].replace(".png", "-window.png"))
    finally:
        win.stop_sources()
