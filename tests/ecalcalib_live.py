"""Run a real ecal-calib campaign: na64-emulator (subprocess, hidden ECAL gains spread +/-20%) + ecal-calib
(subprocess, which starts na64-daq in calibration mode itself). Shared by tests/test_ecal_calib_live.py and
bench/ecalcalib_bench.py."""

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

#: the ECAL calibration bench: a compressed cycle, the calibration beam at a few thousand particles per
#: spill, a fast table; the ECAL gains hidden with the default spread (+/-20%), no drift during the test
ECAL_BENCH = {
    "spill": {"length_s": 0.3, "supercycle_s": 1.0},
    "beam": {"particles_per_spill": 2e4, "calibration_particles_per_spill": 2500.0},
    "emulator": {"table_speed_mm_per_s": 4000.0, "ecal_gain_spread": 0.2, "ecal_drift_per_hour": 0.0},
}

#: the acceptance test's bench: the same hidden gains and cells, with a calibration spill large enough that
#: one spill gives the campaign's events per cell (2500 particles often fall just short: two spills per
#: visit), on a shorter SPS cycle (a 0.2 s flat top every 0.5 s: the readout of a spill and the table's move
#: to the next cell fit in the 0.3 s gap, so that every visit takes the next spill; the LED pulses inside
#: that gap, 0.02 s after the flat top, 50 pulses 2 ms apart); the statistics per cell (at least --events)
#: are the campaign's own
ECAL_TEST_BENCH = {
    **ECAL_BENCH,
    "spill": {"length_s": 0.2, "supercycle_s": 0.5},
    "beam": {"particles_per_spill": 2e4, "calibration_particles_per_spill": 3000.0},
    "led": LED_IN_A_SHORT_GAP,
}


def run_ecal_calib(
    tmp: pathlib.Path, extra: list[str] | None = None, timeout_s: float = 1500.0, bench: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Calibrate all 36 ECAL cells; returns wall time, exit code, report, the emulator's hidden gains and
    the config it ran with."""
    tmp.mkdir(parents=True, exist_ok=True)
    ensure_kernels_cached()
    with start_emulator(tmp, ECAL_BENCH if bench is None else bench) as emu:
        hidden = emu.control({"cmd": "gains"})["ecal"]
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                str(BIN / "ecal-calib"),
                "--config",
                str(emu.config_path),
                "--endpoints-file",
                str(emu.endpoints_path),
                "--out",
                str(tmp / "calibration-new.toml"),
                "--report",
                str(tmp / "REPORT.json"),
                "--daq-out",
                str(tmp / "daq"),
                *(extra or []),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        wall = time.monotonic() - t0
        table = emu.state()["table"]
    report = json.loads((tmp / "REPORT.json").read_text()) if (tmp / "REPORT.json").exists() else {}
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "report": report,
        "hidden_gains": hidden,
        "table_at_end": table,
        "config_path": emu.config_path,
        "tmp": tmp,
    }
