#!/usr/bin/env python3
"""Online-trigger throughput (issue 4), every baseline measured in this run:

- ``waveform``: the waveform entry on a 5e6-record spill of primitives (int16 (N, 6, 32) = 1.92 GB, far
  more than the 32-260 MB of cache), a realistic block of synthesized records (86% electrons: S1..S3 fire,
  PS/ECAL sums carry signal, V1 mostly empty; halo, hadrons, pile-up, a few saturated sums) tiled to the
  spill length;
- ``amplitude``: the amplitude entry on 5e7 events (float32 amplitudes and onsets in columnar layout,
  i.e. Fortran-order (N, 6): one contiguous array per channel; float64 arrival times). The row-major
  figure is reported too.

Baselines: the numpy reference (:mod:`trigger.reference`, timed on a subset and scaled per event - on the
whole spill it would need tens of GB of temporaries and minutes - the subset size is in the output) and a
memory roofline: numpy ``max`` over the same bytes the kernel reads (the primitives and the arrival times
for the waveform entry), timed in turn with the kernel (best of ``--repeat`` rounds each): the waveform
entry's ``roofline_fraction`` (goal >= 0.5, stretch 0.7) is measured and printed on every run.
``events_per_s``, ``gb_per_s`` and ``roofline_fraction`` are for ONE core (serial kernel, numba threads =
1); ``parallel_speedup`` is the serial kernel's time over the ``parallel=True`` kernel's with 2 threads.
Prints one JSON line per case.
Goals: waveform >= 1e7 events/s, >= 5x numpy, >= 50% of the roofline; amplitude >= 2x numpy, >= 40%.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numba
import numpy as np

from trigger import kernels as K
from trigger import reference as R
from trigger.menu import TriggerMenu

#: the waveform entry's share of the roofline aimed at (issue 20; 0.7 the stretch)
ROOFLINE_GOAL = 0.5


def best_of(fn, repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls (s): the machine is shared, the minimum is the figure."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def best_interleaved(fns, repeat: int) -> list[float]:
    """Shortest wall time (s) of each function over ``repeat`` rounds that call them in turn: a slow phase
    of the shared machine then slows the kernel and its baseline alike."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [min(ts) for ts in times]


def spill_times(n: int, length_ns: float) -> np.ndarray:
    """Sorted arrival times over the spill (ns): evenly spaced, as the random trigger only needs order."""
    return np.linspace(0.0, length_ns, n, endpoint=False)


def waveform_case(menu: TriggerMenu, n: int, n_numpy: int, repeat: int) -> dict:
    block, _ = R.electron_spill(menu, 50_000, seed=7, low_ecal_fraction=0.002)
    prims = np.empty((n, 6, 32), np.int16)
    for s in range(0, n, block.shape[0]):
        prims[s : s + block.shape[0]] = block[: n - s]
    tau = spill_times(n, menu.spill_length_s * 1e9)
    nbytes = prims.nbytes + tau.nbytes  # what the kernel reads: the primitives and the arrival times
    numba.set_num_threads(1)
    K.trigger_waveforms(menu, prims[:2048], tau[:2048])
    t_roof, t_nb = best_interleaved(
        [lambda: (prims.max(), tau.max()), lambda: K.trigger_waveforms(menu, prims, tau)], repeat
    )
    # the same kernel on a cache-resident slice (20k records, 7.7 MB: in the L3 that other tenants of the
    # host share, so this figure is the noisiest): if it is hardly faster per record
    # than on the whole spill, the kernel is compute-bound, not memory-bound. Measured before the parallel
    # runs: the thread pool's workers spin for a while after a parallel region, on the other (possibly
    # sibling) core
    hot_p, hot_t = prims[:20_000], tau[:20_000]
    t_hot = best_of(lambda: K.trigger_waveforms(menu, hot_p, hot_t), 10 * repeat) / hot_p.shape[0]
    numba.set_num_threads(2)
    K.trigger_waveforms(menu, prims[:2048], tau[:2048], parallel=True)
    t_par = best_of(lambda: K.trigger_waveforms(menu, prims, tau, parallel=True), repeat)
    numba.set_num_threads(1)
    sub_p, sub_t = prims[:n_numpy], tau[:n_numpy]
    t_np = best_of(lambda: R.waveform_trigger(menu, sub_p, sub_t), 1) * (n / n_numpy)
    ref = R.waveform_trigger(menu, sub_p, sub_t)
    res = K.trigger_waveforms(menu, sub_p, sub_t)
    full = K.trigger_waveforms(menu, prims, tau)
    return {
        "case": "waveform",
        "events": n,
        "bytes": nbytes,
        "events_per_s": n / t_nb,
        "gb_per_s": nbytes / t_nb / 1e9,
        "speedup_vs_numpy": t_np / t_nb,
        "roofline_fraction": min(1.0, t_roof / t_nb),
        "roofline_goal": ROOFLINE_GOAL,
        "roofline_goal_met": t_roof / t_nb >= ROOFLINE_GOAL,
        "parallel_speedup": t_nb / t_par,
        "roofline_gb_per_s": nbytes / t_roof / 1e9,
        "numba_seconds": t_nb,
        "numba_parallel_seconds": t_par,
        "ns_per_record": t_nb / n * 1e9,
        "ns_per_record_in_cache": t_hot * 1e9,
        "roofline_ns_per_record": t_roof / n * 1e9,
        "numpy_seconds_scaled": t_np,
        "numpy_subset_events": n_numpy,
        "numpy_note": f"numpy reference timed on the first {n_numpy} records and scaled per event",
        "numba_equals_numpy_on_subset": bool(res.same_as(ref)),
        "accepted": full.scalers["accepted"],
        "eot": full.scalers["EOT"],
        "threads": 1,
    }


