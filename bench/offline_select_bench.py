#!/usr/bin/env python3
"""Offline selection throughput (issue 8): events/s of ``offline.dask_select`` with 1 and 2 Dask worker
processes (LocalCluster, one thread each, one task per spill file) on the same generated run, against the
serial in-process loop without Dask measured in the same run (the baseline).

The run (default 12 spill files) is made in-process with the same chain as tests/offline_fixtures.py
(beam -> response -> digitiser -> numba trigger -> spill files); the beam trigger is prescaled by 25 instead
of 1000 so that each file holds a few thousand events (tasks of ~0.1 s, well above the ~2 ms Dask overhead).
Cluster start-up and the workers' first task (imports, numba cache loads) are excluded: each cluster first
runs a warm-up pass on one file; each timed pass reads, reconstructs and selects every file and merges.

Prints one JSON line:
  {"case": "select", "events": ..., "events_per_s_1_worker": ..., "events_per_s_2_workers": ...,
   "speedup": ..., "baseline_serial_no_dask_events_per_s": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import offline_fixtures as fx  # noqa: E402

from offline import dask_select as ds  # noqa: E402
from offline import selection as sel  # noqa: E402


def make_run(out: pathlib.Path, n_spills: int, particles: int) -> pathlib.Path:
    cfg = fx.make_config(fx.APRIME, seed=777).with_overrides({"trigger": {"menu": {"beam": {"prescale": 25}}}})
    return fx.make_run(out, 1, cfg, n_spills, particles)


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spills", type=int, default=12)
    ap.add_argument("--particles", type=int, default=100_000, help="beam particles per spill")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes per case (best is kept)")
    args = ap.parse_args()
    from dask.distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="offline_select_bench_") as tmp:
        t = time.perf_counter()
        rd = make_run(pathlib.Path(tmp), args.spills, args.particles)
        t_make = time.perf_counter() - t
        files = sorted(rd.glob("spill-*.h5"))
        size = sum(p.stat().st_size for p in files)
        cfg, calib = ds.run_setup(rd)
        tasks = ds.spill_tasks([rd])
        cfg_of, calib_of = {str(rd): cfg}, {str(rd): calib}

        ref = ds.merge(ds.run_serial(tasks, cfg_of, calib_of, progress=False), sel.Cuts.from_config(cfg))
        n_events = ref.n_events
        t_serial = timed(
            lambda: ds.merge(ds.run_serial(tasks, cfg_of, calib_of, progress=False), sel.Cuts.from_config(cfg)),
            args.repeat,
        )
        rates = {}
        for n_workers in (1, 2):
            with (
                LocalCluster(
                    n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=ds.DASHBOARD_ADDRESS
                ) as cluster,
                Client(cluster) as client,
            ):
                ds.run_dask(tasks[:n_workers], cfg_of, calib_of, client=client, progress=False)  # warm-up

                def one_pass() -> None:
                    m = ds.merge(
                        ds.run_dask(tasks, cfg_of, calib_of, client=client, progress=False), sel.Cuts.from_config(cfg)
                    )
                    assert m.summary() == ref.summary(), "Dask result differs from the serial one"

                rates[n_workers] = n_events / timed(one_pass, args.repeat)
    out = {
        "case": "select",
        "events": n_events,
        "spill_files": len(files),
        "mb_on_disk": round(size / 1e6, 1),
        "events_per_s_1_worker": round(rates[1], 1),
        "events_per_s_2_workers": round(rates[2], 1),
        "speedup": round(rates[2] / rates[1], 3),
        "baseline_serial_no_dask_events_per_s": round(n_events / t_serial, 1),
        "dask_1_worker_vs_serial": round(rates[1] * t_serial / n_events, 3),
        "cpu_count": os.cpu_count(),
        "make_run_s": round(t_make, 2),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
