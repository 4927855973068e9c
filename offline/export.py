"""HDF5 spill files -> ROOT (issue 5's export; ``na64-offline export RUN_DIR --out FILE.root``).

The ROOT file, written with uproot (no ROOT installation needed), holds:

- TTree ``events``: one entry per recorded event with every column of the offline event table
  (:mod:`offline.events`: run, spill, event_id, time_ns, trigger_mask, E_ECAL/E_PS/E_HCAL and per module,
  shower shape, V2, SRD, counters, pile-up information, ``truth_*`` when the run carries truth), plus
  ``cut_bits`` (bit i set when the event passes cut i of :data:`offline.selection.CUT_NAMES` on its own)
  and ``in_box`` (passes every cut). The tree is extended spill by spill (bounded memory);
- the selection histograms (:func:`offline.selection.new_histograms`): ``ecal_vs_hcal_trigger``,
  ``ecal_vs_hcal``, ``cutflow`` (Weight storage: uproot cannot write Int64 storage);
- TTree ``spills``: per spill run, spill, EOT, number of events.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from detector.config import Calibration, Config
from detector.outfile import new_output
from detector.spillfile import SpillFileError, list_spills, read_spill

from . import events as ev
from . import selection as sel
from .dask_select import run_setup


def _branches(t: ev.Table, s: sel.Selection) -> dict[str, np.ndarray]:
    out = {k: np.ascontiguousarray(v) for k, v in t.items()}
    bits = np.zeros(ev.n_rows(t), np.uint16)
    for i, name in enumerate(sel.CUT_NAMES):
        bits |= s.masks[name].astype(np.uint16) << i
    out["cut_bits"] = bits
    out["in_box"] = s.in_box.astype(np.bool_)
    return out


def export_run(
    run_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    cfg: Config | None = None,
    calib: Calibration | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out_file`` (ROOT) from the spill files of ``run_dir``; returns a summary dict
    (events, spills, skipped files, branch names). Written under a temporary name and renamed when
    complete (:func:`detector.outfile.new_output`); FileExistsError when ``out_file`` exists and
    ``overwrite`` is false."""
    import uproot

    cfg, calib = run_setup(run_dir, cfg, calib)
    cuts = sel.Cuts.from_config(cfg)
    out = pathlib.Path(out_file)
    hists = sel.new_histograms()
    spills: dict[str, list[Any]] = {"run": [], "spill": [], "eot": [], "n_events": []}
    skipped: list[str] = []
    n_events = 0
    branches: list[str] = []
    with new_output(out, overwrite) as tmp, uproot.recreate(tmp) as f:
        tree = None
        for p in list_spills(run_dir):
            try:
                data = read_spill(p)
            except SpillFileError as exc:
                skipped.append(str(exc))
                continue
            t = ev.event_table(data, calib, cfg)
            s = sel.select(t, cuts)
            sel.fill_histograms(hists, t, s)
            spills["run"].append(int(data.attrs.get("run", 0)))
            spills["spill"].append(int(data.attrs.get("spill", 0)))
            spills["eot"].append(float(data.attrs.get("eot", 0) or 0))
            spills["n_events"].append(ev.n_rows(t))
            if ev.n_rows(t) == 0:
                continue
            b = _branches(t, s)
            if tree is None:
                branches = list(b)
                tree = f.mktree("events", {k: v.dtype for k, v in b.items()}, title="NA64 offline events")
            b = {k: b[k] for k in branches if k in b}
            if len(b) != len(branches):
                raise ValueError(f"{p}: its events do not have the columns of the first spill (truth missing?)")
            tree.extend(b)
            n_events += ev.n_rows(t)
        for name, h in hists.items():
            f[name] = h
        f["spills"] = {
            "run": np.asarray(spills["run"], np.int32),
            "spill": np.asarray(spills["spill"], np.int32),
            "eot": np.asarray(spills["eot"], np.float64),
            "n_events": np.asarray(spills["n_events"], np.int64),
        }
    return {
        "file": str(out),
        "run_dir": str(run_dir),
        "events": n_events,
        "spills": len(spills["spill"]),
        "eot": float(sum(spills["eot"])),
        "skipped": skipped,
        "branches": branches,
    }
