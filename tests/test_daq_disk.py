"""A full disk or a failing write never costs a recorded spill and never crashes the DAQ (issue 5, "bad
input ... nothing already recorded is lost"): the spill that cannot be written is flagged with the
reason and the accounting, the crate keeps its copy, the run stops with a clear message and exit
status 1, and a restarted ``na64-daq`` continues the run.

The failing write is real: the DAQ process runs with RLIMIT_FSIZE below the size of a spill file, so the
kernel refuses the write (EFBIG) exactly where a full disk refuses it (ENOSPC)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap

import pytest
from daq_helpers import (
    DAQ_TEST_CONFIG,
    _no_daq_left_behind,  # noqa: F401  (autouse fixture)
    check_run,
    start_daq,
    wait_until,
)
from emulator_fixture import REPO_ROOT, deep_merge, start_emulator
from oracle import start_oracle
from short_cycle import SHORT_CYCLE

from detector.config import dump_toml, load_config
from detector.spillfile import list_spills, read_spill, run_dir
from online.recorder import RecorderError, RunRecorder

pytestmark = pytest.mark.slow

#: A DAQ restarted after the last one stopped continues with the crate spill after the last one recorded,
#: which must not leave the crate's ring before it is read: on a timed cycle it did (6 spills of a 0.8 s
#: cycle; 16 spills, 12.8 s, at load 8, when a restart took longer: flagged spill_lost, correctly, but not
#: what these tests test); and the spill a DAQ could not write must still be in the crate when the next DAQ
#: starts. So the feed is stalled from a DAQ's exit until the next one is ready (:func:`_restart`): nothing
#: leaves the ring meanwhile however long the restart takes, and the cycle is the tests' short one
#: (tests/short_cycle.py), the ring its largest (16 spills)
RESTART_CONFIG = deep_merge(
    DAQ_TEST_CONFIG,
    {**SHORT_CYCLE, "emulator": {"spill_buffer": 16}},
)


@pytest.fixture
def private_disk(tmp_path):
    """A filesystem of this test's own (a 512 MB tmpfs), so that its free space changes only with what this
    test writes: on the shared disk, other tests and processes writing meanwhile moved the free space by
    more than the test's margin. Mounting needs root (as in CI); elsewhere the shared disk is used, with its
    margins, and a warning says so."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512m,mode=0700", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        import warnings

        warnings.warn(
            "cannot mount a private tmpfs (needs root): the disk-reserve test runs on the shared disk, "
            "where other writers can move the free space by more than its margin",
            stacklevel=1,
        )
    try:
        yield disk
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stall_feed(emu) -> None:
    """No new spill enters the crate (so none leaves its ring) until the stall is cleared."""
    reply = emu.control({"cmd": "fault", "endpoint": "feed", "kind": "stall", "seconds": 3600})
    assert reply.get("ok"), reply


def _restart(tmp_path, emu, config_path, out, *, run: int, spills: int, name: str, **kw):
    """Start the next na64-daq of ``run`` while the feed is stalled (the caller stalled it when the previous
    DAQ stopped), and let the spills come again once it is ready (its crate configured) or gone."""
    daq = start_daq(tmp_path, config_path, emu.endpoints_path, out, run=run, spills=spills, name=name, **kw)
    wait_until(lambda: "configured; run" in daq.log() or daq.proc.poll() is not None, 120, f"{name} ready")
    emu.control({"cmd": "clear_faults"})
    return daq


def _record_two_spills(tmp_path, emu, run: int, out=None):
    """A first na64-daq records spills 1 and 2 of ``run`` (into ``out``, default ``tmp_path/data``), then the
    feed is stalled for the next DAQ (:func:`_restart`); returns it, its spill files and their digests."""
    first = start_daq(
        tmp_path, emu.config_path, emu.endpoints_path, out or tmp_path / "data", run=run, spills=2, name="daq1"
    )
    assert first.wait(120) == 0, first.log()[-4000:]
    _stall_feed(emu)
    files = list_spills(first.rdir)
    return first, files, {p.name: _digest(p) for p in files}


