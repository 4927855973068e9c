#!/usr/bin/env python3
"""Reconstruction throughput: 1e5 events x 108 calorimeter channels x 32 samples (691 MB of int16, more
than the 260 MB L3 cache), numba (one core) against the vectorised numpy implementation of the same
algorithm and against a memory roofline (numpy ``max`` over the same bytes), all measured in this run.

Prints one JSON line: events_per_s, gb_per_s, speedup_vs_numpy, roofline_fraction (0..1), and the
measured baselines; ``events_per_cpu_s`` is the rate on the process's CPU time (on a busy machine the wall
clock also counts the time other processes had the core). Goals (issue 20): >= 2.5e5 events/s and >= 5x
numpy on one core, equal to numpy within rtol 1e-5 / atol 1e-3 (amplitudes) and exactly (flags).
"""

from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np

from detector import channels as ch
from detector import pulse, reco
from detector.config import load_calibration


def realistic_block(n_events: int, seed: int = 1) -> np.ndarray:
    """Electron events: a shower around a random ECAL cell near the centre (PS and main), small HCAL
    leakage, noise elsewhere. int16 (n_events, 108, 32)."""
    rng = np.random.default_rng(seed)
    amp = np.zeros((n_events, ch.N_CALO))
    cx, cy = rng.integers(2, 4, n_events), rng.integers(2, 4, n_events)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            share = 0.75 if dx == dy == 0 else 0.03
            for k, scale in ((0, 800.0), (1, 2500.0)):
                ids = 36 * k + 6 * (cx + dx) + (cy + dy)
                amp[np.arange(n_events), ids] = share * scale * rng.uniform(0.8, 1.2, n_events)
    amp[:, ch.HCAL_FIRST : ch.HCAL_FIRST + 9] = rng.exponential(5.0, (n_events, 9))
    t0 = rng.normal(100.0, 2.0, amp.shape)
    cal = load_calibration()
    return pulse.synthesize(amp, t0, cal.pedestal_even[:108], cal.pedestal_odd[:108], 1.5, seed=seed)


def best_of(fn, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--numpy-events", type=int, default=10_000, help="subset timed with numpy (per-event rate)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    numba.set_num_threads(1)
    block = realistic_block(5000)
    wf = np.ascontiguousarray(np.tile(block, (args.events // block.shape[0] + 1, 1, 1))[: args.events])
    g = load_calibration().gev_per_count[:108].astype(np.float32)
    nbytes = wf.nbytes
    reco.reconstruct(wf[:10], g)  # compile / load from cache
    t_roof = best_of(lambda: wf.max(), args.repeat)
    t_nb = best_of(lambda: reco.reconstruct(wf, g), args.repeat)
    t_cpu = best_of(lambda: reco.reconstruct(wf, g), args.repeat, time.process_time)
    sub = wf[: args.numpy_events]
    t_np = best_of(lambda: reco.reconstruct_numpy(sub, g), 1) * (args.events / sub.shape[0])
    r_nb, r_np = reco.reconstruct(sub, g), reco.reconstruct_numpy(sub, g)
    agree = bool(
        np.array_equal(r_nb.flags, r_np.flags) and np.allclose(r_nb.amplitude, r_np.amplitude, rtol=1e-5, atol=1e-3)
    )
    out = {
        "case": "reco",
        "events": args.events,
        "channels": 108,
        "bytes": nbytes,
        "events_per_s": args.events / t_nb,
        "events_per_cpu_s": args.events / t_cpu,
        "gb_per_s": nbytes / t_nb / 1e9,
        "speedup_vs_numpy": t_np / t_nb,
        "roofline_fraction": min(1.0, t_roof / t_nb),
        "roofline_gb_per_s": nbytes / t_roof / 1e9,
        "numpy_seconds_scaled": t_np,
        "numba_seconds": t_nb,
        "numpy_subset_events": sub.shape[0],
        "numba_equals_numpy_on_subset": agree,
        "threads": 1,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
