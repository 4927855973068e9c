#!/usr/bin/env python3
"""Biased-MC throughput of the downstream background estimators (issue 17; offline/background_downstream.py):
MC events per second of each source's samples (beam spill with pile-up, response with the forced process,
digitiser, reconstruction, physics trigger, selection) and the wall time of the whole downstream table at
``--eot`` electrons on target and ``--intensity`` e-/spill.

A warm-up pass with a few events loads the numba caches first (excluded from the timing).

Prints one JSON line per source and one for the table:
  {"case": "background_<source>", "mc_events": ..., "events_per_s": ..., "seconds": ..., "n": ...,
   "err_stat": ..., "n_upper_90": ...}
  {"case": "background_table", "wall_s": ..., "total_n": ..., "sources": [...]}
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.config import load_calibration, load_config  # noqa: E402
from offline import background_downstream as bd  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mc", type=int, default=4000, help="MC events per sample")
    p.add_argument("--eot", type=float, default=4.3e10)
    p.add_argument("--intensity", type=float, default=5.1e6, help="e-/spill")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    cfg = load_config(None)
    calib = load_calibration(cfg)
    for f in bd.ESTIMATORS.values():  # warm-up: numba caches, tables
        f(cfg, a.eot, a.intensity, n_mc=50, seed=a.seed + 1000, calib=calib)
    t0 = time.perf_counter()
    total = 0.0
    for name, f in bd.ESTIMATORS.items():
        r = f(cfg, a.eot, a.intensity, n_mc=a.mc, seed=a.seed, calib=calib)
        total += r["n"]
        line = {
            "case": f"background_{name}",
            "mc_events": r["mc_events"],
            "events_per_s": r["mc_events"] / r["seconds"],
            "seconds": r["seconds"],
            "n": r["n"],
            "err_stat": r["err_stat"],
            "err_syst": r["err_syst"],
            "n_upper_90": r["n_upper_90"],
            "mc_selected": r["mc_selected"],
        }
        print(json.dumps(line), flush=True)
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "case": "background_table",
                "wall_s": wall,
                "total_n": total,
                "eot": a.eot,
                "intensity": a.intensity,
                "mc_per_sample": a.mc,
                "sources": list(bd.ESTIMATORS),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
