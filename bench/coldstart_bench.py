#!/usr/bin/env python3
"""Cold start: seconds until the numba kernels are ready, on an empty numba cache and then on the cache
the first run filled, each in a fresh process (as ``na64-daq`` and ``na64-emulator`` start).

The groups, timed in this order in one process: ``daq`` (what ``na64-daq`` prepares before it reads its
first spill, :func:`online.daq.prepare_kernels`, for the default config's menu: the time it logs as
"kernels ready in X s"; its steps ``trigger`` and ``reconstruction`` in ``daq_steps_wall_s``),
``emulator`` (the emulator's spill chain, :meth:`sim_frontend.emulator.Emulator.warm_up`) and, with
``--all``, ``trigger_rest`` (the trigger kernels the DAQ does not call: the amplitude entry of the offline
re-trigger; the parallel path runs the serial kernels on threads). Wall seconds and CPU seconds of the process
(``time.process_time``: on a busy machine the CPU figure is the one to compare) per group.

Prints one JSON line: ``cold`` and ``warm`` (per group ``[wall_s, cpu_s]``), ``daq_cold_s`` (the DAQ's
"kernels ready" on an empty cache; goal <= 30 s), ``daq_warm_s`` (goal < 5 s), the same for the emulator, and
``specialisations`` (compiled signatures per kernel of the project's packages, after the cold run; more than
one is a compile paid more than once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.jitcache import MARK  # noqa: E402

GOAL_DAQ_COLD_S = 30.0
GOAL_DAQ_WARM_S = 5.0


def _child(groups: list[str]) -> dict[str, Any]:
    """Time the groups in this process (the parent gives it the numba cache directory)."""
    out: dict[str, Any] = {}

    def timed(name: str, fn) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn()
        out[name] = [round(time.perf_counter() - w, 2), round(time.process_time() - c, 2)]

    w0, c0 = time.perf_counter(), time.process_time()
    from detector.config import load_config
    from online.daq import prepare_kernels
    from trigger.menu import TriggerMenu

    out["import"] = [round(time.perf_counter() - w0, 2), round(time.process_time() - c0, 2)]
    menu = TriggerMenu.from_config(load_config(None))
    if "daq" in groups:
        steps: dict[str, float] = {}
        timed("daq", lambda: prepare_kernels(menu, timings=steps))
        out["daq_steps_wall_s"] = {k: round(v, 2) for k, v in steps.items()}
    if "emulator" in groups:
        from sim_frontend.emulator import Emulator

        timed("emulator", lambda: Emulator(load_config(None), pty=False).warm_up())
    if "all" in groups:
        from trigger.kernels import warm_up

        timed("trigger_rest", lambda: warm_up(menu, amplitude=True))
    out["specialisations"] = _specialisations()
    return out


def _specialisations() -> dict[str, int]:
    """Compiled signatures per numba dispatcher of the project's packages (in memory, this process)."""
    import gc

    from numba.core.dispatcher import Dispatcher

    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, Dispatcher):
            mod = getattr(obj.py_func, "__module__", "")
            if mod.split(".")[0] in ("detector", "trigger", "sim_frontend") and obj.signatures:
                counts[f"{mod}.{obj.py_func.__name__}"] = len(obj.signatures)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _run(cache: Path, groups: list[str], timeout: float) -> dict[str, Any]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(REPO))
    env.pop(MARK, None)  # NUMBA_CACHE_DIR is ours, not the checkout's (detector.jitcache)
    w = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", ",".join(groups)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = round(time.perf_counter() - w, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-emulator", action="store_true", help="time the DAQ's kernels only")
    ap.add_argument("--all", action="store_true", help="also the trigger kernels the DAQ does not use here")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child.split(","))))
        return 0
    groups = ["daq"] + ([] if args.no_emulator else ["emulator"]) + (["all"] if args.all else [])
    with tempfile.TemporaryDirectory(prefix="coldstart_numba_") as tmp:
        cold = _run(Path(tmp), groups, args.timeout)
        warm = _run(Path(tmp), groups, args.timeout)
    spec = cold.pop("specialisations")
    warm.pop("specialisations")

    result = {
        "daq_cold_s": cold["daq"][0],
        "daq_cold_cpu_s": cold["daq"][1],
        "daq_warm_s": warm["daq"][0],
        "goal_daq_cold_s": GOAL_DAQ_COLD_S,
        "goal_daq_warm_s": GOAL_DAQ_WARM_S,
        "emulator_cold_s": cold.get("emulator", [None])[0],
        "emulator_cold_cpu_s": cold.get("emulator", [None, None])[1],
        "emulator_warm_s": warm.get("emulator", [None])[0],
        "cold": cold,
        "warm": warm,
        "specialisations": spec,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
