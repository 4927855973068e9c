"""Acceptance of the LED gain monitoring (issue 19): a real na64-emulator and na64-daq as processes, the
DAQ's real monitoring stream (ZeroMQ) driving the monitor model, real spill files read offline.

(a) A 3% gain jump injected in one ECAL cell through the emulator's control endpoint between two spills
    raises the monitor's LED alarm within two spills, for that cell and no other.
(b) With the beam on that cell (the beam centre is on the central cell ECAL-3-3 at the physics position), its
    beam-electron peak after the jump is off by about 3% without the LED correction and within +/-1% of
    the pre-jump peak with it.
"""

from __future__ import annotations

import numpy as np
import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    Subscriber,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    ensure_kernels_cached,
    free_port,
    spills_recorded,
    start_daq,
    wait_until,
)
from emulator_fixture import deep_merge, start_emulator
from short_cycle import LED_IN_A_SHORT_GAP

from detector import channels as ch
from detector.config import load_calibration, load_config
from detector.reco import reconstruct
from detector.records import PARTICLE_CODES, TRIGGER_BITS
from detector.spillfile import list_spills, read_spill
from hv_control.peak import fit_core
from offline.led_correction import correct, corrected_event_table, run_reference
from online.monitor import model as M

CELL = "ECAL1-3-3"  #: the main-section cell the beam is centred on
SPILLS_BEFORE = 4  #: spills recorded before the jump (the first led.reference_spills make the reference)
SPILLS = 11
#: a spill every 0.6 s: the 0.3 s flat top of DAQ_TEST_CONFIG, then a 0.3 s gap (the DAQ records a spill of 2500
#: events about 0.15 s after its flat top) with the LED pulses inside it
SUPERCYCLE_S = 0.6


@pytest.mark.slow
def test_led_alarm_within_two_spills_and_offline_correction(tmp_path):
    ensure_kernels_cached()
    cid = ch.by_name(CELL).id
    cfg_over = deep_merge(
        DAQ_TEST_CONFIG,
        {
            "spill": {"supercycle_s": SUPERCYCLE_S},
            "beam": {"particles_per_spill": 2500, "sigma_mm": 3.0},
            "daq": {"calibration_mode": True},  # every beam particle read out: the cell's peak
            "led": LED_IN_A_SHORT_GAP,
        },
    )
    address = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(address)
    sub.start()
    assert sub.ready.wait(10)
    model = M.MonitorModel(M.MonitorSettings(led_alarm_pct=2.0, led_reference_spills=3))
    seen = 0
    led_spills: list[int] = []  #: DAQ spills of the LED messages, in arrival order
    alarm_of: dict[int, tuple[int, list[int]]] = {}  #: LED spill -> (alarm level, alarming cells) after it

    def pump() -> None:
        nonlocal seen
        new = sub.messages[seen:]
        seen += len(new)
        for msg in new:
            model.apply([msg])
            if msg.topic == "led":
                led_spills.append(int(msg.spill))
                a = model.evaluate()["led"]
                alarm_of[int(msg.spill)] = (a.level, model.led.alarming().tolist())

    with start_emulator(tmp_path, cfg_over, ["--no-pty"]) as emu:
        daq = start_daq(
            tmp_path, emu.config_path, emu.endpoints_path, tmp_path / "data", spills=SPILLS, monitor=address
        )
        wait_until(lambda: (pump(), len(led_spills) >= SPILLS_BEFORE)[1], 180, "LED messages of the first spills")
        wait_until(lambda: emu.state()["state"] == "GAP", 30, "the gap between two spills")
        n_before = spills_recorded(daq)
        reply = emu.control({"cmd": "gain_jump", "channel": CELL, "factor": 1.03})
        t_jump = float(reply["unix"])
        k0 = len(led_spills)
        wait_until(
            lambda: (pump(), model.alarms["led"].level == M.ALARM or len(led_spills) >= k0 + 3)[1], 60, "LED alarm"
        )
        assert daq.wait(120) == 0, daq.log()[-3000:]
        pump()
        sub.stop()

    # (a) no LED alarm before the jump; the alarm within two spills after it, for the jumped cell only
    assert all(alarm_of[s][0] == M.OK for s in led_spills[:k0]), [alarm_of[s] for s in led_spills[:k0]]
    after = [alarm_of[s] for s in led_spills[k0:]]
    first = next(i for i, (level, _) in enumerate(after) if level == M.ALARM)
    assert first <= 1, after
    assert all(cells == [cid] for level, cells in after[first:] if level == M.ALARM), after
    assert model.led.reference.used == led_spills[:3]

    # (b) offline: the cell's beam-electron peak before the jump, and after it without and with the correction
    cfg = load_config(emu.config_path)
    calib = load_calibration(cfg)
    rdir = daq.rdir
    ref = run_reference(str(rdir), cfg.led.reference_spills)
    assert ref is not None
    peaks: dict[str, list[np.ndarray]] = {"before": [], "raw": [], "corrected": [], "e_ecal_before": [], "e_ecal": []}
    n_after = 0
    for p in list_spills(rdir):
        d = read_spill(p)
        assert d.led is not None and d.led.n == cfg.led.pulses_per_cycle
        assert d.led.time_ns.min() > d.attrs["length_s"] * 1e9  # out of spill
        assert d.n_events > 1000 and d.time_ns.max() < d.attrs["length_s"] * 1e9  # no LED event among them
        spill = int(d.attrs["spill"])
        pre = spill <= n_before
        post = float(d.attrs["start_unix"]) > t_jump
        if not (pre or post):
            continue  # the spill the jump fell in
        beam = ((d.trigger_mask & TRIGGER_BITS["beam"]) != 0) & (d.truth["ptype"] == PARTICLE_CODES["e-"])
        reco = reconstruct(d.waveforms, calib.gev_per_count)
        hottest = reco.energy_gev[:, : ch.N_ECAL].reshape(-1, 2, 36).sum(axis=1).argmax(axis=1) == cid - 36
        sel = beam & hottest & (d.truth["e_ecal"] > 90.0)
        table, info = corrected_event_table(d, calib, cfg)
        if pre:
            peaks["before"].append(reco.energy_gev[sel, cid])
            peaks["e_ecal_before"].append(table["e_ecal"][sel])
            continue
        n_after += 1
        assert info["corrected"] and info["cell"] == CELL, info
        peaks["raw"].append(reco.energy_gev[sel, cid].copy())
        correct(reco, d.led, ref)
        peaks["corrected"].append(reco.energy_gev[sel, cid])
        peaks["e_ecal"].append(table["e_ecal"][sel])
    assert n_after >= 4
    fit = {k: fit_core(np.concatenate(v), min_events=500) for k, v in peaks.items()}
    for k, f in fit.items():
        assert f.error < 0.002 * f.mean, (k, f)
    raw = fit["raw"].mean / fit["before"].mean
    cor = fit["corrected"].mean / fit["before"].mean
    print(
        f"LED alarm after {first + 1} spill(s); cell peak after/before: raw {raw:.4f}, corrected {cor:.4f}; "
        f"E_ECAL corrected {fit['e_ecal'].mean / fit['e_ecal_before'].mean:.4f}; {n_after} spills after the jump"
    )
    assert raw == pytest.approx(1.03, abs=0.006), raw
    assert abs(cor - 1.0) < 0.01, cor
    # the event table's E_ECAL (all cells, corrected in the selection path) back at its pre-jump peak too
    assert abs(fit["e_ecal"].mean / fit["e_ecal_before"].mean - 1.0) < 0.01
