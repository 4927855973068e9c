"""Export a recorded run (HDF5 spill files, :mod:`detector.spillfile`) to one ROOT file with uproot.

Layout of the ROOT file:

- TTree ``events``: one entry per recorded event: ``spill`` (int32), ``event_id`` (uint32, record index
  in the spill), ``trigger_mask`` (uint8, detector.records.TRIGGER_BITS), ``time_ns`` (float64),
  ``waveforms`` (int16[121][32]) and, when the run holds simulation truth, ``truth_<field>`` for every
  field of detector.records.TRUTH_DTYPE;
- TTree ``spills``: one entry per spill file: ``spill``, ``crate_spill``, ``start_unix``, ``length_s``,
  ``n_particles``, ``n_accepted``, ``n_read_out``, ``n_recorded``, ``eot`` and ``flags`` (bit k set = the
  k-th entry of detector.records.SPILL_FLAGS).

Spills are appended one at a time (``TTree.extend``), so memory holds one spill. The file is written under
a temporary name and renamed when complete (:func:`detector.outfile.new_output`): a failed export leaves
nothing, and an existing file is replaced only when asked for (``overwrite``).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from detector.channels import N_CHANNELS, N_SAMPLES
from detector.outfile import new_output
from detector.records import SPILL_FLAGS, TRUTH_DTYPE
from detector.spillfile import list_spills, read_spill

SPILL_BRANCHES = {
    "spill": np.int32,
    "crate_spill": np.int64,
    "start_unix": np.float64,
    "length_s": np.float64,
    "n_particles": np.int64,
    "n_accepted": np.int64,
    "n_read_out": np.int64,
    "n_recorded": np.int64,
    "eot": np.int64,
    "flags": np.uint32,
}


def flags_bits(flags: list[str]) -> int:
    """Bit mask of spill flags (bit k = ``SPILL_FLAGS[k]``; unknown flags set bit 31)."""
    bits = 0
    for f in flags:
        bits |= (1 << SPILL_FLAGS.index(f)) if f in SPILL_FLAGS else (1 << 31)
    return bits


def export_run(run_dir: str | os.PathLike, out_root: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Write every spill of ``run_dir`` to ``out_root`` (ROOT); returns {"spills": n, "events": n, "path": ...}.
    Raises detector.spillfile.SpillFileError for an unreadable spill file (nothing is written), and
    FileExistsError when ``out_root`` exists and ``overwrite`` is false."""
    import uproot

    files = list_spills(run_dir)
    out = pathlib.Path(out_root)
    with_truth = False
    for p in files:  # the first spill with events decides
        d = read_spill(p, waveforms=False)
        if d.n_events:
            with_truth = d.truth is not None
            break
    ev_types: dict[str, Any] = {
        "spill": np.int32,
        "event_id": np.uint32,
        "trigger_mask": np.uint8,
        "time_ns": np.float64,
        "waveforms": np.dtype((np.int16, (N_CHANNELS, N_SAMPLES))),
    }
    if with_truth:
        for name in TRUTH_DTYPE.names or ():
            ev_types[f"truth_{name}"] = TRUTH_DTYPE[name].newbyteorder("=")
    n_events = 0
    with new_output(out, overwrite) as tmp, uproot.recreate(tmp) as f:
        f.mktree("events", ev_types, title="recorded events")
        f.mktree("spills", SPILL_BRANCHES, title="spill accounting")
        for p in files:
            d = read_spill(p)
            n = d.n_events
            a = d.attrs
            row = {
                k: np.array([a.get(k, 0) if k != "flags" else flags_bits(a.get("flags", []))], dtype=t)
                for k, t in SPILL_BRANCHES.items()
            }
            f["spills"].extend(row)
            if n == 0:
                continue
            arrays: dict[str, np.ndarray] = {
                "spill": np.full(n, int(a["spill"]), np.int32),
                "event_id": d.event_id.astype(np.uint32),
                "trigger_mask": d.trigger_mask.astype(np.uint8),
                "time_ns": d.time_ns.astype(np.float64),
                "waveforms": np.ascontiguousarray(d.waveforms, dtype=np.int16),
            }
            if with_truth:
                tr = d.truth if d.truth is not None else np.zeros(n, TRUTH_DTYPE)
                for name in TRUTH_DTYPE.names or ():
                    arrays[f"truth_{name}"] = np.ascontiguousarray(tr[name]).astype(ev_types[f"truth_{name}"])
            f["events"].extend(arrays)
            n_events += n
    return {"spills": len(files), "events": n_events, "path": str(out), "truth": with_truth}
