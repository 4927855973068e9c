"""Helpers of the na64-daq acceptance tests: run ``na64-daq`` as a subprocess next to an emulator
(tests/emulator_fixture.py), subscribe to its monitoring stream, read what it recorded."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from launcher import LaunchedProcess, fresh_processes, launch

from detector.framing import FramingError, recv_message
from detector.runrecord import read_run_record
from detector.spillfile import list_spills, read_spill, run_dir

REPO_ROOT = Path(__file__).resolve().parent.parent

#: compressed SPS cycle and small spills: quick, but several primitive chunks per spill
DAQ_TEST_CONFIG: dict[str, Any] = {
    "spill": {"length_s": 0.3, "supercycle_s": 0.8},
    "beam": {"particles_per_spill": 3e4, "calibration_particles_per_spill": 2e3},
    "emulator": {"spill_buffer": 6},
    "daq": {
        "timeout_ms": 1500,
        "retries": 2,
        "chunk_records": 8192,
        "heartbeat_s": 0.2,
        "spill_timeout_s": 10.0,
        "poll_interval_s": 0.02,
        "sample_waveforms": 4,
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DAQProcess:
    proc: subprocess.Popen | LaunchedProcess
    out: Path
    run: int
    log_path: Path

    @property
    def rdir(self) -> Path:
        return run_dir(self.out, self.run)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"na64-daq did not finish within {timeout_s} s\n--- daq log ---\n{self.log()[-6000:]}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def record(self) -> dict[str, Any]:
        return read_run_record(self.rdir)


_STARTED: list[subprocess.Popen | LaunchedProcess] = []
_KERNELS_READY = False


def ensure_kernels_cached() -> None:
    """The first ``na64-daq`` after a checkout compiles its numba kernels (about 90 s on 2 cores, longer
    next to a busy emulator) before it prints more than its first line. Do that once per test session,
    here and outside any DAQ timeout, so that a test's timeout measures the DAQ and not the compiler:
    every DAQ the tests start then loads the kernels from numba's cache in about a second."""
    global _KERNELS_READY
    if not _KERNELS_READY:
        from online.daq import prepare_kernels

        prepare_kernels()
        _KERNELS_READY = True


@pytest.fixture(autouse=True)
def _no_daq_left_behind():
    """Import this into a test module: every na64-daq a test started is killed at its end."""
    yield
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


