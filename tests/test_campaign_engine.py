"""The campaign engine shared by hv-tune and ecal-calib (hv_control/campaign.py): journal, --resume mapping
check, SIGTERM at a safe point, the child DAQ's process group, the supply configured at start; and the
calibration DAQ's spill filter (online/calibration_filter.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from emulator_fixture import group_alive
from test_hv_tune_campaign import bench, campaign

from detector import channels as chmap
from hv_control.campaign import (
    CampaignPaused,
    MappingMismatch,
    signals_interrupt,
    start_daq,
    stop_daq,
    write_json_atomic,
)
from hv_control.tune import Campaign, cells_of_modules
from online.calibration_filter import CellFilter


def test_journal_records_the_mapping_and_resume_refuses_a_changed_one(tmp_path):
    cfg, _cal, _mf, _tab, hv, table, beam = bench(tmp_path)
    cells = cells_of_modules([1])[:2]
    campaign(tmp_path, cfg, hv, table, beam, cells).run()
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["tool"] == "hv-tune"
    assert data["mapping"]["0-0-1"]["channel_id"] == chmap.hcal_id(0, 0, 1)
    assert data["mapping"]["0-0-1"]["hv"] == [chmap.CHANNELS[chmap.hcal_id(0, 0, 1)].hv_board] + [
        chmap.CHANNELS[chmap.hcal_id(0, 0, 1)].hv_channel
    ]
    # a state file whose cell points at another channel (edited, or from another channel map) is refused
    data["cells"]["0-0-1"]["channel_id"] = chmap.hcal_id(1, 0, 1)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    states = Campaign.load_states(tmp_path / "bad.json")
    with pytest.raises(MappingMismatch, match="0-0-1"):
        campaign(tmp_path, cfg, hv, table, beam, cells, states=states)
    data["cells"]["0-0-1"]["channel_id"] = chmap.hcal_id(0, 0, 1)
    data["mapping"]["0-0-1"]["hv"] = [9, 9]
    (tmp_path / "bad2.json").write_text(json.dumps(data))
    with pytest.raises(MappingMismatch, match="refusing to resume"):
        Campaign.load_states(tmp_path / "bad2.json")
    with pytest.raises(ValueError, match="not a readable"):
        (tmp_path / "junk.json").write_text("[1, 2]")
        Campaign.load_states(tmp_path / "junk.json")


def test_the_supply_is_configured_once_at_start(tmp_path):
    cfg, cal, mf, _tab, hv, table, beam = bench(tmp_path)
    campaign(tmp_path, cfg, hv, table, beam, cells_of_modules([0])[:1]).run()
    log = mf.set_log()
    for par in ("MAXV", "RUP", "RDW", "ISET"):
        sets = [e for e in log if e["par"] == par and e["accepted"]]
        assert len(sets) == len(hv.channel_ids), par  # once per channel
    first_vset = min((i for i, e in enumerate(log) if e["par"] == "VSET"), default=len(log))
    assert max(i for i, e in enumerate(log) if e["par"] == "MAXV") < first_vset  # before any set point
    for e in log:
        if e["par"] == "MAXV":
            assert e["value"] <= min(cal.hv_limit[e["channel_id"]], cfg.hv.max_v) + 1e-9


def test_sigterm_waits_for_the_ramp_then_pauses_and_journals(tmp_path):
    cfg, _cal, mf, _tab, hv, table, beam = bench(tmp_path)
    cid = chmap.hcal_id(1, 1, 2)
    beam.a_ref[cid] = 1800.0  # needs a ramp
    holder: dict = {}
    real_set = hv.set_voltage

    def set_and_signal(channel, volts, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the ramp
        out = real_set(channel, volts, **kw)
        holder["after_ramp"] = mf.vmon_by_channel_id()[channel]
        return out

    hv.set_voltage = set_and_signal
    c = campaign(tmp_path, cfg, hv, table, beam, ["1-1-2", "2-1-2"])
    holder["c"] = c
    with signals_interrupt(lambda: holder.get("c")), pytest.raises(CampaignPaused, match="interrupted by SIGTERM"):
        c.run()
    st = json.loads((tmp_path / "state.json").read_text())["cells"]
    assert st["1-1-2"]["status"] == "paused" and st["1-1-2"]["iterations"] == 1  # the ramp was completed
    assert st["2-1-2"]["status"] == "pending"
    # the channel rests at the verified value the ramp reached (nothing left half-way)
    assert mf.vmon_by_channel_id()[cid] == pytest.approx(holder["after_ramp"], abs=cfg.hv.settle_tolerance_v)
    # the journal is complete JSON and resumable; the resumed campaign finishes
    hv.set_voltage = real_set
    c2 = campaign(
        tmp_path, cfg, hv, table, beam, ["1-1-2", "2-1-2"], states=Campaign.load_states(tmp_path / "state.json")
    )
    assert all(s.status == "done" for s in c2.run().values())


def test_a_signal_right_after_a_cell_is_journaled_done_keeps_it_done(tmp_path):
    """SIGTERM as the journal first shows a cell done (what an operator, or the live test, reacts to): the
    campaign pauses before the next cell and the finished cell stays done in the journal (it was journaled as
    paused, so that a resume tuned it again: 2 done cells found after 3 were seen)."""
    cfg, _cal, _mf, _tab, hv, table, beam = bench(tmp_path)
    holder: dict = {}

    def progress(what, st):
        if what == "cell_done":
            os.kill(os.getpid(), signal.SIGTERM)

    cells = ["1-1-2", "2-1-2", "0-1-2"]
    c = campaign(tmp_path, cfg, hv, table, beam, cells, progress=progress)
    holder["c"] = c
    with signals_interrupt(lambda: holder.get("c")), pytest.raises(CampaignPaused, match="interrupted by SIGTERM"):
        c.run()
    st = json.loads((tmp_path / "state.json").read_text())["cells"]
    assert [st[n]["status"] for n in cells] == ["done", "pending", "pending"]
    c2 = campaign(tmp_path, cfg, hv, table, beam, cells, states=Campaign.load_states(tmp_path / "state.json"))
    assert all(s.status == "done" for s in c2.run().values())


@contextlib.contextmanager
def sighup_disposition(handler):
    """SIGHUP set to ``handler`` for the block (a test run started under ``nohup`` inherits it ignored), the
    inherited disposition restored afterwards."""
    inherited = signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, inherited)


def test_signal_before_a_campaign_exists_raises_at_once():
    from hv_control.campaign import CampaignInterrupted

    with sighup_disposition(signal.SIG_DFL):
        with signals_interrupt(lambda: None), pytest.raises(CampaignInterrupted, match="SIGHUP"):
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # the previous handler is back


def test_a_sighup_ignored_at_start_stays_ignored_and_sigterm_still_interrupts():
    """Started under ``nohup`` (SIGHUP ignored), a campaign outlives its terminal: a hangup changes nothing,
    SIGTERM still stops it, and SIGHUP is ignored again afterwards."""
    from hv_control.campaign import CampaignInterrupted

    with sighup_disposition(signal.SIG_IGN):
        with signals_interrupt(lambda: None):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing is raised
            with pytest.raises(CampaignInterrupted, match="SIGTERM"):
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_stop_daq_stops_the_whole_process_group(tmp_path):
    # a stand-in DAQ that ignores SIGTERM and has a child of its own: both must be gone
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "time.sleep(600)'])\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = start_daq([sys.executable, "-c", script], tmp_path / "daq.log")
    deadline = time.monotonic() + 30
    while "up" not in (tmp_path / "daq.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    stop_daq(proc, timeout_s=1.0)
    assert proc.returncode is not None and time.monotonic() - t0 < 20
    deadline = time.monotonic() + 10
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, "a process of the DAQ's group survived"
        time.sleep(0.05)


def test_state_file_is_replaced_atomically(tmp_path):
    p = tmp_path / "s.json"
    write_json_atomic(p, {"a": 1})
    stop = threading.Event()
    seen = []

    def reader():
        while not stop.is_set():
            seen.append(json.loads(p.read_text())["a"])  # never a partial file

    th = threading.Thread(target=reader)
    th.start()
    for i in range(200):
        write_json_atomic(p, {"a": i, "pad": "x" * 5000})
    stop.set()
    th.join()
    assert seen and not list(tmp_path.glob("*.tmp"))


def test_cell_filter_reads_only_the_requested_cell(tmp_path):
    req = tmp_path / "req.json"
    f = CellFilter(req)
    on = {"table": {"cell": "0-2-3", "module": 3}}
    assert "requests no cell" in f.refuse(on)  # no request yet: nothing is read
    write_json_atomic(req, {"cell": "0-2-3"})
    assert f.refuse(on) is None
    assert "requests 0-2-3" in f.refuse({"table": {"cell": "PHYSICS", "module": -1}})
    assert "requests 0-2-3" in f.refuse({"table": {"cell": "NONE", "module": 3}})
    assert f.refuse({"table": "garbage"})
    assert f.refuse({})
    write_json_atomic(req, {"cell": None})
    assert f.refuse(on)
    req.write_text("{not json")
    assert f.refuse(on)
    write_json_atomic(req, {"cell": "ECAL-2-3"})
    assert f.refuse({"table": {"cell": "ECAL-2-3", "module": -1}}) is None


@pytest.mark.parametrize("argv_extra", [[], ["--stream", "tcp://127.0.0.1:1"]])
def test_hv_tune_resume_with_a_foreign_state_file_is_a_usage_error(tmp_path, argv_extra):
    ep = tmp_path / "ep.json"
    ep.write_text(json.dumps({"hv": "socket://127.0.0.1:1", "table": "socket://127.0.0.1:1"}))
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"version": 1, "tool": "ecal-calib", "cells": {}}))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hv_control.tune_cli",
            "--endpoints-file",
            str(ep),
            "--logbook",
            str(tmp_path / "l"),
            "--resume",
            str(state),
            *argv_extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "not hv-tune" in r.stderr, r.stderr
