"""The emulator side of the ECAL calibration (issue 19 point 3): hidden ECAL gains spread per cell, a slow
drift with time and injectable jumps; the table puts the beam on an ECAL cell (MOVE ECAL), and the calibration
beam then hits that cell; and the ECAL constants solver on simulated showers."""

from __future__ import annotations

import numpy as np
import pytest

from detector import channels as chmap
from detector.config import load_calibration, load_config
from hv_control.table import HCALTableDriver, TableLimitError
from hv_control.transport import HandlerTransport
from sim_frontend.digitizer import Digitizer
from sim_frontend.emu_table import HCALTable, ecal_cell_centre_mm
from sim_frontend.gain_drift import GainDrift


def test_ecal_gains_are_spread_by_the_configured_amount():
    cfg = load_config(None)
    cal = load_calibration(cfg)
    ec = chmap.ids_of_kind("ecal")
    g20 = Digitizer(cfg, cal).hidden_gain[ec]
    assert np.all(np.abs(g20 - 1) <= 0.2) and np.abs(g20 - 1).max() > 0.15  # default +/-20%, uniform
    g5 = Digitizer(cfg.with_overrides({"emulator": {"ecal_gain_spread": 0.05}}), cal).hidden_gain[ec]
    assert np.all(np.abs(g5 - 1) <= 0.05) and np.abs(g5 - 1).max() > 0.03
    # the other channels keep their hidden values whatever the ECAL spread
    other = np.setdiff1d(np.arange(chmap.N_CHANNELS), ec)
    a = Digitizer(cfg, cal).hidden_gain[other]
    b = Digitizer(cfg.with_overrides({"emulator": {"ecal_gain_spread": 0.05}}), cal).hidden_gain[other]
    np.testing.assert_array_equal(a, b)


def test_drift_starts_with_the_emulator_and_grows_linearly():
    d = GainDrift(0.01, seed=3)
    ec = chmap.ids_of_kind("ecal")
    np.testing.assert_array_equal(d.factor(2e9), np.ones(chmap.N_CHANNELS))  # not started: no drift
    d.start(1000.0)
    f1, f2 = d.factor(1000.0 + 3600.0), d.factor(1000.0 + 7200.0)
    np.testing.assert_allclose(f2[ec] - 1, 2 * (f1[ec] - 1), rtol=1e-9)
    assert 0.005 < np.std(f1[ec] - 1) < 0.015  # RMS 1% per hour
    np.testing.assert_array_equal(np.delete(f1, ec), 1.0)
    np.testing.assert_array_equal(d.factor(500.0), np.ones(chmap.N_CHANNELS))  # nothing before t_ref


def test_injected_jump_applies_to_spills_from_then_on():
    d = GainDrift(0.0, seed=3)
    cid = chmap.by_name("ECAL1-2-3").id
    d.jump(cid, 1.03, t_unix=100.0)
    assert d.factor(99.0)[cid] == 1.0 and d.factor(100.0)[cid] == pytest.approx(1.03)
    assert d.factor(200.0)[chmap.by_name("ECAL1-2-4").id] == 1.0
    for bad in (float("nan"), 0.0, 50.0):
        with pytest.raises(ValueError, match="factor"):
            d.jump(cid, bad)
    with pytest.raises(ValueError, match="no ECAL"):
        d.jump(chmap.by_name("S1").id, 1.1)


def test_digitizer_amplitude_scale_follows_the_jump():
    cfg = load_config(None)
    dz = Digitizer(cfg, load_calibration(cfg))
    cid = chmap.by_name("ECAL0-1-1").id
    v = dz.nominal_vmon()
    before = dz.amplitude_scale(v, 1e9)[cid]
    dz.drift.jump(cid, 0.97, t_unix=1e9 + 1)
    assert dz.amplitude_scale(v, 1e9 + 2)[cid] == pytest.approx(0.97 * before)
    assert dz.amplitude_scale(v, 1e9)[cid] == before


def test_table_puts_the_beam_on_ecal_cells():
    tab = HCALTable(speed_mm_per_s=5000.0)
    drv = HCALTableDriver(HandlerTransport(tab.handle), poll_s=0.001)
    for x, y in ((0, 0), (5, 2), (3, 3)):
        pos = drv.move_to_cell(chmap.ecal_cell_name(x, y))
        cx, cy = ecal_cell_centre_mm(x, y)
        assert (pos.x_mm, pos.y_mm, pos.module, pos.cell) == (round(cx, 1), round(cy, 1), -1, f"ECAL-{x}-{y}")
    assert ecal_cell_centre_mm(0, 5) == pytest.approx((-3 * 38.2, 2 * 38.2))
    assert drv.home().cell == "PHYSICS"
    assert tab.handle("MOVE ECAL 6-0").startswith("ERR BAD CELL")
    assert tab.handle("MOVE ECAL 1-1-1").startswith("ERR BAD CELL")
    with pytest.raises(TableLimitError):
        drv.move_to_cell("ECAL-9-9")


def test_calibration_beam_on_an_ecal_cell_is_thinned_and_hits_that_cell():
    from sim_frontend.beam import generate_spill
    from sim_frontend.emulator import Emulator

    cfg = load_config(None).with_overrides({"beam": {"calibration_particles_per_spill": 500.0}})
    emu = Emulator.__new__(Emulator)  # only calibration_beam is used: no servers
    emu.cfg = cfg
    spill = generate_spill(cfg, 1, n_particles=2000)
    cx, cy = ecal_cell_centre_mm(1, 4)
    out = emu.calibration_beam(spill, {"x_mm": cx, "y_mm": cy, "module": -1, "cell": "ECAL-1-4"})
    assert out.truth.shape[0] == 500
    assert np.median(out.truth["x_mm"]) == pytest.approx(cx + cfg.beam.x_mm, abs=1.0)
    assert np.median(out.truth["y_mm"]) == pytest.approx(cy + cfg.beam.y_mm, abs=1.0)
    home = emu.calibration_beam(spill, {"x_mm": 0.0, "y_mm": 0.0, "module": -1, "cell": "PHYSICS"})
    assert home is spill
