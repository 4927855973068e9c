"""Offline physics benchmark: A' yields for 50 masses (1-1000 MeV, log-spaced) from a cold start, and the numba
cascade against the vectorised numpy cascade measured in the same run.

Prints one JSON line per case:
  {"case": "yields_50_masses", "seconds": ..., "goal_seconds": 30, ...}
  {"case": "cascade_numba_vs_numpy", "speedup_vs_numpy": ..., ...}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from sim_frontend import cascade, yields

E0_GEV = 100.0
CASCADE_SHOWERS = 3000


def bench_yields() -> dict:
    """Cold start: track-length table (numba kernel load + 20k showers) and 50 yields."""
    masses_gev = np.geomspace(1.0, 1000.0, 50) * 1e-3
    start = time.perf_counter()
    table = yields.track_length_table(E0_GEV, 1.0)
    table_done = time.perf_counter()
    values = yields.yields_per_eot(masses_gev, E0_GEV, 50.0, "IWW", table=table)
    end = time.perf_counter()
    return {
        "case": "yields_50_masses",
        "seconds": round(end - start, 3),
        "goal_seconds": 30,
        "table_seconds": round(table_done - start, 3),
        "yields_seconds": round(end - table_done, 3),
        "n_showers": table.n_showers,
        "yield_16p7_mev": float(yields.yield_per_eot(0.0167, table=table)),
        "finite": bool(np.all(np.isfinite(values)) and np.all(values > 0)),
    }


def bench_cascade() -> dict:
    """Same showers with the numba kernel (after one warm-up call) and the vectorised numpy reference."""
    cascade.simulate_cascade(E0_GEV, 10, seed=1)  # load/compile the kernel outside the timing
    start = time.perf_counter()
    fast = cascade.simulate_cascade(E0_GEV, CASCADE_SHOWERS, seed=1)
    numba_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reference = cascade.simulate_cascade_numpy(E0_GEV, CASCADE_SHOWERS, seed=1)
    numpy_seconds = time.perf_counter() - start
    return {
        "case": "cascade_numba_vs_numpy",
        "n_showers": CASCADE_SHOWERS,
        "numba_seconds": round(numba_seconds, 4),
        "numpy_seconds": round(numpy_seconds, 4),
        "speedup_vs_numpy": round(numpy_seconds / numba_seconds, 2),
        "track_above_50gev_numba_x0": round(fast.track_length_above(50.0), 4),
        "track_above_50gev_numpy_x0": round(reference.track_length_above(50.0), 4),
    }


def main() -> int:
    for case in (bench_yields(), bench_cascade()):
        print(json.dumps(case), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