def start_daq(
    tmp_path: Path,
    config_path: Path,
    endpoints_path: Path,
    out: Path,
    *,
    run: int = 1,
    spills: int | None = 3,
    monitor: str | None = None,
    extra: Sequence[str] = (),
    name: str = "daq",
    file_size_limit: int | None = None,
    stdout: Any = None,
    fresh: bool = False,
) -> DAQProcess:
    """Start ``python -m online.daq_cli run ...`` as a fork of the tests' warm server (tests/launcher.py), or
    as a new interpreter with ``fresh``, with a ``stdout``, or under ``NA64_TEST_FRESH_PROCESSES=1``.
    ``file_size_limit`` (bytes): RLIMIT_FSIZE of the DAQ process, so that writing a larger file fails
    with EFBIG as a full disk fails with ENOSPC (SIGXFSZ ignored: the write returns the error).
    ``stdout``: where the DAQ's stdout goes (default: the log, with stderr)."""
    args = [
        "run",
        "--config",
        str(config_path),
        "--endpoints-file",
        str(endpoints_path),
        "--out",
        str(out),
        "--run",
        str(run),
        "--monitor",
        monitor or f"tcp://127.0.0.1:{free_port()}",
        *extra,
    ]
    if spills is not None:
        args += ["--spills", str(spills)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    log_path = tmp_path / f"{name}.log"
    proc: subprocess.Popen | LaunchedProcess
    if not (fresh or stdout is not None or fresh_processes()):
        log_path.touch()
        proc = launch(
            "online.daq_cli",
            args,
            log_path=log_path,
            cwd=REPO_ROOT,
            env=env,
            file_size_limit=file_size_limit,
            new_session=False,  # as the Popen below: in the test's process group
        )
        _STARTED.append(proc)
        return DAQProcess(proc, out, run, log_path)
    ensure_kernels_cached()
    cmd = [sys.executable, "-m", "online.daq_cli", *args]

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=str(REPO_ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh if stdout is None else stdout,
            stderr=subprocess.STDOUT if stdout is None else fh,
            preexec_fn=limit_file_size if file_size_limit is not None else None,
        )
    _STARTED.append(proc)
    return DAQProcess(proc, out, run, log_path)


def wait_until(pred, timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll_s)
    raise AssertionError(f"timeout after {timeout_s} s waiting for {what}")


def spills_recorded(d: DAQProcess) -> int:
    try:
        return len(d.record()["spills"])
    except Exception:  # noqa: BLE001 - a run record not yet written, or caught mid-write: none recorded yet
        return 0


class Subscriber(threading.Thread):
    """Collects every monitoring message (topic, seq, meta, array shapes) until stopped."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.messages: list[Any] = []
        self.malformed: list[str] = []
        self._stop_evt = threading.Event()
        self.ready = threading.Event()  #: the socket is connecting (the publisher may not be bound yet)
        self.connected = threading.Event()  #: a message arrived: everything published from now on arrives

    def run(self) -> None:
        s = zmq.Context.instance().socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.setsockopt(zmq.RCVHWM, 100000)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 100)
        s.connect(self.address)
        self.ready.set()
        while not self._stop_evt.is_set():
            try:
                self.messages.append(recv_message(s))
                self.connected.set()
            except zmq.Again:
                continue
            except FramingError as exc:
                self.malformed.append(str(exc))
        s.close(0)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)

    def topics(self) -> set[str]:
        return {m.topic for m in self.messages}

    def of(self, topic: str) -> list[Any]:
        return [m for m in self.messages if m.topic == topic]


@contextlib.contextmanager
def first_spill_after_subscription(emu: Any, sub: Subscriber, timeout_s: float = 60.0) -> Iterator[None]:
    """Start the DAQ inside this block: its first ``PRIM:DATA?`` to the crate (the first command of its first
    spill; the oracle's are exempt) is held by the emulator's pause hook until ``sub`` has received a message
    (the DAQ's ``status`` heartbeat). A PUB socket drops what it sends before a subscriber is connected; with
    this handshake, every message of every spill of the run reaches ``sub``, however fast the DAQ started."""
    reply = emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "pause", "at": "PRIM:DATA?", "count": 1})
    assert reply.get("ok"), reply
    try:
        yield
        assert sub.connected.wait(timeout_s), f"no monitoring message within {timeout_s} s"
        emu.wait_for(
            lambda st: st["faults"]["msadc"]["pause"]["paused"] is not None, timeout_s, "the DAQ's first spill"
        )
    finally:
        reply = emu.control({"cmd": "fault", "endpoint": "msadc", "kind": "pause", "count": 0})
    assert reply.get("ok"), reply


def check_run(rdir: Path, emu: Any, oracle: Any) -> dict[str, Any]:
    """Every spill file readable and consistent with the run record; accounting reconciled; the
    emulator's truth agrees for every spill with particles; and every recorded spill agrees exactly with
    the independent oracle (tests/oracle.py: reference trigger and crate waveforms). Returns the run record."""
    from detector.records import INCOMPLETE_SPILL_FLAGS
    from online.recorder import reconcile

    rec = read_run_record(rdir)
    files = list_spills(rdir)
    assert not [p.name for p in rdir.iterdir() if ".tmp-" in p.name], "temporary files left behind"
    entries = {e["spill"]: e for e in rec["spills"]}
    assert sorted(entries) == [int(p.name[6:12]) for p in files], "run record and spill files disagree"
    assert rec["in_flight"] is None
    for p in files:
        d = read_spill(p)
        e = entries[d.attrs["spill"]]
        assert reconcile(e) == [], reconcile(e)
        assert d.n_events == e["n_recorded"] == d.attrs["n_recorded"]
        assert d.attrs["n_accepted"] == e["n_accepted"] and d.attrs["crate_spill"] == e["crate_spill"]
        assert sorted(d.flags) == sorted(e["flags"])
        complete = not (set(e["flags"]) & INCOMPLETE_SPILL_FLAGS)
        if complete:
            assert e["n_accepted"] == e["n_read_out"] == e["n_recorded"]
            assert e["n_seen"] == e["n_particles"]
        if d.n_events:
            assert (d.event_id[1:] > d.event_id[:-1]).all()
            assert d.trigger_mask.all()
            assert d.event_id.max() < e["n_particles"]
            if d.truth is not None:
                assert (d.truth["index"] == d.event_id).all()
        if e["n_particles"]:
            t = emu.control({"cmd": "truth", "spill": int(e["crate_spill"])})
            assert t.get("ok"), t
            assert t["particles"] == e["n_particles"]
    problems = oracle.check(rdir)
    assert not problems, "the run disagrees with the oracle:\n" + "\n".join(problems)
    return rec


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))
