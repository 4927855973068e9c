"""tests/launcher.py starts the emulators and DAQs of the suite as forks of a warm server: each launched program
must be a process of its own, as ``subprocess.Popen(start_new_session=True)`` would start it, and must find the
programs' modules and kernels loaded (tests/launched_probe.py reports what it finds)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time

import pytest
from launcher import launch


def _launch(tmp_path, mode: str, **kw):
    report = tmp_path / "report.json"
    env = {**os.environ, "NA64_PROBE": "seen"}
    proc = launch("launched_probe", [str(report), mode], log_path=tmp_path / "probe.log", cwd=tmp_path, env=env, **kw)
    return proc, report


def test_a_launched_program_is_a_process_of_its_own_with_its_kernels_loaded(tmp_path):
    proc, report = _launch(tmp_path, "3")
    assert proc.wait(120) == 3 and proc.returncode == 3 and proc.poll() == 3
    facts = json.loads(report.read_text())
    assert facts["pid"] == proc.pid != os.getpid()
    assert facts["sid"] == facts["pgid"] == proc.pid  # its own session and process group
    assert facts["cwd"] == str(tmp_path) and facts["probe_env"] == "seen"
    assert facts["argv"] == ["launched_probe", str(report), "3"]
    assert facts["stdin"] == os.devnull
    assert facts["preload"] == "ok", facts["preload"]
    assert facts["daq_loaded"] and not facts["numba_threads_started"]
    log = (tmp_path / "probe.log").read_text()
    assert "to stdout" in log and "to stderr" in log and "atexit ran" in log


def test_without_a_new_session_it_stays_in_the_callers_process_group(tmp_path):
    proc, report = _launch(tmp_path, "0", new_session=False)
    assert proc.wait(120) == 0
    facts = json.loads(report.read_text())
    assert facts["pgid"] == os.getpgid(0) and facts["sid"] == os.getsid(0)


def test_an_exception_exits_1_with_its_traceback_in_the_log(tmp_path):
    proc, _ = _launch(tmp_path, "raise")
    assert proc.wait(120) == 1
    log = (tmp_path / "probe.log").read_text()
    assert "RuntimeError: the probe fails" in log and "atexit ran" in log


def test_signals_reach_it_and_its_death_reads_as_minus_signum(tmp_path):
    proc, report = _launch(tmp_path, "sleep")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)  # it sleeps until signalled
    t_end = time.monotonic() + 120
    while not report.exists() and time.monotonic() < t_end:
        time.sleep(0.05)
    assert report.exists()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(120) == -signal.SIGTERM
    proc.send_signal(signal.SIGKILL)  # a finished process: nothing is sent


def test_the_file_size_limit_applies(tmp_path):
    proc, report = _launch(tmp_path, "big-file", file_size_limit=50_000)
    assert proc.wait(120) == 0
    assert json.loads(report.read_text())["big_file"] == errno.EFBIG
