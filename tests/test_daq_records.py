"""The DAQ's records under load and operator mistakes (issue 15): the event cap of a spill
(``daq.max_events_per_spill``) against the real emulator at high intensity, and a console that goes
away (a closed stdout pipe) while the DAQ records."""

from __future__ import annotations

import subprocess

import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    check_run,
    start_daq,
)
from emulator_fixture import deep_merge, start_emulator
from oracle import start_oracle
from short_cycle import SHORT_CYCLE

from detector.spillfile import read_spill, run_dir

pytestmark = pytest.mark.slow

CAP = 2000
#: 1e5 particles in a 0.5 s flat top, a spill every 1.5 s (the DAQ reads its capped spill within 0.2 s of the
#: flat top's end; the oracle holds every spill it checks, however late)
HIGH = deep_merge(
    DAQ_TEST_CONFIG,
    {
        "spill": {"length_s": 0.5, "supercycle_s": 1.5},
        "beam": {"particles_per_spill": 1e5},
        "daq": {"max_events_per_spill": CAP, "timeout_ms": 20000},
    },
)


def test_calibration_daq_at_high_intensity_reads_at_most_the_cap(tmp_path):
    """The beam trigger unprescaled on 1e5-particle spills accepts far more than the cap: each spill is
    read up to the cap, flagged truncated, its accounting keeps every accepted event, and the recorded
    events are exactly the first CAP of the independent oracle's."""
    with start_emulator(tmp_path, HIGH, ["--no-pty"]) as emu:
        out = tmp_path / "data"
        with start_oracle(emu.endpoints_path, emu.config_path, run_dir(out, 3), calibration_mode=True) as oracle:
            daq = start_daq(
                tmp_path, emu.config_path, emu.endpoints_path, out, run=3, spills=2, extra=["--calibration-mode"]
            )
            rc = daq.wait(300)
            assert rc == 0, daq.log()[-6000:]
            rec = check_run(daq.rdir, emu, oracle)  # includes the oracle's check of truncated spills
    assert rec["totals"]["spills"] == 2 and rec["totals"]["truncated_spills"] == 2
    for e in rec["spills"]:
        assert "truncated" in e["flags"] and e["max_events"] == CAP, e["flags"]
        assert e["n_seen"] == e["n_particles"] > 5e4
        assert e["n_accepted"] > 10 * CAP and e["n_read_out"] == e["n_recorded"] == CAP
        assert 10 * CAP < e["triggers"]["beam"]["accepted"] <= e["n_accepted"]  # and a few random triggers
        d = read_spill(daq.rdir / e["file"], waveforms=False)
        assert d.attrs["max_events"] == CAP and d.attrs["n_accepted"] == e["n_accepted"] and d.n_events == CAP
    assert rec["totals"]["events_accepted"] == sum(e["n_accepted"] for e in rec["spills"])
    assert rec["totals"]["events_recorded"] == 2 * CAP
    log = daq.log()
    assert f"{CAP:,} read (cap)" in log and "truncated" in log


def test_a_closed_stdout_never_stops_the_recording(tmp_path):
    """``na64-daq run ... | head -1``: the reader of stdout is gone before the first progress line; the
    DAQ records every spill it was asked for and exits 0."""
    with start_emulator(tmp_path, deep_merge(DAQ_TEST_CONFIG, SHORT_CYCLE), ["--no-pty"]) as emu:
        out = tmp_path / "data"
        daq = start_daq(tmp_path, emu.config_path, emu.endpoints_path, out, run=4, spills=3, stdout=subprocess.PIPE)
        daq.proc.stdout.close()  # the pipe's only reader: the DAQ's next write gets EPIPE
        rc = daq.wait(180)
        assert rc == 0, daq.log()[-6000:]
    rec = daq.record()
    assert rec["totals"]["spills"] == 3 and rec["totals"]["complete_spills"] == 3
    assert rec["sessions"][-1]["stop_reason"] == "stopped"
    log = daq.log()
    assert "console output failed (BrokenPipeError" in log and "Exception ignored" not in log
