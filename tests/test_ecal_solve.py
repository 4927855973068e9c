"""The ECAL constants solver (hv_control/ecal_solve.py) on simulated beam-electron showers with hidden gains,
and the calibration file writer (hv_control/calib_file.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector import channels as chmap
from detector.config import load_calibration, load_config
from hv_control.calib_file import write_calibration
from hv_control.ecal_solve import solve_constants
from hv_control.peak import fit_core
from sim_frontend.beam import E_MINUS, generate_spill
from sim_frontend.emu_table import ecal_cell_centre_mm
from sim_frontend.response import apply_response, channel_deposits


@pytest.fixture(scope="module")
def showers():
    """Per ECAL cell: the 72 ECAL deposits (GeV) of 800 beam particles aimed at its centre (through the beam
    line), and per cell which particles are beam electrons that brought at least 95% of their energy into
    the ECAL (the peak; the others radiated in the beam line, are hadrons or muons)."""
    cfg = load_config(None)
    out, full = [], []
    for i, (x, y) in enumerate((x, y) for y in range(6) for x in range(6)):
        sp = generate_spill(cfg, 100 + i, n_particles=800)
        cx, cy = ecal_cell_centre_mm(x, y)
        sp.truth["x_mm"] += np.float32(cx)
        sp.truth["y_mm"] += np.float32(cy)
        dep = apply_response(sp, cfg)
        out.append(((x, y), channel_deposits(sp, dep, np.arange(sp.n))[:, : chmap.N_ECAL].astype(np.float64)))
        full.append((sp.truth["ptype"] == E_MINUS) & (sp.beamline.e_front > 0.95 * sp.truth["e_beam"]))
    return cfg, out, full


def test_constants_bring_every_cell_to_the_beam_energy(showers):
    cfg, cells, full = showers
    c_nom = load_calibration(cfg).gev_per_count[: chmap.N_ECAL].astype(np.float64)
    rng = np.random.default_rng(5)
    gain = rng.uniform(0.8, 1.2, chmap.N_ECAL)
    blocks, n_full = [], 0
    for (_, d), f in zip(cells, full):
        a = d * gain / c_nom + rng.normal(0.0, 2.0, d.shape)  # ADC counts with noise
        a[a < 5.0] = 0.0
        hit = (a > 0).any(axis=1)
        blocks.append(a[hit])
        n_full += int(np.count_nonzero(f[hit]))
    before = [fit_core(b @ c_nom).mean / 100.0 - 1 for b in blocks]
    assert max(abs(d) for d in before) > 0.05  # the hidden gains are visible before
    sol = solve_constants(blocks, c_nom, 100.0)
    # the selection keeps the beam-electron peak: about the electrons that brought their energy into the ECAL
    assert sol.solved.all() and abs(sol.kept / n_full - 1) < 0.05, (sol.kept, n_full, sol.total)
    after = [fit_core(b @ sol.c).mean / 100.0 - 1 for b in blocks]
    assert max(abs(d) for d in after) < 0.01, np.round(np.array(after) * 100, 2)
    # inside the matrix (no lateral leakage) the main-section constants are the true ones
    for (x, y), _ in cells:
        if 0 < x < 5 and 0 < y < 5:
            i = chmap.ecal_id(1, x, y)
            assert sol.c[i] == pytest.approx(c_nom[i] / gain[i], rel=0.04), (x, y)


def test_bad_input_is_refused(showers):
    c = np.full(chmap.N_ECAL, 0.03)
    with pytest.raises(ValueError, match="shape"):
        solve_constants([np.ones((10, 72))], c[:10], 100.0)
    with pytest.raises(ValueError, match="too few"):
        solve_constants([np.ones((10, 72))], c, 100.0)


def test_new_calibration_file_keeps_the_old_and_records_the_change(tmp_path):
    old = load_calibration()
    out = tmp_path / "cal.toml"
    rec = write_calibration(old, out, {"ECAL0-0-0": 0.0061, "ECAL1-3-3": 0.0312}, tool="ecal-calib", run="r1")
    new = load_calibration(path=out)
    assert new.gev_per_count[chmap.by_name("ECAL0-0-0").id] == pytest.approx(0.0061)
    assert new.gev_per_count[chmap.by_name("ECAL1-3-3").id] == pytest.approx(0.0312)
    untouched = np.setdiff1d(
        np.arange(chmap.N_CHANNELS), [chmap.by_name("ECAL0-0-0").id, chmap.by_name("ECAL1-3-3").id]
    )
    np.testing.assert_array_equal(new.gev_per_count[untouched], old.gev_per_count[untouched])
    assert rec["constants"]["ECAL0-0-0"] == {"old": pytest.approx(0.005), "new": 0.0061}
    # writing over it keeps the previous file and appends the change
    write_calibration(new, out, {"ECAL0-0-0": 0.007}, tool="ecal-calib", run="r2")
    kept = list(tmp_path.glob("cal.toml.*.old"))
    assert len(kept) == 1 and load_calibration(path=kept[0]).gev_per_count[chmap.by_name("ECAL0-0-0").id] == 0.0061
    lines = [json.loads(s) for s in (tmp_path / "cal.toml.changes.jsonl").read_text().splitlines()]
    assert [r["run"] for r in lines] == ["r1", "r2"] and all(r["date"] for r in lines)
