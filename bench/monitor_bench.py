"""Benchmark of the na64-monitor update path on offscreen Qt (1920x1080 window, every view live).

Cases (one JSON line each):

- ``repaint_empty``  baseline measured in the same run: one repaint-timer ``tick()`` with nothing new
  (no view changes) followed by ``processEvents()`` (Qt paints what was invalidated: nothing);
- ``full_window_paint``  second baseline: ``window.grab()``, which paints every widget of the window once;
- ``repaint_spill``  one synthetic spill of every topic (status, scalers, calo, ecal_hcal, waveforms,
  amplitudes, hv, log) handed to the inbox, then ``tick()`` (drain, model, alarms, setData/setImage of
  every view) and ``processEvents()`` (Qt paints every invalidated view); goal: median <= 50 ms; ratios to
  both baselines printed;
- ``update_only``    the ``tick()`` part of ``repaint_spill`` alone (model + item updates, no painting);
- ``memory``         RSS (psutil) after spill 100 and after spill 1000 of a synthetic run, each spill
  ticked and painted through the event loop; goal: growth within 10%.

Usage: ``QT_QPA_PLATFORM=offscreen python bench/monitor_bench.py [--spills 1000] [--repeats 60]``
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import argparse
import gc
import json
import sys
import tempfile
import time

import numpy as np
import psutil


def _stats(samples_s: list[float], cpu_s: list[float] | None = None) -> dict[str, float]:
    """Wall-clock median and p95 (ms); with ``cpu_s`` also the process CPU time, which is what the
    monitor costs when the 2 shared cores are busy with other work (wall time then includes waiting)."""
    a = np.asarray(samples_s) * 1e3
    out = {
        "median_ms": round(float(np.median(a)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "n": int(a.size),
    }
    if cpu_s is not None:
        c = np.asarray(cpu_s) * 1e3
        out.update(cpu_median_ms=round(float(np.median(c)), 3), cpu_p95_ms=round(float(np.percentile(c, 95)), 3))
    return out


class _Timer:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> _Timer:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.process_time() - self._c)

    def stats(self) -> dict[str, float]:
        return _stats(self.wall, self.cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spills", type=int, default=1000, help="spills of the memory case (default %(default)s)")
    p.add_argument("--repeats", type=int, default=60, help="timed repaints per case (default %(default)s)")
    args = p.parse_args(argv)

    from PyQt5 import QtWidgets

    from online.monitor import model as M
    from online.monitor.synthetic import SyntheticDAQ, write_example_yields
    from online.monitor.views import apply_dark_theme
    from online.monitor.window import MonitorWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    apply_dark_theme(app)
    tmp = tempfile.mkdtemp(prefix="monitor-bench-")
    yields = write_example_yields(os.path.join(tmp, "yields.json"))
    win = MonitorWindow(M.MonitorSettings(yields_file=yields))
    win.resize(1920, 1080)
    win.show()
    app.processEvents()
    daq = SyntheticDAQ(seed=42)
    # warm-up: fill every view and let Qt settle the layout
    for _ in range(5):
        for m in daq.spill_messages():
            win.inbox.put(m)
        win.tick()
        win.repaint()
        app.processEvents()
    common = {
        "bench": "monitor",
        "window": [win.width(), win.height()],
        "platform": os.environ["QT_QPA_PLATFORM"],
        "cpus": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }

    t_empty = _Timer()
    for _ in range(args.repeats):
        with t_empty:
            win.tick()
            app.processEvents()
    e = t_empty.stats()
    print(json.dumps({**common, "case": "repaint_empty", **e}), flush=True)
    t_grab = _Timer()
    for _ in range(max(5, args.repeats // 4)):
        with t_grab:
            win.grab()
    g = t_grab.stats()
    print(json.dumps({**common, "case": "full_window_paint", **g}), flush=True)

    batches = [daq.spill_messages() for _ in range(args.repeats)]
    t_full = _Timer()
    for batch in batches:
        for m in batch:
            win.inbox.put(m)
        with t_full:
            win.tick()
            app.processEvents()
    f = t_full.stats()
    print(
        json.dumps(
            {
                **common,
                "case": "repaint_spill",
                **f,
                "ratio_to_empty": round(f["median_ms"] / e["median_ms"], 1),
                "ratio_to_full_window_paint": round(f["median_ms"] / g["median_ms"], 2),
                "goal_ms": 50.0,
                "ok_wall": f["median_ms"] <= 50.0,
                "ok_cpu": f["cpu_median_ms"] <= 50.0,
                "messages_per_spill": len(batches[0]),
            }
        ),
        flush=True,
    )

    batches = [daq.spill_messages() for _ in range(args.repeats)]
    t_upd = _Timer()
    for batch in batches:
        for m in batch:
            win.inbox.put(m)
        with t_upd:
            win.tick()
        app.processEvents()
    u = t_upd.stats()
    print(
        json.dumps({**common, "case": "update_only", **u, "ratio_to_empty": round(u["median_ms"] / e["median_ms"], 2)}),
        flush=True,
    )

    # memory over a long run: fresh window and model, spills 1..N, RSS after spill 100 and N
    win.close()
    app.processEvents()
    win = MonitorWindow(M.MonitorSettings(yields_file=yields))
    win.resize(1920, 1080)
    win.show()
    app.processEvents()
    daq = SyntheticDAQ(seed=7)
    proc = psutil.Process()
    load = os.getloadavg()[0]
    rss = {}
    t_start = time.perf_counter()
    for i in range(1, args.spills + 1):
        for m in daq.spill_messages():
            win.inbox.put(m)
        win.tick()
        app.processEvents()
        if i in (100, args.spills):
            gc.collect()
            rss[i] = proc.memory_info().rss
    growth = (rss[args.spills] - rss[100]) / rss[100] * 100.0
    print(
        json.dumps(
            {
                **common,
                "case": "memory",
                "spills": args.spills,
                "rss_mb_at_100": round(rss[100] / 2**20, 1),
                f"rss_mb_at_{args.spills}": round(rss[args.spills] / 2**20, 1),
                "growth_pct": round(growth, 2),
                "goal_pct": 10.0,
                "ok": abs(growth) <= 10.0,
                "history_points": len(win.model.history),
                "log_lines": win.log_pane.blockCount(),
                "seconds": round(time.perf_counter() - t_start, 1),
                "loadavg_1min_at_start": round(load, 2),
            }
        ),
        flush=True,
    )
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
