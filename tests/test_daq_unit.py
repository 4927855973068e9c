"""Unit tests of the spill state machine and the na64-daq command line (no emulator)."""

from __future__ import annotations

import json

import pytest

from online import daq_cli
from online.recovery import ids_outside
from online.spill_state import TRANSITIONS, IllegalTransition, SpillStateMachine, State


def test_state_machine_follows_the_table_and_reports_changes():
    seen = []
    sm = SpillStateMachine(lambda old, new, msg: seen.append((old.value, new.value, msg)))
    assert sm.state is State.IDLE
    for st in (State.SPILL, State.END_OF_SPILL, State.READOUT, State.RECORDED, State.IDLE):
        sm.to(st, f"to {st.value}")
    sm.to(State.IDLE)  # re-entering is not a change
    assert [s[1] for s in seen] == ["SPILL", "END_OF_SPILL", "READOUT", "RECORDED", "IDLE"]
    with pytest.raises(IllegalTransition, match="IDLE -> READOUT"):
        sm.to(State.READOUT)
    sm.to(State.ERROR, "boom")
    assert sm.message == "boom" and seen[-1] == ("IDLE", "ERROR", "boom")
    sm.to(State.RECORDED)  # a flagged spill is still recorded
    assert set(TRANSITIONS) == set(State)
    assert all(State.ERROR in TRANSITIONS[s] for s in State if s is not State.ERROR)
    assert State.RECORDED not in TRANSITIONS[State.IDLE] and State.READOUT not in TRANSITIONS[State.SPILL]


def test_cli_bad_arguments_and_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        daq_cli.main(["run", "--out", str(tmp_path)])  # --endpoints-file missing
    assert ei.value.code == 2
    assert (
        daq_cli.main(
            ["run", "--endpoints-file", str(tmp_path / "none.json"), "--out", str(tmp_path), "--wait-endpoints", "0"]
        )
        == 2
    )
    assert "endpoints file not found" in capsys.readouterr().err
    bad = tmp_path / "ep.json"
    bad.write_text(json.dumps({"hv": "socket://127.0.0.1:1"}))
    assert daq_cli.main(["run", "--endpoints-file", str(bad), "--out", str(tmp_path)]) == 2
    assert "no 'msadc'" in capsys.readouterr().err
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[daq]\ntimeout_ms = -5\n")
    assert daq_cli.main(["run", "--config", str(cfg), "--endpoints-file", str(bad), "--out", str(tmp_path)]) == 2
    assert "daq.timeout_ms" in capsys.readouterr().err
    assert daq_cli.main(["run", "--endpoints-file", str(bad), "--out", str(tmp_path), "--spills", "0"]) == 2


def test_unreachable_crate_exits_1(tmp_path, capsys):
    ep = tmp_path / "ep.json"
    ep.write_text(json.dumps({"msadc": "TCPIP::127.0.0.1::1::SOCKET"}))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[daq]\ntimeout_ms = 200\n[beam]\nparticles_per_spill = 1000.0\n")
    rc = daq_cli.main(
        [
            "run",
            "--config",
            str(cfg),
            "--endpoints-file",
            str(ep),
            "--out",
            str(tmp_path / "d"),
            "--monitor",
            "tcp://127.0.0.1:*",
            "--no-hv",
            "--quiet",
        ]
    )
    assert rc == 1
    assert "cannot reach the MSADC crate" in capsys.readouterr().err


def test_event_buffers_recycle_whatever_their_sizes(tmp_path):
    """Found under load: with buffers of different sizes in the pool, list.remove compared numpy arrays
    with == and raised, which killed the monitoring thread (and hv-tune then saw no beam)."""
    from detector.config import load_calibration, load_config
    from online.daq import DAQ

    pool = DAQ(load_config(None), load_calibration(), {}, str(tmp_path), run=1).events
    bufs = [pool.take(n) for n in (5000, 300, 20000, 800)]
    for b in bufs:
        pool.release(b)
        pool.release(b)  # a second release of the same buffer is ignored
    assert [id(b) for b in pool._pool] == [id(bufs[0]), id(bufs[2])]  # the two largest are kept
    assert pool.take(10000) is bufs[2]
    assert pool.take(100) is bufs[0] and pool._pool == []


def test_the_lost_crate_spill_ids_are_those_outside_the_skipped_ranges():
    assert ids_outside(3, 9, []) == [3, 4, 5, 6, 7, 8, 9]
    assert ids_outside(3, 9, [(5, 6), (1, 3)]) == [4, 7, 8, 9]  # ranges in any order, overlapping the ends
    assert ids_outside(3, 9, [(2, 20)]) == []
    assert ids_outside(5, 4, []) == []