def test_a_spill_that_cannot_be_written_is_flagged_and_the_run_stops_cleanly(tmp_path):
    with (
        start_emulator(tmp_path, RESTART_CONFIG, ["--no-pty"]) as emu,
        start_oracle(emu.endpoints_path, emu.config_path, run_dir(tmp_path / "data", 5)) as oracle,
    ):
        out = tmp_path / "data"
        first, files, digests = _record_two_spills(tmp_path, emu, run=5)
        smallest = min(p.stat().st_size for p in files)
        record_size = (first.rdir / "run.json").stat().st_size
        limit = smallest // 2
        assert record_size * 4 < limit, "the run record must still be writable under the limit"

        # the same run, continued by a DAQ whose spill files cannot be written
        second = _restart(tmp_path, emu, emu.config_path, out, run=5, spills=3, name="daq2", file_size_limit=limit)
        # from the failed write on, the feed is stalled (the crate takes no new spill) until the restarted DAQ
        # below has recovered the flagged spill: the crate must still hold it however long the exit, the checks
        # and the next start-up (its kernels included) take on a loaded machine
        wait_until(
            lambda: "File too large" in second.log() or second.proc.poll() is not None, 120, "daq2's failed write"
        )
        emu.control({"cmd": "fault", "endpoint": "feed", "kind": "stall", "seconds": 3600})
        rc = second.wait(120)
        log = second.log()
        assert rc == 1, f"exit status {rc} (a segfault is -11)\n{log[-4000:]}"
        assert "accepted events NOT recorded" in log and "File too large" in log and "--run 5" in log
        assert "Traceback" not in log and "Segmentation fault" not in log

        rec = check_run(first.rdir, emu, oracle)  # files and record agree, no temporary file left behind
        assert {p.name: _digest(p) for p in files} == digests, "a finished spill file changed"
        bad = rec["spills"][-1]
        assert bad["spill"] == 3 and bad["flags"][0] == "write_failed"
        assert bad["n_accepted"] > 0 and bad["n_recorded"] == 0 and bad["n_read_out"] == bad["n_accepted"]
        assert "accepted events not recorded" in bad["reason"]
        assert rec["sessions"][-1]["stop_reason"] == "disk_full"
        assert read_spill(first.rdir / "spill-000003.h5").flags[0] == "write_failed"

        # room again: a restarted DAQ first recovers the flagged spill from the crate's buffer (a new spill,
        # the flagged entry stays as it was), then continues the run
        third = start_daq(tmp_path, emu.config_path, emu.endpoints_path, out, run=5, spills=2, name="daq3")
        wait_until(lambda: "recovering spill 3" in third.log() or third.proc.poll() is not None, 300, "daq3's recovery")
        emu.control({"cmd": "clear_faults"})  # the feed again: daq3 records one more spill
        assert third.wait(120) == 0, third.log()[-4000:]
        assert "recovering spill 3 (write_failed) from the crate's buffer as spill 4" in third.log()
        rec = check_run(first.rdir, emu, oracle)
        assert [e["spill"] for e in rec["spills"]] == [1, 2, 3, 4, 5]
        assert rec["spills"][2] == bad  # the flagged entry is never rewritten
        again = rec["spills"][3]
        assert again["recovers"] == 3 and again["flags"] == ["retried"] and again["crate_spill"] == bad["crate_spill"]
        assert again["n_accepted"] == again["n_recorded"] == bad["n_accepted"] and again["eot"] == bad["eot"]
        assert rec["spills"][4]["flags"] == [] and rec["spills"][4]["crate_spill"] > bad["crate_spill"]
        assert rec["totals"]["complete_spills"] == 4 and rec["totals"]["events_not_recorded"] == bad["n_accepted"]


def test_the_daq_refuses_to_start_without_its_disk_reserve(tmp_path):
    with start_emulator(tmp_path, DAQ_TEST_CONFIG, ["--no-pty"]) as emu:
        cfg = load_config(emu.config_path).with_overrides({"daq": {"min_free_mb": 1e8}})  # 100 TB kept free
        big = tmp_path / "reserve.toml"
        big.write_text(dump_toml(cfg), encoding="utf-8")
        d = start_daq(tmp_path, big, emu.endpoints_path, tmp_path / "data", run=1, spills=1)
        assert d.wait(60) == 1
        assert "not enough disk to record run 1" in d.log() and "daq.min_free_mb keeps 100,000,000 MB" in d.log()
        assert not list_spills(d.rdir)


def test_space_problem_measures_the_real_filesystem(tmp_path):
    rec = RunRecorder(tmp_path, 1, min_free_bytes=0)
    rec.rdir.mkdir(parents=True)
    free = rec.free_bytes()
    assert free > 0
    assert rec.space_problem(0) is None
    problem = rec.space_problem(free + 10**9)
    assert problem is not None and "the spill needs about" in problem
    rec.min_free_bytes = free + 10**12
    with pytest.raises(RecorderError, match="not enough disk"):
        rec.open()


