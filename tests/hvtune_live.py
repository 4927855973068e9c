"""Run a real hv-tune campaign: na64-emulator (subprocess) + hv-tune (subprocess, which starts na64-daq in
calibration mode itself). Shared by tests/test_hv_tune_live.py and bench/hvtune_bench.py."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from typing import Any

from daq_helpers import ensure_kernels_cached
from emulator_fixture import start_emulator
from short_cycle import LED_IN_A_SHORT_GAP

BIN = pathlib.Path(sys.executable).parent

#: the calibration bench: a compressed cycle, a low-intensity calibration beam, fast ramps and table
CALIBRATION_BENCH = {
    "spill": {"length_s": 0.3, "supercycle_s": 0.8},
    "beam": {"particles_per_spill": 2e4, "calibration_particles_per_spill": 2500.0},
    "emulator": {"hv_rup_v_per_s": 250.0, "hv_rdw_v_per_s": 250.0, "table_speed_mm_per_s": 4000.0},
    "hv": {"ramp_step_v": 50.0, "ramp_up_v_per_s": 250.0, "ramp_down_v_per_s": 250.0},
    "hv_tune": {"min_events": 800, "max_spills_per_point": 3},
}


#: the tests' bench: the calibration bench with the supply's fastest ramps (500 V/s, the upper bound of
#: hv.ramp_up_v_per_s), so that a one-step ramp adds less to a measurement's readout and fit before the
#: next spill, on a shorter SPS cycle: a 0.2 s flat top every 0.5 s (the campaign takes one spill per
#: measurement; the readout, the fit and the next HV step fit in the 0.3 s gap, so that a measurement
#: takes the next spill), with the LED pulses inside that gap (0.02 s after the flat top, 50 pulses 2 ms
#: apart). The hidden gains, the calibration beam (particles per spill) and the statistics per point are
#: the bench's
HVTUNE_TEST_BENCH = {
    **CALIBRATION_BENCH,
    "spill": {"length_s": 0.2, "supercycle_s": 0.5},
    "emulator": {**CALIBRATION_BENCH["emulator"], "hv_rup_v_per_s": 500.0, "hv_rdw_v_per_s": 500.0},
    "hv": {**CALIBRATION_BENCH["hv"], "ramp_up_v_per_s": 500.0, "ramp_down_v_per_s": 500.0},
    "led": LED_IN_A_SHORT_GAP,
}

#: the tests' bench at the emulator's full default intensity (5e6 particles per spill at the physics
#: position, where the table starts); only the cycle, the ramps, the table and the calibration beam are
#: the bench's
FULL_INTENSITY_BENCH = {**HVTUNE_TEST_BENCH, "beam": {"calibration_particles_per_spill": 2500.0}}


def hv_tune_command(tmp: pathlib.Path, emu: Any, modules: str, extra: list[str] | None = None) -> list[str]:
    return [
        str(BIN / "hv-tune"),
        "--config",
        str(emu.config_path),
        "--endpoints-file",
        str(emu.endpoints_path),
        "--modules",
        modules,
        "--target",
        "2500",
        "--tolerance",
        "0.02",
        "--max-iterations",
        "3",
        "--logbook",
        str(tmp / "logbook.txt"),
        "--daq-out",
        str(tmp / "daq"),
        "--measure-timeout",
        "120",
        *(extra or []),
    ]


def run_campaign(
    tmp: pathlib.Path,
    modules: str,
    extra: list[str] | None = None,
    timeout_s: float = 1200.0,
    bench: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tune ``modules`` (e.g. "0,1,2,3"); returns wall time, exit code, campaign states, the emulator's
    HV set log and the config the emulator ran with."""
    tmp.mkdir(parents=True, exist_ok=True)
    ensure_kernels_cached()  # hv-tune's own na64-daq then starts in seconds
    with start_emulator(tmp, CALIBRATION_BENCH if bench is None else bench) as emu:
        t0 = time.monotonic()
        proc = subprocess.run(
            hv_tune_command(tmp, emu, modules, extra), capture_output=True, text=True, timeout=timeout_s
        )
        wall = time.monotonic() - t0
        hv_log = emu.control({"cmd": "hv_log"})["log"]
        state = emu.control({"cmd": "state", "hv": True})
    campaign = json.loads((tmp / "logbook.txt.campaign.json").read_text())
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "campaign": campaign,
        "hv_log": hv_log,
        "emulator_state": state,
        "logbook": tmp / "logbook.txt",
        "config_path": emu.config_path,
    }
