"""Acceptance of hv-tune: the closed loop against the emulator (hidden HCAL gains spread +/-30%, hidden
gain-law exponents), through the real protocols: HV and table over serial sockets, amplitudes from a real
na64-daq (started by hv-tune in calibration mode) over ZeroMQ."""

import re

import numpy as np
import pytest
from hvtune_live import HVTUNE_TEST_BENCH, run_campaign

from detector import channels as chmap
from detector.config import load_calibration, load_config
from sim_frontend.digitizer import Digitizer

TOLERANCE = 0.02  #: the campaign's --tolerance


def assert_hv_programmed_first(hv_log: list[dict], config_path) -> None:
    """The emulator's HV log: hv-tune programmed MAXV, RUP/RDW, ISET and TRIP of every channel from its
    config before its first set point, every one accepted, MAXV never above a limit."""
    cfg = load_config(config_path)
    cal = load_calibration(cfg)
    ids = sorted(c.id for c in chmap.CHANNELS if c.hv_board is not None)
    first_vset = next(i for i, e in enumerate(hv_log) if e["par"] == "VSET")
    before = hv_log[:first_vset]
    want = {
        "RUP": cfg.hv.ramp_up_v_per_s,
        "RDW": cfg.hv.ramp_down_v_per_s,
        "ISET": cfg.hv.max_current_ua,
        "TRIP": cfg.hv.trip_s,
    }
    for par, value in want.items():
        got = {e["channel_id"]: e["value"] for e in before if e["par"] == par and e["accepted"]}
        assert sorted(got) == ids and set(got.values()) == {value}, par
    maxv = {e["channel_id"]: e["value"] for e in before if e["par"] == "MAXV" and e["accepted"]}
    assert sorted(maxv) == ids
    assert all(v == min(cal.hv_limit[c], cfg.hv.max_v) for c, v in maxv.items())


@pytest.mark.slow
def test_one_cell_programs_the_hv_first_and_converges(tmp_path):
    r = run_campaign(tmp_path, "0", extra=["--cells", "1-1-0"], bench=HVTUNE_TEST_BENCH)
    assert r["returncode"] == 0, r["stdout"][-3000:] + r["stderr"][-3000:]
    assert r["campaign"]["cells"]["1-1-0"]["status"] == "done"
    assert_hv_programmed_first(r["hv_log"], r["config_path"])


def check_against_hidden_gains(config_path, final_hv: dict[int, float]) -> None:
    """The converged HVs against the emulator's HIDDEN gains, rebuilt from its own config and seed (the
    same ``Digitizer`` it runs): the ADC counts per GeV of cell i at HV V are
    ``hidden_gain_i / gev_per_count_i * (V / hv_set_i) ** hidden_gamma_i``. Every cell sees the same
    calibration particle, so at the target amplitude every cell must have the same counts per GeV S; S itself
    (target / deposit peak) is the one number taken from the campaign (the median over the cells). Each cell's
    HV must then lie within the window its tolerance implies around the HV its hidden gain needs,
    V*_i = hv_set_i * (S / (hidden_gain_i / gev_per_count_i)) ** (1 / hidden_gamma_i): the exit rule's
    tolerance plus as much again for the statistical error of the campaign's last measurement."""
    cfg = load_config(config_path)
    digi = Digitizer(cfg, load_calibration(cfg))
    ids = np.array(sorted(final_hv))
    vmon = digi.nominal_vmon()
    vmon[ids] = [final_hv[c] for c in ids]
    per_gev = digi.amplitude_scale(vmon)[ids]
    s = float(np.median(per_gev))
    gain, gamma, hv_set = digi.hidden_gain[ids] / digi.gev_per_count[ids], digi.hidden_gamma[ids], digi.hv_set[ids]
    needed = hv_set * (s / gain) ** (1.0 / gamma)
    window = needed * ((1.0 + 2 * TOLERANCE) ** (1.0 / gamma) - 1.0)
    bad = {
        chmap.CHANNELS[c].name: (round(final_hv[c], 1), round(v, 1), round(w, 1))
        for c, v, w in zip(ids, needed, window)
        if abs(final_hv[c] - v) > w
    }
    assert not bad, f"final HV, needed HV, window (V): {bad}"
    # the check can fail: at the nominal HVs the hidden gains put most cells outside their windows
    untuned = digi.amplitude_scale(digi.nominal_vmon())[ids]
    assert np.sum(np.abs(untuned / np.median(untuned) - 1) > 2 * TOLERANCE) >= 20


@pytest.mark.slow
def test_all_36_hcal_cells_equalised_in_at_most_3_iterations(tmp_path):
    r = run_campaign(tmp_path, "0,1,2,3", bench=HVTUNE_TEST_BENCH)
    assert r["returncode"] == 0, r["stdout"][-3000:] + r["stderr"][-3000:]
    cells = r["campaign"]["cells"]
    assert len(cells) == 36
    for name, st in cells.items():
        last = st["points"][-1]
        assert st["status"] == "done", (name, st["message"])
        assert st["iterations"] <= 3, name
        assert abs(last["amp"] / 2500 - 1) < 0.02, name
    # the gains really were spread: several cells needed a change
    assert sum(st["iterations"] > 0 for st in cells.values()) >= 20
    # the logbook: one line per measurement, the last of each cell its verification at the final HV
    lines = [l for l in r["logbook"].read_text().splitlines() if not l.startswith("#")]
    assert len(lines) == sum(len(st["points"]) for st in cells.values())
    for name in cells:
        mine = [l for l in lines if l.startswith(name + " ")]
        m = re.match(rf"{name}\s+A=(\d+) HV=([\d.]+)", mine[-1])
        assert m and abs(int(m.group(1)) / 2500 - 1) < 0.02 + 1e-3
    # the emulator's own log: MAXV, RUP/RDW, ISET, TRIP programmed first; no set point beyond any limit, ever
    assert_hv_programmed_first(r["hv_log"], r["config_path"])
    cfg, cal = load_config(None), load_calibration()
    sets = [e for e in r["hv_log"] if e["par"] == "VSET" and e["accepted"]]
    assert sets, "hv-tune set no voltage"
    for e in sets:
        assert e["value"] <= min(cal.hv_limit[e["channel_id"]], cfg.hv.max_v), e
    # and the final voltages read back from the emulator match the campaign's verification points
    hv = {c["channel_id"]: c for c in r["emulator_state"]["hv"]["channels"]}
    for name, st in cells.items():
        x, y, m = chmap.parse_hcal_cell(name)
        assert abs(hv[chmap.hcal_id(x, y, m)]["vmon"] - st["points"][-1]["hv"]) < 2.0
    # and they are the HVs the emulator's hidden gains call for
    check_against_hidden_gains(
        r["config_path"],
        {
            chmap.hcal_id(*chmap.parse_hcal_cell(name)): hv[chmap.hcal_id(*chmap.parse_hcal_cell(name))]["vmon"]
            for name in cells
        },
    )
