"""DAQ benchmark: the full spill loop of ``na64-daq`` against ``na64-emulator`` on this machine.

For each intensity of the scan an emulator (external feed) and ``na64-daq`` run as subprocesses; the
beam feed (``python -m sim_frontend.feed``) pushes one spill at a time and the bench waits until the DAQ
recorded it, so the emulator's spill generation never overlaps the DAQ's work and is not counted. The DAQ
time of a spill is what the DAQ itself measures, from the moment it sees the spill complete to the spill
file and run record written (run record ``spills[i].timing.total_s``).

Baseline measured in the same run: the memory-bandwidth roofline, numpy ``max`` over as many bytes as
the spill's trigger primitives.

Prints one JSON line:
  {"particles_per_spill", "seconds_per_spill", "ratio_to_spill_4p8", "ratio_to_supercycle_14p4",
   "transfer_gb_per_s", "baseline_roofline_gb_per_s", "highest_intensity_without_loss", ...}

Options: ``--particles 5e6 --spills 2 --scan 1e6,2e6,5e6,1e7`` (``--scan ''`` skips the scan).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.runrecord import read_run_record  # noqa: E402
from detector.spillfile import SpillFileError, run_dir  # noqa: E402

SPILL_S = 4.8
SUPERCYCLE_S = 14.4


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _config(path: Path, particles: float, seed: int | None = None) -> None:
    path.write_text(f"""
[spill]
length_s = {SPILL_S}
supercycle_s = {SUPERCYCLE_S}
[beam]
particles_per_spill = {float(particles)!r}
{"" if seed is None else f"seed = {int(seed)}"}
[emulator]
spill_buffer = 2
[daq]
timeout_ms = 120000
spill_timeout_s = 3600.0
sample_waveforms = 8
""")


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL) if proc.pid else None
            proc.wait(10)


def _wait(pred, timeout: float, what: str, procs: list[subprocess.Popen], poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{what}: process {p.args[2] if len(p.args) > 2 else p.args} exited with {p.returncode}"
                )
        time.sleep(poll)
    raise RuntimeError(f"timeout after {timeout} s waiting for {what}")


def _record(rdir: Path) -> dict[str, Any] | None:
    try:
        return read_run_record(rdir)
    except SpillFileError:  # not written yet
        return None


def run_point(
    particles: float,
    spills: int,
    work: Path,
    timeout_per_spill: float,
    seed: int | None = None,
    on_spill: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """One intensity: emulator + DAQ, ``spills`` spills pushed one by one; the DAQ's own timings. The run is
    ``work/data/run-000001``; ``seed``: the beam's (``beam.seed``); ``on_spill(recorded, spills)`` after each."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "bench.toml"
    _config(cfg, particles, seed)
    ep = work / "endpoints.json"
    out = work / "data"
    env = _env()
    with contextlib.ExitStack() as stack:  # the log files, closed after the processes stopped
        logs = {n: stack.enter_context(open(work / f"{n}.log", "wb")) for n in ("emulator", "daq", "feed")}
        emu = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sim_frontend.cli",
                "--config",
                str(cfg),
                "--endpoints-file",
                str(ep),
                "--external-feed",
                "--no-pty",
                "--log-level",
                "WARNING",
            ],
            cwd=REPO,
            env=env,
            stdout=logs["emulator"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        daq = None
        try:
            _wait(ep.exists, 120, "emulator endpoints", [emu])
            endpoints = json.loads(ep.read_text())
            daq = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "online.daq_cli",
                    "run",
                    "--config",
                    str(cfg),
                    "--endpoints-file",
                    str(ep),
                    "--out",
                    str(out),
                    "--run",
                    "1",
                    "--spills",
                    str(spills),
                    "--monitor",
                    "tcp://127.0.0.1:*",
                    "--log-level",
                    "WARNING",
                ],
                cwd=REPO,
                env=env,
                stdout=logs["daq"],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            rdir = run_dir(out, 1)
            _wait(lambda: (r := _record(rdir)) is not None and "crate" in r, 600, "DAQ ready", [emu, daq])
            time.sleep(1.0)
            for k in range(spills):
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "sim_frontend.feed",
                        "--config",
                        str(cfg),
                        "--endpoint",
                        endpoints["feed"],
                        "--spills",
                        "1",
                        "--first-spill",
                        str(k + 1),
                        "--fast",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=logs["feed"],
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=timeout_per_spill,
                )
                _wait(
                    lambda k=k: (r := _record(rdir)) is not None and len(r["spills"]) >= k + 1,
                    timeout_per_spill,
                    f"spill {k + 1} recorded",
                    [emu, daq],
                )
                if on_spill is not None:
                    on_spill(k + 1, spills)
            daq.wait(timeout_per_spill)
            rec = read_run_record(rdir)
        finally:
            if daq is not None:
                _stop(daq)
            _stop(emu)
    sp = rec["spills"]
    t = [e.get("timing", {}) for e in sp]
    prim_bytes = sum(x.get("primitive_bytes", 0.0) for x in t)
    ev_bytes = sum(x.get("event_bytes", 0.0) for x in t)
    xfer_s = sum(x.get("primitives_s", 0.0) + x.get("events_s", 0.0) for x in t)
    total = [x.get("total_s", float("nan")) for x in t]
    return {
        "particles": float(particles),
        "spills": len(sp),
        "seconds_per_spill": float(np.mean(total)),
        "seconds": total,
        "flags": [e["flags"] for e in sp],
        "accepted": [e["n_accepted"] for e in sp],
        "recorded": [e["n_recorded"] for e in sp],
        "transfer_gb_per_s": (prim_bytes + ev_bytes) / xfer_s / 1e9 if xfer_s > 0 else float("nan"),
        "primitive_gb_per_s": prim_bytes / sum(x.get("primitives_s", 0.0) for x in t) / 1e9 if prim_bytes else 0.0,
        "trigger_s": [round(x.get("trigger_s", 0.0), 3) for x in t],
        "trigger_wait_s": [round(x.get("trigger_wait_s", 0.0), 3) for x in t],
        "events_s": [round(x.get("events_s", 0.0), 3) for x in t],
        "record_s": [round(x.get("record_s", 0.0), 3) for x in t],
        "primitive_bytes_per_spill": prim_bytes / max(len(sp), 1),
    }


