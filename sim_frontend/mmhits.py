"""Micromegas strip data of recorded events (``[tracker]``, docs/physics.md 1.10): the event's own particle
and every other beam particle within +/- ``time_window_ns`` (pile-up tracks), plus noise strips.

Per particle and plane (randomness keyed by the particle index, stream 4, so a particle looks the same in
every event it appears in): a hit with probability ``efficiency`` when inside the active area; the measured
position is the true one smeared by ``resolution_mm``; the cluster has 1 + Poisson(``cluster_size`` - 1)
strips centred on it, sharing a Moyal-distributed charge (most probable ``CLUSTER_MPV`` ADC counts) by a
Gaussian of sigma = a quarter of the cluster width; strips below ``STRIP_THRESHOLD`` are zero-suppressed.
Every strip of the hit carries the hit time: the particle's arrival time relative to the event's own
particle (0 for it) plus a Gaussian of sigma ``time_resolution_ns`` drawn per particle and plane (stream
:data:`STREAM_HIT_TIME`, keyed by the particle index: a pile-up particle's measured time is the same in
every event it appears in, up to the event's own arrival time).
Noise: Poisson(``noise_strips``) single strips per plane at random positions (stream 5 keyed by the event's
particle index), charge threshold + exponential(``NOISE_MEAN``), time uniform over +/- ``time_window_ns``
(stream :data:`STREAM_NOISE_TIME`).

Output: :class:`detector.tracking.StripData`, one entry per requested event, in the requested order.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from detector.settings import Config
from detector.tracking import Spectrometer, StripData
from sim_frontend import beamline
from sim_frontend.beam import BeamSpill, moyal_ppf, normal_ppf, poisson_inverse, rng_next, rng_state

CLUSTER_MPV = 300.0  #: most probable cluster charge, ADC counts (DEFAULT)
CLUSTER_WIDTH = 0.25  #: Moyal width of the cluster charge, relative
STRIP_THRESHOLD = 20.0  #: zero-suppression threshold per strip, ADC counts (DEFAULT)
NOISE_MEAN = 15.0  #: mean charge above threshold of a noise strip, ADC counts
STREAM_HITS, STREAM_NOISE = 4, 5
STREAM_HIT_TIME, STREAM_NOISE_TIME = 10, 11  #: own streams: the positions and charges do not change with them


@nb.njit(cache=True, nogil=True)
def _strips_kernel(
    seed,
    pindex,
    ev_idx,
    nb_ptr,
    nb_list,
    nb_pos,
    nb_dt,
    n_st,
    pitch,
    half,
    sigma,
    eff,
    cs,
    noise,
    sigma_t,
    window,
    out_ptr,
    plane,
    strip,
    charge,
    time,
):
    s = np.uint64(seed)
    n_strips = int(round(2.0 * half / pitch))
    w = 0
    cap = plane.shape[0]
    for e in range(ev_idx.shape[0]):
        out_ptr[e] = w
        for t in range(nb_ptr[e], nb_ptr[e + 1]):
            pidx = pindex[nb_list[t]]
            st = rng_state(s, np.uint64(pidx), np.uint64(STREAM_HITS))
            stt = rng_state(s, np.uint64(pidx), np.uint64(STREAM_HIT_TIME))
            for k in range(n_st):
                for view in range(2):
                    u_true = nb_pos[t, k, view]
                    stt, u = rng_next(stt)
                    th = nb_dt[t] + sigma_t * normal_ppf(u)
                    st, u = rng_next(st)
                    if not (u < eff) or not (abs(u_true) < half):  # NaN (halo) fails too
                        continue
                    st, u = rng_next(st)
                    um = u_true + sigma * normal_ppf(u)
                    st, u = rng_next(st)
                    ns = 1 + poisson_inverse(u, cs - 1.0, math.exp(1.0 - cs), 31)
                    st, u = rng_next(st)
                    q = CLUSTER_MPV * (1.0 + CLUSTER_WIDTH * moyal_ppf(u))
                    if q <= 0.0:
                        continue
                    sg = 0.25 * ns * pitch
                    centre = (um + half) / pitch  # in strip units
                    lo = int(math.floor(centre - 0.5 * ns + 0.5))
                    norm = 0.0
                    for j in range(lo, lo + ns):
                        d = (j + 0.5 - centre) * pitch / sg
                        norm += math.exp(-0.5 * d * d)
                    for j in range(lo, lo + ns):
                        if j < 0 or j >= n_strips:
                            continue
                        d = (j + 0.5 - centre) * pitch / sg
                        qj = q * math.exp(-0.5 * d * d) / norm
                        if qj < STRIP_THRESHOLD:
                            continue
                        if w < cap:
                            plane[w] = 2 * k + view
                            strip[w] = j
                            charge[w] = qj
                            time[w] = th
                        w += 1
        st = rng_state(s, np.uint64(pindex[ev_idx[e]]), np.uint64(STREAM_NOISE))
        stt = rng_state(s, np.uint64(pindex[ev_idx[e]]), np.uint64(STREAM_NOISE_TIME))
        for pl in range(2 * n_st):
            st, u = rng_next(st)
            nn = poisson_inverse(u, noise, math.exp(-noise), 1000)
            for _ in range(nn):
                st, u = rng_next(st)
                j = int(u * n_strips)
                st, u = rng_next(st)
                stt, ut = rng_next(stt)
                if w < cap:
                    plane[w] = pl
                    strip[w] = j
                    charge[w] = STRIP_THRESHOLD - NOISE_MEAN * math.log(1.0 - u)
                    time[w] = window * (2.0 * ut - 1.0)
                w += 1
    out_ptr[ev_idx.shape[0]] = w
    return w


def neighbours(times_ns: np.ndarray, events: np.ndarray, window_ns: float) -> tuple[np.ndarray, np.ndarray]:
    """(ptr, list): the particles within +/- ``window_ns`` of each event (the event itself first); ``times_ns``
    sorted (a spill's truth)."""
    ev = np.asarray(events, dtype=np.int64)
    t = times_ns[ev]
    lo = np.searchsorted(times_ns, t - window_ns, side="left")
    hi = np.searchsorted(times_ns, t + window_ns, side="right")
    counts = hi - lo  # >= 1: the range holds the event itself
    ptr = np.zeros(ev.size + 1, np.int64)
    ptr[1:] = np.cumsum(counts)
    # slot j of an event's segment: the event first (j = 0), then its range lo..hi-1 without it
    j = np.arange(int(ptr[-1]), dtype=np.int64) - np.repeat(ptr[:-1], counts)
    lst = np.repeat(lo, counts) + j - (j <= np.repeat(ev - lo, counts))
    lst[ptr[:-1]] = ev
    return ptr, lst


def event_strips(spill: BeamSpill, cfg: Config, events: np.ndarray) -> StripData:
    """Strip data of the events ``events`` (particle indices of ``spill``; the spill went through
    :func:`sim_frontend.beamline.transport`); strip times relative to each event's own particle."""
    tr = cfg.tracker
    spec = Spectrometer.from_config(cfg)
    ev = np.asarray(events, dtype=np.int64)
    times = spill.times_ns
    ptr, lst = neighbours(times, ev, float(tr.time_window_ns))
    dt = times[lst] - np.repeat(times[ev], np.diff(ptr))
    uniq, inv = np.unique(lst, return_inverse=True)
    pos = beamline.station_positions(spill, cfg, uniq)[inv] if uniq.size else np.zeros((0, spec.n_stations, 2))
    cap = int(lst.size * spec.n_planes * (tr.cluster_size + 3) + ev.size * spec.n_planes * (3 * tr.noise_strips + 4))
    while True:
        out_ptr = np.zeros(ev.size + 1, np.int64)
        plane = np.empty(cap, np.uint8)
        strip = np.empty(cap, np.uint16)
        charge = np.empty(cap, np.float32)
        time = np.empty(cap, np.float32)
        w = _strips_kernel(
            np.uint64(spill.seed), spill.truth["index"], ev, ptr, lst, np.ascontiguousarray(pos, dtype=np.float64),
            dt, spec.n_stations,
            spec.pitch_mm, spec.half_size_mm, spec.resolution_mm, float(tr.efficiency), float(tr.cluster_size),
            float(tr.noise_strips), float(tr.time_resolution_ns), float(tr.time_window_ns), out_ptr, plane, strip,
            charge, time,
        )  # fmt: skip
        if w <= cap:
            return StripData(out_ptr, plane[:w].copy(), strip[:w].copy(), charge[:w].copy(), time[:w].copy())
        cap = int(w)
