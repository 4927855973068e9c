"""The recorder (online/recorder.py): run directory, restart, stale temporary files, accounting.

The kill test runs a real writer process and SIGKILLs it in the middle of writing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from detector.channels import N_CHANNELS, N_SAMPLES
from detector.runrecord import read_run_record
from detector.spillfile import SpillContent, SpillFileError, list_spills, read_spill, spill_path, write_spill
from online.recorder import RecorderError, RunRecorder, is_complete, next_run_number, reconcile

REPO = Path(__file__).resolve().parent.parent


def content(run: int, spill: int, n: int, seed: int = 0) -> SpillContent:
    rng = np.random.default_rng(seed)
    return SpillContent(
        run,
        spill,
        np.sort(rng.choice(10 * n + 10, n, replace=False)).astype(np.uint32),
        np.ones(n, np.uint8),
        np.sort(rng.uniform(0, 3e8, n)),
        rng.integers(0, 4095, (n, N_CHANNELS, N_SAMPLES)).astype(np.int16),
        None,
        {"crate_spill": 100 + spill, "start_unix": 1.0, "length_s": 0.3, "eot": 5 * n},
    )


def entry(n: int, crate: int, **kw) -> dict:
    e = {
        "crate_spill": crate,
        "n_particles": 10 * n + 10,
        "n_seen": 10 * n + 10,
        "n_accepted": n,
        "n_read_out": n,
        "n_recorded": n,
        "eot": 5 * n,
        "flags": [],
    }
    e.update(kw)
    return e


def test_fresh_run_and_restart_continue_numbering(tmp_path):
    r = RunRecorder(tmp_path, 7, config_toml="a = 1").open()
    assert r.next_spill == 1 and not r.restarted and r.rdir.name == "run-000007"
    for s in (1, 2):
        r.begin_spill(s, 100 + s)
        r.record_spill(content(7, s, 3 + s), entry(3 + s, 100 + s))
    r.close("done")
    rec = read_run_record(r.rdir)
    assert [e["spill"] for e in rec["spills"]] == [1, 2]
    assert rec["totals"]["events_recorded"] == 4 + 5 and rec["totals"]["complete_spills"] == 2
    assert rec["in_flight"] is None and rec["sessions"][0]["stop_reason"] == "done"

    r2 = RunRecorder(tmp_path, 7, config_toml="a = 2").open()
    assert r2.restarted and r2.next_spill == 3 and r2.interrupted is None
    assert r2.last_crate_spill == 102
    assert r2.session["config_changed"] is True
    r2.begin_spill(3, 103)
    r2.record_spill(content(7, 3, 2), entry(2, 103))
    r2.close()
    rec = read_run_record(r2.rdir)
    assert [e["spill"] for e in rec["spills"]] == [1, 2, 3] and len(rec["sessions"]) == 2
    assert [p.name for p in list_spills(r2.rdir)] == ["spill-000001.h5", "spill-000002.h5", "spill-000003.h5"]
    assert next_run_number(tmp_path) == 8
    assert next_run_number(tmp_path / "nothing") == 1


def test_run_directory_is_locked(tmp_path):
    r = RunRecorder(tmp_path, 1).open()
    with pytest.raises(RecorderError, match="in use by another na64-daq"):
        RunRecorder(tmp_path, 1).open()
    r.close()
    RunRecorder(tmp_path, 1).open().close()


def test_stale_temporary_files_and_interrupted_spill(tmp_path):
    r = RunRecorder(tmp_path, 3).open()
    r.begin_spill(1, 50)
    r.record_spill(content(3, 1, 2), entry(2, 50))
    r.begin_spill(2, 51)  # ... and the process dies while writing spill 2
    stale = r.rdir / ".spill-000002.h5.tmp-99999"
    stale.write_bytes(b"\x89HDF\r\n half a file")
    (r.rdir / ".run.json.tmp-99999").write_text("{")
    r._unlock()  # what the kernel does when the process dies

    r2 = RunRecorder(tmp_path, 3).open()
    assert not stale.exists() and not (r2.rdir / ".run.json.tmp-99999").exists()
    assert r2.interrupted is not None and r2.interrupted["spill"] == 2 and r2.interrupted["crate_spill"] == 51
    assert r2.interrupted["tmp_files"] == [".spill-000002.h5.tmp-99999"]
    assert sorted(r2.session["cleaned_tmp_files"]) == [".run.json.tmp-99999", ".spill-000002.h5.tmp-99999"]
    assert r2.next_spill == 3
    # the DAQ flags the interrupted spill (here: no longer in the crate)
    r2.record_empty(2, 51, ["spill_lost", "readout_incomplete"], "interrupted")
    r2.close()
    rec = read_run_record(r2.rdir)
    assert rec["in_flight"] is None
    assert [(e["spill"], e["flags"]) for e in rec["spills"]] == [(1, []), (2, ["spill_lost", "readout_incomplete"])]
    assert rec["totals"]["lost_spills"] == 1 and rec["totals"]["complete_spills"] == 1
    assert rec["sessions"][1]["interrupted"]["spill"] == 2
    assert read_spill(spill_path(r2.rdir, 2)).n_events == 0


def test_file_written_but_not_in_the_record_is_adopted(tmp_path):
    r = RunRecorder(tmp_path, 4).open()
    r.begin_spill(1, 10)
    c = content(4, 1, 3)
    c.attrs.update(n_particles=40, n_seen=40, n_accepted=3, n_read_out=3, flags=[], crate_spill=10)
    write_spill(r.rdir, c)  # renamed, then killed before the run record was updated
    r._unlock()
    r2 = RunRecorder(tmp_path, 4).open()
    assert r2.interrupted is None and r2.next_spill == 2
    assert r2.session["adopted_files"] == [1]
    e = r2.spills[0]
    assert (e["n_recorded"], e["crate_spill"], e["adopted"]) == (3, 10, True)
    assert r2.last_crate_spill == 10
    r2.close()


def test_corrupt_and_truncated_spill_files_name_the_file(tmp_path):
    r = RunRecorder(tmp_path, 5).open()
    r.record_spill(content(5, 1, 50), entry(50, 1))
    r.close()
    p = spill_path(r.rdir, 1)
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 3])
    with pytest.raises(SpillFileError, match=r"spill-000001\.h5"):
        read_spill(p)
    junk = r.rdir / "spill-000009.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(SpillFileError, match=r"spill-000009\.h5"):
        read_spill(junk)
    r2 = RunRecorder(tmp_path, 5).open()  # an unreadable unknown file is listed, never adopted
    assert r2.session["unreadable_files"][0]["file"] == "spill-000009.h5"
    assert r2.next_spill == 2
    r2.close()
    (r.rdir / "run.json").write_text("{broken")
    with pytest.raises(RecorderError, match=r"run\.json"):
        RunRecorder(tmp_path, 5).open()


def test_accounting_is_reconciled(tmp_path):
    assert reconcile(entry(5, 1)) == []
    bad = entry(5, 1, n_read_out=3, n_recorded=3)
    assert reconcile(bad) and "no flag says why" in reconcile(bad)[0]
    assert reconcile(entry(5, 1, n_read_out=3, n_recorded=3, flags=["timeout", "readout_incomplete"])) == []
    assert "impossible" in " ".join(reconcile(entry(5, 1, n_read_out=7)))
    assert "unknown flags" in reconcile(entry(5, 1, flags=["bogus"]))[0]
    assert is_complete(entry(5, 1, flags=["retried", "reconnected"]))
    assert not is_complete(entry(5, 1, flags=["truncated_block"]))

    r = RunRecorder(tmp_path, 6).open()
    # 5 accepted, only 3 recorded and nobody said why: the recorder adds readout_incomplete
    c = content(6, 1, 3)
    r.record_spill(c, entry(5, 1, n_read_out=3))
    e = r.spills[0]
    assert e["flags"] == ["readout_incomplete"] and e["n_recorded"] == 3
    data = read_spill(spill_path(r.rdir, 1), waveforms=False)
    assert data.attrs["n_accepted"] == 5 and data.attrs["n_read_out"] == 3 and data.attrs["n_recorded"] == 3
    assert data.flags == ["readout_incomplete"]
    r.record_spill(content(6, 2, 4), entry(4, 2, flags=["retried"]))
    t = r.totals
    assert t["events_accepted"] == 9 and t["events_recorded"] == 7 and t["events_not_recorded"] == 2
    assert t["complete_spills"] == 1 and t["flagged_spills"] == 2
    r.close()


WRITER = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    sys.path.insert(0, {repo!r})
    from detector.spillfile import SpillContent
    from online.recorder import RunRecorder
    pause_at, pause_spill = sys.argv[1], int(sys.argv[2])
    target = f"spill-{{pause_spill:06d}}.h5"
    real_replace = os.replace

    def replace(src, dst):           # the named pause points: block there until killed
        name = os.path.basename(os.fspath(dst))
        if name == target and pause_at == "before_rename":
            print("paused", flush=True)
            threading.Event().wait()
        real_replace(src, dst)
        if name == target and pause_at == "after_rename":
            print("paused", flush=True)
            threading.Event().wait()

    os.replace = replace
    r = RunRecorder({out!r}, 9).open()
    n = 3000
    rng = np.random.default_rng(1)
    wf = rng.integers(0, 4095, (n, 121, 32)).astype(np.int16)
    s = r.next_spill
    while True:
        r.begin_spill(s, 1000 + s)
        c = SpillContent(9, s, np.arange(n, dtype=np.uint32), np.ones(n, np.uint8), np.arange(n, dtype=float), wf,
                         None, {{"crate_spill": 1000 + s}})
        r.record_spill(c, {{"crate_spill": 1000 + s, "n_particles": n, "n_seen": n, "n_accepted": n,
                            "n_read_out": n, "flags": []}})
        s += 1
""")


