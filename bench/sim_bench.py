"""Benchmark: simulate AND digitise the trigger primitives of one 5e6-particle spill on ONE core.

Stages timed (wall clock, numba.set_num_threads(1)): beam generation (sim_frontend.beam), detector
response (sim_frontend.response), digitisation of the (N, 6, 32) int16 primitives with pile-up
(sim_frontend.digitizer, 1.92 GB written). The spill must take less than its own flat top (4.8 s).

Baselines measured in the same run:
- memory roofline: numpy ``max`` over the 1.92 GB primitive block (the time to merely read the output once);
  ``roofline_fraction`` = roofline seconds / digitisation seconds;
- the two-step reference path of detector.pulse (``add_pulses`` into a float buffer, then ``digitize``) on a
  slice of the same records (own pulses only, no pile-up), extrapolated to the spill.

A warm-up spill (numba compilation or cache load, first touch of the process memory) is not timed; then
``--repeat`` spills are timed and the best is reported (the others are listed: the machine is shared).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numba
import numpy as np

from detector import channels as ch
from detector import pulse
from detector.config import load_calibration, load_config
from sim_frontend import beam, response
from sim_frontend.digitizer import Digitizer


def one_spill(cfg, dz, hv, spill, n):
    t0 = time.perf_counter()
    sp = beam.generate_spill(cfg, spill, n_particles=n)
    t1 = time.perf_counter()
    dep = response.apply_response(sp, cfg)
    t2 = time.perf_counter()
    wf, _ = dz.primitives(sp, dep, hv)
    t3 = time.perf_counter()
    return sp, dep, wf, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)


def reference_path(dz, sp, dep, hv, n_ref):
    """detector.pulse.add_pulses + digitize on the first n_ref records (own pulse per channel only)."""
    ids = dz.trigger_ids
    scale = dz.amplitude_scale(hv)[ids]
    amp = (dep.trigger[:n_ref].astype(np.float64) * scale[None, :]).ravel()
    t0 = np.broadcast_to(dz.t0_ns[ids], (n_ref, ids.size)).ravel().copy()
    target = np.arange(n_ref * ids.size)
    analog = np.zeros((n_ref * ids.size, ch.N_SAMPLES), np.float32)
    out = np.empty((n_ref, ids.size, ch.N_SAMPLES), np.int16)
    bank = pulse.make_noise_bank(1)
    pe = dz.ped_e[ids].astype(np.float32)
    po = dz.ped_o[ids].astype(np.float32)
    pulse.add_pulses(analog[:6], target[:6], amp[:6], t0[:6])  # compile / load
    pulse.digitize(analog[:6].reshape(1, 6, -1), pe, po, 1.5, bank, 1, out[:1])
    analog[:] = 0
    t = time.perf_counter()
    pulse.add_pulses(analog, target, amp, t0)
    pulse.digitize(analog.reshape(n_ref, ids.size, ch.N_SAMPLES), pe, po, 1.5, bank, 1, out)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    numba.set_num_threads(1)
    cfg = load_config(args.config)
    cal = load_calibration(cfg)
    dz = Digitizer(cfg, cal)
    hv = dz.nominal_vmon()
    n = args.particles

    one_spill(cfg, dz, hv, 1, 20_000)  # compile / cache load
    sp, dep, wf, _ = one_spill(cfg, dz, hv, 2, n)  # warm-up (memory)
    del sp, dep, wf
    gc.collect()
    runs = []
    for k in range(args.repeat):
        sp, dep, wf, times = one_spill(cfg, dz, hv, 10 + k, n)
        runs.append(times)
        if k < args.repeat - 1:
            del sp, dep, wf
            gc.collect()
    best = min(runs, key=lambda r: r[3])

    # baselines on the last spill's output
    t = time.perf_counter()
    peak = int(wf.max())
    roofline = time.perf_counter() - t
    n_ref = min(n, 200_000)
    ref = reference_path(dz, sp, dep, hv, n_ref) * (n / n_ref)
    # sanity: electrons put ~2500 counts into ECAL_SUM, so most records exceed 2000 at the peak sample
    ecal_peak = wf[:, 5, :].max(axis=1)
    frac_e = float(np.mean(ecal_peak > 2000))
    expect_e = float(np.mean((sp.truth["ptype"] == 0) | (sp.truth["e_ecal"] > 60)))

    length = float(cfg.spill.length_s)
    out = {
        "case": "primitives_5e6" if n == 5_000_000 else f"primitives_{n}",
        "seconds": round(best[3], 3),
        "spill_length_s": length,
        "ratio_to_spill": round(best[3] / length, 3),
        "particles": n,
        "threads": numba.get_num_threads(),
        "stages_s": {"generate": round(best[0], 3), "response": round(best[1], 3), "digitize": round(best[2], 3)},
        "all_runs_s": [round(r[3], 3) for r in runs],
        "output_bytes": int(wf.nbytes),
        "roofline_numpy_max_s": round(roofline, 4),
        "roofline_fraction": round(roofline / best[2], 3),
        "digitize_GBps": round(wf.nbytes / best[2] / 1e9, 2),
        "detector_pulse_reference_s": round(ref, 3),
        "speedup_vs_reference": round(ref / best[2], 2),
        "check": {
            "max_sample": peak,
            "ecal_sum_gt_2000_fraction": round(frac_e, 4),
            "electron_like_fraction": round(expect_e, 4),
        },
        "passes": best[3] < length,
    }
    print(json.dumps(out))
    return 0 if out["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
