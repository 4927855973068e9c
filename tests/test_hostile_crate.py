"""Acceptance (issue 15, point 2): the real ``na64-daq`` process against a hostile crate (tests/hostile_crate.py:
our MSADC SCPI over real TCP, replies rewritten by a script). NaN and a string in ``SPIL:INFO?``, counts of
1e12 and -1, an id jump to 1e9, a failing ``SPIL:LIST?`` and a crate restart with a new boot id: the DAQ never
crashes, exits or hangs, flags what it must (``crate_error`` with the reason), notes the jump once, takes no
listed spill for lost, reports the restart; every finished spill file is intact and reconciles, and every
recorded spill agrees with the independent oracle (tests/oracle.py, a read-only observer of the same crate).
A second DAQ on the same crate is refused with a clear message."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    spills_recorded,
    start_daq,
    wait_until,
)
from emulator_fixture import deep_merge, to_toml
from hostile_crate import HostileCrate
from oracle import start_oracle

from detector.runrecord import read_run_record
from detector.spillfile import list_spills, read_spill, run_dir
from online.recorder import reconcile

pytestmark = pytest.mark.slow

JUMP = 1_000_000_000
GOOD_INFO_KEYS = ("spill", "particles")


def info_with(spill: int, n: int, **bad: object) -> str:
    """A SPIL:INFO? reply of spill ``spill`` with ``bad`` fields spliced in as raw JSON text."""
    fields = {"spill": str(spill), "particles": str(n), "start_unix": "1.7e9", "length_s": "0.3"}
    fields.update({k: str(v) for k, v in bad.items()})
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


@pytest.fixture
def hostile():
    h = HostileCrate(buffer=4)
    yield h
    h.stop()


def setup_files(tmp_path: Path, resource: str, overrides: dict | None = None) -> tuple[Path, Path]:
    cfg = tmp_path / "daq.toml"
    cfg.write_text(to_toml(deep_merge(DAQ_TEST_CONFIG, overrides)), encoding="utf-8")
    ep = tmp_path / "endpoints.json"
    ep.write_text(json.dumps({"msadc": resource}))
    return cfg, ep


def test_daq_survives_a_hostile_crate(tmp_path, hostile):
    h = hostile
    n = h.n_records
    # the script, by crate spill id (the spills are fed below, one by one)
    h.on("SPILl:INFOrmation?", 2, info_with(2, n, start_unix="NaN"))
    h.on("SPILl:INFOrmation?", 3, info_with(3, n, length_s='"long"'))
    h.on("PRIMitives:COUNt?", 4, "1000000000000")
    h.on("PRIMitives:COUNt?", 5, "-1")
    h.on("SPILl:INFOrmation?", 6, info_with(6, n, scalers='{"S0": 1e400}'))  # JSON of +inf
    cfg_path, ep_path = setup_files(tmp_path, h.resource)
    out = tmp_path / "data"
    n_spills = 12
    h.complete(0)  # before the DAQ starts: a fresh DAQ takes the spills completing after it, from 1 on
    oracle = start_oracle(ep_path, cfg_path, run_dir(out, 1))
    daq = start_daq(tmp_path, cfg_path, ep_path, out, spills=n_spills, extra=["--no-hv"], name="daq-hostile")
    try:
        wait_until(lambda: "configured" in daq.log() or daq.proc.poll() is not None, 300, "the DAQ to configure")
        assert daq.proc.poll() is None, daq.log()[-4000:]
        q0 = h.crate.counters["queries"]  # the DAQ polls SPIL:STAT? and has seen spill 0 as the last one
        wait_until(lambda: h.crate.counters["queries"] > q0 + 10, 60, "the DAQ to poll the crate")

        def feed(spill_id: int, wait_recorded: int) -> None:
            h.complete(spill_id)
            wait_until(
                lambda: spills_recorded(daq) >= wait_recorded or daq.proc.poll() is not None,
                120,
                f"crate spill {spill_id} recorded",
            )
            assert daq.proc.poll() is None, f"na64-daq exited\n{daq.log()[-4000:]}"

        for k in range(1, 8):  # 1 good, 2..6 bad replies, 7 good
            feed(k, k)
        feed(JUMP, 8)  # the id jumps from 7 to 1e9: one gap note, no file per id
        h.on("SPILl:LIST?", None, "7,x,9", times=6)  # SPIL:LIST? fails 6 times in a row, then answers
        feed(JUMP + 1, 9)
        assert h.crate.rewritten.get("SPILl:LIST?") == 6
        h.server.faults.set("restart")  # the next DAQ command meets a rebooted crate (new boot id)
        wait_until(lambda: h.server.stats["restarts"] == 1, 60, "the restart fault to fire")
        feed(JUMP + 2, 10)
        feed(JUMP + 3, 11)
        feed(JUMP + 4, 12)
        assert daq.wait(120) == 0, daq.log()[-4000:]
        check_recorded(daq, h, n_spills)
        problems = oracle.check(daq.rdir)
        assert not problems, "\n".join(problems)
    finally:
        oracle.stop()
        daq.kill()


def check_recorded(daq, h: HostileCrate, n_spills: int) -> None:
    """What the DAQ recorded from the hostile crate (see the module docstring)."""
    rdir = daq.rdir
    rec = read_run_record(rdir)
    files = list_spills(rdir)
    assert len(files) == n_spills == len(rec["spills"]), [e["crate_spill"] for e in rec["spills"]]
    assert not [p.name for p in rdir.iterdir() if ".tmp-" in p.name]
    by_crate = {e["crate_spill"]: e for e in rec["spills"]}
    assert sorted(by_crate) == [1, 2, 3, 4, 5, 6, 7, JUMP, JUMP + 1, JUMP + 2, JUMP + 3, JUMP + 4]
    for p in files:
        d = read_spill(p)  # intact
        e = next(x for x in rec["spills"] if x["spill"] == d.attrs["spill"])
        assert reconcile(e) == [], reconcile(e)
        assert d.n_events == e["n_recorded"] and sorted(d.flags) == sorted(e["flags"])
        for k in ("start_unix", "length_s"):
            assert math.isfinite(float(e.get(k, 0.0)))
    for cs, needle in ((2, "NaN"), (3, "length_s"), (4, "1000000000000"), (5, "-1"), (6, "scalers.S0")):
        e = by_crate[cs]
        assert "crate_error" in e["flags"], (cs, e["flags"])
        assert any(needle in err for err in e["errors"]), (cs, e["errors"])
    for cs in (1, 7, JUMP, JUMP + 1, JUMP + 3, JUMP + 4):
        assert not by_crate[cs]["flags"] or by_crate[cs]["flags"] == ["retried"], (cs, by_crate[cs]["flags"])
        assert by_crate[cs]["n_recorded"] == by_crate[cs]["n_accepted"] > 0
    assert not any("spill_lost" in e["flags"] for e in rec["spills"])  # a failing list lost nothing
    gaps = rec.get("gaps", [])
    assert len(gaps) == 1 and (gaps[0]["crate_from"], gaps[0]["crate_to"]) == (8, JUMP - 1), gaps
    restarts = rec["crate"].get("restarts", [])
    assert len(restarts) == 1 and restarts[0]["to"] == h.crate.boot_id != restarts[0]["from"], restarts
    assert "the MSADC crate restarted" in daq.log()


#: how long the second DAQ asks the owned crate again before it gives up (default 10 s; the refusal is the same)
LOCK_WAIT_S = 1.0


def test_second_daq_on_the_crate_is_refused(tmp_path, hostile):
    cfg_path, ep_path = setup_files(tmp_path, hostile.resource, {"daq": {"lock_wait_s": LOCK_WAIT_S}})
    first = start_daq(tmp_path, cfg_path, ep_path, tmp_path / "a", spills=None, extra=["--no-hv"], name="daq-a")
    wait_until(lambda: hostile.crate.snapshot()["owner"] is not None, 300, "the first DAQ to take the crate")
    owner = hostile.crate.snapshot()["owner"]
    second = start_daq(tmp_path, cfg_path, ep_path, tmp_path / "b", spills=None, extra=["--no-hv"], name="daq-b")
    rc = second.wait(120)  # it gives up after its lock_wait_s
    assert rc == 1, second.log()[-3000:]
    assert f"owned by '{owner}'" in second.log() and "another DAQ" in second.log()
    assert not run_dir(tmp_path / "b", 1).exists()  # refused before anything was recorded
    assert first.proc.poll() is None and hostile.crate.snapshot()["owner"] == owner
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0
    wait_until(lambda: hostile.crate.snapshot()["owner"] is None, 30, "the lock given back at the end")
