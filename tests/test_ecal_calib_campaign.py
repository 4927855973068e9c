"""The ecal-calib campaign logic (hv_control/ecal_calib.py) in process: the emulator's table model, a beam
source of simulated showers with hidden ECAL gains; a beam loss pauses it, --resume continues without
collecting the finished cells again, the new calibration file is written once and every cell verifies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_ecal_solve import showers  # noqa: F401  (fixture)

from detector import channels as chmap
from detector.config import load_calibration
from hv_control.campaign import BeamLossError, CampaignPaused
from hv_control.ecal_calib import EcalCalibration, all_ecal_cells
from hv_control.table import HCALTableDriver
from hv_control.transport import HandlerTransport
from sim_frontend.emu_table import HCALTable


class ShowerBeam:
    """Per-event ECAL amplitudes (counts) of the cell under the beam: the simulated deposits x hidden gain /
    nominal constant, with noise; ``fail_at``: the call that reports a beam loss."""

    def __init__(self, table, cells, c_nom, gain, fail_at=None):
        self.table, self.c_nom, self.gain = table, c_nom, gain
        self.by_cell = {chmap.ecal_cell_name(x, y): d for (x, y), d in cells}
        self.rng = np.random.default_rng(9)
        self.calls, self.fail_at = 0, fail_at

    def collect_events(self, ids, cell, since, min_events, max_spills, timeout_s):
        self.calls += 1
        if self.calls == self.fail_at:
            raise BeamLossError(f"beam loss on {cell}")
        assert self.table.position()["cell"] == cell, "the beam is not on the cell being measured"
        d = self.by_cell[cell]
        a = d * self.gain / self.c_nom + self.rng.normal(0.0, 2.0, d.shape)
        a[a < 5.0] = 0.0
        return a[(a > 0).any(axis=1)]


def test_pause_resume_and_verification(tmp_path, showers):  # noqa: F811
    cfg, cells, _ = showers
    cal = load_calibration(cfg)
    c_nom = cal.gev_per_count[: chmap.N_ECAL].astype(np.float64)
    gain = np.random.default_rng(4).uniform(0.8, 1.2, chmap.N_ECAL)
    tab = HCALTable(cfg, speed_mm_per_s=1e4)
    table = HCALTableDriver(HandlerTransport(tab.handle), poll_s=0.001)
    beam = ShowerBeam(tab, cells, c_nom, gain, fail_at=10)

    def make(states=None, solution=None):
        return EcalCalibration(
            table=table, source=beam, cfg=cfg, calibration=cal, cells=all_ecal_cells(), out=tmp_path / "new.toml",
            logbook=tmp_path / "log.txt", state_path=tmp_path / "state.json", events_per_cell=500,
            run="test", states=states, solution=solution, request_path=tmp_path / "request.json",
        )  # fmt: skip

    with pytest.raises(CampaignPaused, match=r"beam loss.*--resume"):
        make().run()
    journal = json.loads((tmp_path / "state.json").read_text())
    statuses = [journal["cells"][c]["status"] for c in all_ecal_cells()]
    assert statuses[:9] == ["collected"] * 9 and statuses[9] == "paused" and not (tmp_path / "new.toml").exists()
    assert json.loads((tmp_path / "request.json").read_text())["cell"] == all_ecal_cells()[9]

    states, solution = EcalCalibration.load(tmp_path / "state.json")
    calls = beam.calls
    out = make(states, solution).run()
    assert beam.calls - calls == 36 - 9 + 36  # the 9 collected cells were not collected again
    assert all(s.status == "done" for s in out.values())
    for s in out.values():
        assert abs(s.verification["peak_gev"] / 100.0 - 1) < 0.01, (s.cell, s.verification)
    new = load_calibration(path=tmp_path / "new.toml")
    inner = [chmap.ecal_id(1, x, y) for x in range(1, 5) for y in range(1, 5)]
    np.testing.assert_allclose(new.gev_per_count[inner], c_nom[inner] / gain[inner], rtol=0.04)
    assert len((tmp_path / "new.toml.changes.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "request.json").read_text())["cell"] is None  # no cell wanted any more
    assert table.position().cell == "ECAL-5-5"  # the CLI's session homes the table, not the campaign