def roofline(nbytes: float) -> float:
    """GB/s of numpy ``max`` over ``nbytes`` of int16 (touched first; best of 3)."""
    a = np.ones(int(nbytes) // 2, dtype=np.int16)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a.max()
        best = min(best, time.perf_counter() - t)
    del a
    return nbytes / best / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=float, default=5e6)
    ap.add_argument("--spills", type=int, default=2)
    ap.add_argument("--scan", default="1e6,2e6,5e6,1e7", help="intensities of the loss scan ('' = none)")
    ap.add_argument("--timeout-per-spill", type=float, default=900.0)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="daq_bench_"))
    points: dict[float, dict[str, Any]] = {}
    main_pt = run_point(args.particles, args.spills, work / f"p{args.particles:g}", args.timeout_per_spill)
    points[args.particles] = main_pt
    base = roofline(main_pt["primitive_bytes_per_spill"])
    scan = [float(x) for x in args.scan.split(",") if x.strip()]
    kept: list[float] = []
    for p in scan:
        if p not in points:
            try:
                points[p] = run_point(p, 1, work / f"p{p:g}", args.timeout_per_spill)
            except Exception as exc:  # noqa: BLE001 - a point that cannot run, for whatever reason, did not keep up
                points[p] = {"particles": p, "error": str(exc)}
        pt = points[p]
        ok = (
            "error" not in pt
            and pt["seconds_per_spill"] <= SUPERCYCLE_S
            and not any(pt["flags"])
            and pt["accepted"] == pt["recorded"]
        )
        pt["kept_up"] = ok
        if ok:
            kept.append(p)
    s = main_pt["seconds_per_spill"]
    result = {
        "particles_per_spill": args.particles,
        "seconds_per_spill": round(s, 3),
        "ratio_to_spill_4p8": round(s / SPILL_S, 3),
        "ratio_to_supercycle_14p4": round(s / SUPERCYCLE_S, 3),
        "transfer_gb_per_s": round(main_pt["transfer_gb_per_s"], 3),
        "baseline_roofline_gb_per_s": round(base, 3),
        "highest_intensity_without_loss": max(kept) if kept else 0.0,
        "transfer_to_roofline": round(main_pt["transfer_gb_per_s"] / base, 3),
        "primitive_transfer_gb_per_s": round(main_pt["primitive_gb_per_s"], 3),
        "spills_measured": main_pt["spills"],
        "per_spill_seconds": [round(x, 3) for x in main_pt["seconds"]],
        "trigger_s": main_pt["trigger_s"],
        "trigger_wait_s": main_pt["trigger_wait_s"],
        "events_s": main_pt["events_s"],
        "record_s": main_pt["record_s"],
        "accepted": main_pt["accepted"],
        "flags": main_pt["flags"],
        "scan": {
            f"{p:g}": (
                {"seconds_per_spill": round(pt["seconds_per_spill"], 3), "kept_up": pt["kept_up"], "flags": pt["flags"]}
                if "error" not in pt
                else {"error": pt["error"][:200], "kept_up": False}
            )
            for p, pt in sorted(points.items())
            if p in scan
        },
        "goal_seconds": SUPERCYCLE_S,
        "stretch_seconds": SPILL_S,
    }
    print(json.dumps(result))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
