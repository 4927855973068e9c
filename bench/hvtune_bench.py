#!/usr/bin/env python3
"""A full 36-cell HCAL HV equalisation campaign against the emulator (hidden gains +/-30%), through the
real protocols and a real na64-daq. Prints iterations and wall time, and the ratio to the lower bound set
by the beam: every measurement needs at least one fresh spill, so measurements x supercycle is the
fastest any campaign could be on this spill cycle (measured in the same run from the campaign file)."""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hvtune_live import CALIBRATION_BENCH, run_campaign  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        r = run_campaign(pathlib.Path(tmp), "0,1,2,3")
    cells = r["campaign"]["cells"]
    iters = [st["iterations"] for st in cells.values()]
    points = sum(len(st["points"]) for st in cells.values())
    dev = [abs(st["points"][-1]["amp"] / 2500 - 1) for st in cells.values()]
    bound = points * CALIBRATION_BENCH["spill"]["supercycle_s"]
    print(
        json.dumps(
            {
                "case": "hvtune_36_cells",
                "returncode": r["returncode"],
                "cells": len(cells),
                "cells_done": sum(st["status"] == "done" for st in cells.values()),
                "iterations_max": max(iters),
                "iterations_mean": sum(iters) / len(iters),
                "measurements": points,
                "wall_s": r["wall_s"],
                "seconds_per_cell": r["wall_s"] / len(cells),
                "max_deviation": max(dev),
                "spill_cycle_s": CALIBRATION_BENCH["spill"]["supercycle_s"],
                "beam_bound_s": bound,
                "ratio_to_beam_bound": r["wall_s"] / bound,
            }
        )
    )


if __name__ == "__main__":
    main()