def amplitude_case(menu: TriggerMenu, n: int, n_numpy: int, repeat: int) -> dict:
    block, _ = R.electron_spill(menu, 50_000, seed=8, low_ecal_fraction=0.002)
    a_blk, t_blk = R.reconstruct_trigger_channels(menu, block)
    reps = -(-n // a_blk.shape[0])
    amp = np.empty((n, 6), np.float32, order="F")
    ons = np.empty((n, 6), np.float32, order="F")
    for c in range(6):
        amp[:, c] = np.tile(a_blk[:, c], reps)[:n]
        ons[:, c] = np.tile(t_blk[:, c], reps)[:n]
    tau = spill_times(n, menu.spill_length_s * 1e9)
    used = ons[:, :4]  # the kernel reads S1, S2, S3, V1 onsets only (contiguous)
    nbytes = amp.nbytes + used.nbytes + tau.nbytes
    numba.set_num_threads(1)
    K.trigger_amplitudes(menu, amp[:2048], ons[:2048], tau[:2048])
    t_roof, t_nb = best_interleaved(
        [lambda: (amp.max(), used.max(), tau.max()), lambda: K.trigger_amplitudes(menu, amp, ons, tau)], repeat
    )
    numba.set_num_threads(2)
    K.trigger_amplitudes(menu, amp[:2048], ons[:2048], tau[:2048], parallel=True)
    t_par = best_of(lambda: K.trigger_amplitudes(menu, amp, ons, tau, parallel=True), repeat)
    numba.set_num_threads(1)
    sub_a, sub_o, sub_t = amp[:n_numpy], ons[:n_numpy], tau[:n_numpy]
    t_np = best_of(lambda: R.amplitude_trigger(menu, sub_a, sub_o, sub_t), 1) * (n / n_numpy)
    agree = K.trigger_amplitudes(menu, sub_a, sub_o, sub_t).same_as(R.amplitude_trigger(menu, sub_a, sub_o, sub_t))
    # row-major (C-order) input: the same kernel, 6-way interleaved loads
    n_rm = min(n, 10_000_000)
    amp_c, ons_c = np.ascontiguousarray(amp[:n_rm]), np.ascontiguousarray(ons[:n_rm])
    K.trigger_amplitudes(menu, amp_c[:2048], ons_c[:2048], tau[:2048])
    t_rm = best_of(lambda: K.trigger_amplitudes(menu, amp_c, ons_c, tau[:n_rm]), repeat)
    return {
        "case": "amplitude",
        "events": n,
        "bytes": nbytes,
        "layout": "columnar (Fortran-order (N, 6))",
        "events_per_s": n / t_nb,
        "gb_per_s": nbytes / t_nb / 1e9,
        "speedup_vs_numpy": t_np / t_nb,
        "roofline_fraction": min(1.0, t_roof / t_nb),
        "parallel_speedup": t_nb / t_par,
        "roofline_gb_per_s": nbytes / t_roof / 1e9,
        "numba_seconds": t_nb,
        "numba_parallel_seconds": t_par,
        "numpy_seconds_scaled": t_np,
        "numpy_subset_events": n_numpy,
        "numpy_note": f"numpy reference timed on the first {n_numpy} events and scaled per event",
        "numba_equals_numpy_on_subset": bool(agree),
        "events_per_s_row_major": n_rm / t_rm,
        "threads": 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=5_000_000, help="waveform spill size")
    ap.add_argument("--events", type=int, default=50_000_000, help="amplitude-entry events")
    ap.add_argument("--numpy-records", type=int, default=100_000)
    ap.add_argument("--numpy-events", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=["waveform", "amplitude"], default=None)
    args = ap.parse_args()
    menu = TriggerMenu.from_config()
    K.warm_up()
    if args.only in (None, "waveform"):
        print(json.dumps(waveform_case(menu, args.records, args.numpy_records, args.repeat)), flush=True)
        gc.collect()
    if args.only in (None, "amplitude"):
        print(json.dumps(amplitude_case(menu, args.events, args.numpy_events, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