def _kill_writer_at(script: Path, pause_at: str, spill: int) -> int:
    """Run the writer until it blocks at ``pause_at`` while recording ``spill``, then SIGKILL it;
    returns its pid."""
    proc = subprocess.Popen([sys.executable, str(script), pause_at, str(spill)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the writer reached the pause point (or died)
        assert line.strip() == "paused", f"the writer ended before {pause_at} of spill {spill}: {line!r}"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    return proc.pid


def _check_finished_spills(r: RunRecorder) -> list[int]:
    files = list_spills(r.rdir)
    numbers = [int(p.name[6:12]) for p in files]
    assert numbers == list(range(1, len(files) + 1))
    by_spill = {e["spill"]: e for e in r.spills}
    assert set(by_spill) == set(numbers)
    for p, n in zip(files, numbers):
        expected = 0 if "spill_lost" in by_spill[n]["flags"] else 3000
        assert read_spill(p, waveforms=False).n_events == by_spill[n]["n_recorded"] == expected
    assert all(reconcile(e) == [] for e in r.spills)
    return numbers


def test_kill_minus_9_while_writing_leaves_every_finished_spill_readable(tmp_path):
    """The writer is killed at two named points of recording a spill: with the spill file written but not
    yet renamed (the restart finds the spill interrupted and removes the temporary file), and with the
    file renamed but the run record not yet updated (the restart adopts the file)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), out=str(tmp_path)))

    pid = _kill_writer_at(script, "before_rename", 4)
    r = RunRecorder(tmp_path, 9).open()
    assert r.interrupted is not None and r.interrupted["spill"] == 4 and r.interrupted["crate_spill"] == 1004
    assert r.interrupted["tmp_files"] == [f".spill-000004.h5.tmp-{pid}"]
    assert f".spill-000004.h5.tmp-{pid}" in r.session["cleaned_tmp_files"]
    assert not [p for p in r.rdir.iterdir() if ".tmp-" in p.name]
    assert r.session["adopted_files"] == []
    assert _check_finished_spills(r) == [1, 2, 3]
    r.record_empty(4, 1004, ["spill_lost", "readout_incomplete"], "killed")
    r.close()

    _kill_writer_at(script, "after_rename", 7)
    r = RunRecorder(tmp_path, 9).open()
    assert r.interrupted is None
    assert r.session["adopted_files"] == [7]
    assert not [p for p in r.rdir.iterdir() if ".tmp-" in p.name]
    assert _check_finished_spills(r) == [1, 2, 3, 4, 5, 6, 7]
    assert r.spills[6]["adopted"] is True and r.next_spill == 8
    r.close()
    rec = read_run_record(r.rdir)
    assert len(rec["sessions"]) == 4  # two writers, two restarts by this test
    assert [e["spill"] for e in rec["spills"] if e["flags"]] == [4]
