#!/usr/bin/env python3
"""Biased-MC throughput of every registered background source (issue 17; offline/background_sources.py
``SOURCES``: upstream, decays in flight, accidental SR tags and the downstream estimators of
offline/background_downstream.py) and the wall time of the whole background table (the registry's
``predict``, what ``na64-offline background --sources`` runs) at ``--eot`` electrons on target and
``--intensity`` e-/spill, ``--mc`` MC events per source (``upstream``: beam electrons; ``decays_in_flight``:
shared by its channels; a downstream source: per sample).

A warm-up table with a few events loads the numba caches first (excluded from the timing).

Prints one JSON line per source and one for the table:
  {"case": "background_<source>", "mc_events": ..., "events_per_s": ..., "seconds": ..., "n": ..., "err": ...,
   "box_events": ..., "n_upper_90": ...}    (n_upper_90: the 90% CL bound of an empty MC box, else null)
  {"case": "background_table", "wall_s": ..., "total_n": ..., "total_err": ..., "sources": [...]}
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
from offline import background_sources as bs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mc", type=int, default=4000, help="MC events per source")
    p.add_argument("--eot", type=float, default=4.3e10)
    p.add_argument("--intensity", type=float, default=5.1e6, help="e-/spill")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--source", action="append", default=None, metavar="NAME", help="only this source (repeatable)")
    a = p.parse_args(argv)
    cfg = load_config(None)
    calib = load_calibration(cfg)
    bs.predict(cfg, a.eot, a.intensity, 50, a.source, calib=calib, seed=a.seed + 1000)  # warm-up: numba, tables
    t0 = time.perf_counter()
    table = bs.predict(cfg, a.eot, a.intensity, a.mc, a.source, calib=calib, seed=a.seed)
    wall = time.perf_counter() - t0
    for name, r in table["sources"].items():
        mc = r["mc"]
        line = {
            "case": f"background_{name}",
            "mc_events": mc["events"],
            "events_per_s": mc["events"] / r["seconds"],
            "seconds": r["seconds"],
            "n": r["n"],
            "err": r["err"],
            "err_stat": r.get("err_stat"),
            "err_syst": r.get("err_syst"),
            "box_events": mc["box_events"],
            "n_upper_90": mc.get("n_upper_90"),
        }
        print(json.dumps(line), flush=True)
    line = {
        "case": "background_table",
        "wall_s": wall,
        "total_n": table["total"]["n"],
        "total_err": table["total"]["err"],
        "eot": a.eot,
        "intensity": a.intensity,
        "mc_per_source": a.mc,
        "sources": list(table["sources"]),
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
