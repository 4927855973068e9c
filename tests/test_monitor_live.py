"""The control-room monitor on a LIVE stream: na64-emulator + na64-daq as subprocesses, the monitor window
in this process (offscreen Qt) subscribed to the DAQ's real monitoring stream. Every view must fill with
what the DAQ published, and the screenshot of the whole window is written to tmp_path/monitor-live.png."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    free_port,
    start_daq,
)
from emulator_fixture import deep_merge, start_emulator
from short_cycle import SHORT_CYCLE

from online.monitor import model as M
from online.monitor import views as V
from online.monitor.synthetic import write_example_yields
from online.monitor.window import MonitorWindow


@pytest.mark.slow
def test_every_view_fills_from_a_live_emulator_and_daq_run(qtbot, qapp, tmp_path):
    V.apply_dark_theme(qapp)
    win = MonitorWindow(
        M.MonitorSettings(yields_file=write_example_yields(str(tmp_path / "yields.json")), stall_s=60.0)
    )
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    address = f"tcp://127.0.0.1:{free_port()}"
    try:
        with start_emulator(tmp_path, deep_merge(DAQ_TEST_CONFIG, SHORT_CYCLE), ["--no-pty"]) as emu:
            win.connect_stream(address)
            daq = start_daq(tmp_path, emu.config_path, emu.endpoints_path, tmp_path / "data", spills=4, monitor=address)
            m = win.model
            qtbot.waitUntil(
                lambda: (
                    win.tick(),
                    m.spill is not None and m.spill >= 3 and m.hv_ids.size > 0 and m.waveforms.shape[0] > 0,
                )[1],
                timeout=180_000,
            )
            assert daq.wait(120) == 0
            win.tick()
            # status and rates
            assert m.state in ("RECORDED", "IDLE", "SPILL", "READOUT", "END_OF_SPILL")
            assert len(m.history) >= 3 and m.eot_total > 0
            # maps: the beam is on the ECAL centre, the main section collects most of the energy
            main = win.maps.image_of("main")
            assert main.sum() > 0 and main.max() > 0.3 * main.sum() / 4
            assert win.maps.image_of("ps").sum() > 0
            assert sum(win.maps.image_of(f"hcal{k}").sum() for k in range(4)) > 0
            # E_ECAL vs E_HCAL, waveforms, HV (119 PMT channels read back by the DAQ), sensitivity
            assert win.ecal_hcal.entries > 0
            assert m.waveforms.shape[1:] == (121, 32)
            assert m.hv_ids.size == 119 and np.all(m.hv_vmon > 0)
            path = tmp_path / "monitor-live.png"
            assert win.screenshot(path)
            assert path.stat().st_size > 50_000
    finally:
        win.stop_sources()
