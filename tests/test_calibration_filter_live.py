"""The calibration DAQ reads out only the spills taken with the table on the requested cell (issue 15
point 1): against the emulator, a real na64-daq in calibration mode with a request file. While the table
is at the physics position (the beam at full intensity there) the spills are recorded as
``skipped_off_cell`` with their accounting and no event; once the table is on the requested cell, they are
read out."""

from __future__ import annotations

from daq_helpers import _no_daq_left_behind, ensure_kernels_cached, spills_recorded, start_daq, wait_until  # noqa: F401
from emulator_fixture import start_emulator
from short_cycle import LED_IN_A_SHORT_GAP

from hv_control.campaign import write_json_atomic
from hv_control.table import HCALTableDriver

#: a spill every 0.5 s (0.3 s flat top, the LED pulses inside the 0.2 s gap): the DAQ skips a spill at home at
#: once and reads one of the calibration beam within 0.15 s of its flat top
CONFIG = {
    "spill": {"length_s": 0.3, "supercycle_s": 0.5},
    "beam": {"particles_per_spill": 3e4, "calibration_particles_per_spill": 1500.0},
    "emulator": {"table_speed_mm_per_s": 4000.0},
    "led": LED_IN_A_SHORT_GAP,
}


def test_only_spills_on_the_requested_cell_are_read_out(tmp_path):
    ensure_kernels_cached()
    req = tmp_path / "request.json"
    write_json_atomic(req, {"cell": "1-1-2"})
    with start_emulator(tmp_path, CONFIG) as emu:
        daq = start_daq(
            tmp_path,
            emu.config_path,
            emu.endpoints_path,
            tmp_path / "data",
            spills=None,
            extra=["--calibration-mode", "--calibration-request", str(req), "--no-hv"],
        )
        wait_until(lambda: spills_recorded(daq) >= 2 or daq.proc.poll() is not None, 180, "two spills at home")
        table = HCALTableDriver.connect(emu.table, timeout_s=5.0)
        try:
            table.move_to_cell("1-1-2")
            n_home = spills_recorded(daq)
            wait_until(lambda: spills_recorded(daq) >= n_home + 3 or daq.proc.poll() is not None, 180, "spills on cell")
            table.home()
        finally:
            table.close()
        daq.proc.terminate()
        assert daq.wait(60) == 0, daq.log()[-4000:]
        spills = daq.record()["spills"]
    skipped = [e for e in spills if "skipped_off_cell" in e["flags"]]
    read = [e for e in spills if "skipped_off_cell" not in e["flags"]]
    assert len(skipped) >= 2 and len(read) >= 1, [(e["spill"], e["flags"], e.get("table")) for e in spills]
    for e in skipped:  # accounting kept, nothing read
        assert e["n_particles"] > 0 and e["n_seen"] == 0 and e["n_accepted"] == 0 and e["n_recorded"] == 0
        assert e["table"]["cell"] != "1-1-2" and "not read out" in e["reason"]
    assert any(e["n_particles"] == 30000 and e["table"]["cell"] == "PHYSICS" for e in skipped)
    for e in read:  # on the requested cell: the calibration beam, read out completely
        assert e["n_particles"] == 1500 and e["n_recorded"] == e["n_accepted"] > 1000 and not e["flags"]