def test_a_failed_spill_write_leaves_hdf5_usable_and_nothing_behind(tmp_path):
    """libhdf5 segfaults at the next call (or at exit) after a write error inside an open file; the spill
    writer never lets it see one. Run in a child: RLIMIT_FSIZE is per process."""
    script = textwrap.dedent(f"""
        import errno, os, resource, signal, sys
        import numpy as np
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from detector.spillfile import SpillContent, SpillFileStream, SpillWriteError, read_spill, write_spill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        def content(spill, n):
            w = np.random.default_rng(spill).integers(0, 4000, (n, 121, 32)).astype(np.int16)
            return SpillContent(1, spill, np.arange(n, dtype=np.uint32), np.ones(n, np.uint8), np.zeros(n), w,
                                None, {{"crate_spill": spill, "start_unix": 0.0, "length_s": 1.0, "eot": 0}})
        d = sys.argv[1]
        write_spill(d, content(1, 100))
        try:
            write_spill(d, content(2, 2000))
            raise SystemExit("the oversized write did not fail")
        except SpillWriteError as e:
            assert e.errno == errno.EFBIG and "spill 2 not written" in str(e), e
        write_spill(d, content(3, 50))
        big = content(4, 2000)  # streamed from the writer thread, as the DAQ does: the error comes at finish
        stream = SpillFileStream(d, 4, 2000, threaded=True)
        for first in range(0, 2000, 500):
            stream.put(first, big.waveforms[first : first + 500])
        try:
            stream.finish(big)
            raise SystemExit("the oversized stream did not fail")
        except SpillWriteError as e:
            assert e.errno == errno.EFBIG and "spill 4 not written" in str(e), e
        write_spill(d, content(5, 20))
        print(sorted(os.listdir(d)), read_spill(os.path.join(d, "spill-000003.h5")).n_events)
    """)
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["['spill-000001.h5',", "'spill-000003.h5',", "'spill-000005.h5']", "50"]


def test_the_run_stops_before_a_spill_that_would_not_fit(tmp_path, private_disk):
    """The disk reserve ``daq.min_free_mb`` set so that one more spill fits but not two: the DAQ records it,
    sees that the next one would eat into the reserve, and stops before anything is lost (exit status 1);
    a restarted DAQ with room again continues the run. The beam trigger prescaled by 40 instead of 1000
    makes spill files of ~8 MB (at the test intensity, which the compressed cycle sustains): margins of
    megabytes on either side for what else writes to the filesystem meanwhile."""
    cfg = deep_merge(RESTART_CONFIG, {"trigger": {"menu": {"beam": {"prescale": 40}}}})
    with (
        start_emulator(tmp_path, cfg, ["--no-pty"]) as emu,
        start_oracle(emu.endpoints_path, emu.config_path, run_dir(private_disk / "data", 7)) as oracle,
    ):
        out = private_disk / "data"
        first, files, digests = _record_two_spills(tmp_path, emu, run=7, out=out)
        size = sum(p.stat().st_size for p in files) / len(files)
        assert size > 3e6, f"spill files of {size:,.0f} B: too small for the margins of this test"

        # keep free all but 1.5 spills: the next spill (size + 1 MB estimated) fits, two would not
        free = shutil.disk_usage(first.rdir).free
        reserve = load_config(emu.config_path).with_overrides({"daq": {"min_free_mb": (free - 1.5 * size) / 1e6}})
        tight = tmp_path / "tight.toml"
        tight.write_text(dump_toml(reserve), encoding="utf-8")
        second = _restart(tmp_path, emu, tight, out, run=7, spills=5, name="daq2")
        rc = second.wait(120)
        _stall_feed(emu)
        log = second.log()
        assert rc == 1, f"exit status {rc}\n{log[-4000:]}"
        assert "the next spill may not fit" in log and "nothing lost" in log and "--run 7" in log, log[-4000:]
        assert "Traceback" not in log

        rec = check_run(first.rdir, emu, oracle)
        assert [e["spill"] for e in rec["spills"]] == [1, 2, 3]
        assert all(e["flags"] == [] and e["n_recorded"] == e["n_accepted"] > 0 for e in rec["spills"])
        assert rec["sessions"][-1]["stop_reason"] == "disk_full"
        assert {p.name: _digest(p) for p in files} == digests, "a finished spill file changed"

        third = _restart(tmp_path, emu, emu.config_path, out, run=7, spills=1, name="daq3")
        assert third.wait(120) == 0, third.log()[-4000:]
        rec = check_run(first.rdir, emu, oracle)
        assert [e["spill"] for e in rec["spills"]] == [1, 2, 3, 4] and rec["spills"][-1]["flags"] == []
