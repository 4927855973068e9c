"""Pass A of the waveform entry (online): per record, the raw bits (:mod:`trigger.params`) from the int16
primitives (N, 6, 32), reconstructing a channel only as far as the decision needs (:mod:`trigger.bounds`).
A block runs in sub-blocks of :data:`SUB_BLOCK` records, each in two loops:

* the summaries: :func:`trigger.simd.record_summary` of every record (explicit LLVM vectors, the six
  channels reduced together) into a small int32 buffer: the exact peak of each channel above its
  calibrated pedestal (not a baseline from the record's first samples, which can sit on an earlier
  particle's tail: :mod:`trigger.menu`) within its gate (counter gate, the sums' energy gate), the peak sample of
  S1..S3 and the saturation bits. A loop without branches: the CPU overlaps many records;
* the decisions, from the buffer (a record's decision no longer waits for its own summary's latency), the
  next sub-block's cache lines prefetched meanwhile (so that the memory stream runs under the decisions):
  the common record by :func:`_fast_bits` (no saturated counter, counter amplitudes decided on their bounds
  or in AMP_BOUND's band on the neighbour ratio, S1..S3 windows on the window table, V1's onset computed
  only when V1 is above threshold in a PiSi record), every other record by the general path
  :func:`_record_bits` (a call: the exact reconstruction where the bounds do not tell);
* PS/ECAL only for PiSi records, and only as far as the menu's energy lines need (:func:`_pisi_bits`, shared
  by both paths): each line's cuts are decided on the amplitude bounds, in the rare undecided case by a
  call that refines them by the neighbour ratio, exactly if still undecided.

Every record needs its PiSi and EOT bits (the scalers, the beam line), so the counters' windows are decided
for every record with S1..S3 above threshold whatever its energy. Numba notes (measured on this code,
docs/performance.md): block loops run over block views from index 0 (no negative-index wraparound code,
which otherwise blocks vectorisation); the line loop's trip count is the parameter record's line count, a
compile-time constant; the decisions written without branches (selects) were slower than with them.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .accept import BLOCK, block_counts
from .bounds import AMP_BOUND, _amp_bounds, _amp_range, _decide, _neighbours, _s_fit, _sum_amp_range, _window, exact
from .jit import INLINE, JIT, JIT_NONRT
from .menu import ECAL_INDEX, PS_INDEX
from .params import RB_EOT, RB_LINE0, RB_PISI
from .simd import prefetch_record, record_summary


@nb.njit(**INLINE)
def _s_counter(p, i, c, sat, k, s4, thr, zs, se, so, g0, g1):
    """S1/S2/S3 of record i with exact peak (sample k, 4x value s4), saturation flag, pedestal sums se,
    so and peak search g0..g1 (its counter gate): (above threshold, onset known, onset ns). The amplitude is
    decided on its bounds [best, AMP_BOUND * best] when they tell."""
    best = s4 * 0.25
    up = False
    known = False
    t = 0.0
    if sat:  # exact reconstruction of the saturated pulse
        a, t = exact(p, i, c, zs, se, so, g0, g1)
        up = a >= thr
        known = True
    elif best >= zs:
        if best >= thr:
            up = True
        elif best * AMP_BOUND >= thr:
            lo, hi = _amp_range(p, i, c, k, s4)
            below = _decide(lo, hi, 1.0, thr, False)  # 1: A < thr, 0: A >= thr, 2: too close
            up = below == 0
            if below == 2:
                t, a = _s_fit(p, i, c, k, s4, np.bool_(True), se, so)
                up = a >= thr
                known = True
    return up, known, t


@nb.njit(**INLINE)
def _s_window(p, i, c, k, s4, known, t, rw, lo, hi):
    """Is the onset of S-counter c in [lo, hi]: 1 in, 0 out, 2 undecided (a 1e-9 guard band: the caller
    computes the onset with :func:`_s_onset_in`). With ``known`` the onset t decides; else the window table
    on the neighbour ratio ``(s[k+1] - s[k-1]) / best`` (both neighbours have the same parity, so the
    pedestal cancels exactly: the ratio is (w[k+1] - w[k-1]) / best). The caller evaluates all three
    counters of every record (measured as fast as short-circuiting: the table is in L1) and combines;
    the verdict is meaningful only for a counter above threshold."""
    wm, wp = _neighbours(p, i, c, k)
    d = _window(rw, c, k, np.float64(wp - wm), s4 * 0.25)
    dt = 1 if lo <= t <= hi else 0
    return dt if known else d


@nb.njit(**INLINE)
def _s_onset_in(p, i, c, k, s4, lo, hi, se, so):
    """The guard-band case of :func:`_s_window`: the onset from the interpolation, in [lo, hi]?"""
    tt = _s_fit(p, i, c, k, s4, np.bool_(False), se, so)[0]
    return 1 if lo <= tt <= hi else 0


@nb.njit(**INLINE)
def _inside(lo, hi, g, gt, lt):
    """Is ``gt < A * g < lt`` for every amplitude A in [lo, hi] (g >= 0, A * g monotonic in A): 1 yes,
    0 no, 2 undecided. An absent cut is -inf / +inf."""
    r = 2
    if lo * g > gt and hi * g < lt:
        r = 1
    elif hi * g <= gt or lo * g >= lt:
        r = 0
    return r


@nb.njit(**JIT_NONRT)
def _sum_inside(p, i, c, q, sat, zs, g, gt, lt, se, so, g0, g1):
    """:func:`_inside` for the sum channel c of record i (4x peak q in its energy gate g0..g1, saturated or
    not, pedestal sums se, so), decided: on the
    neighbour-ratio bounds of an unsaturated pulse, else on the exact amplitude. A call: only for the
    records whose amplitude bounds straddle a cut, or a saturated sum."""
    d = 2
    if not sat:
        lo, hi = _amp_bounds(q, zs)
        if lo > 0.0:
            lo, hi = _sum_amp_range(p, i, c, q, se, so, g0, g1)
        d = _inside(lo, hi, g, gt, lt)
    if d == 2:
        a = exact(p, i, c, zs, se, so, g0, g1)[0]
        d = _inside(a, a, g, gt, lt)
    return d


@nb.njit(**INLINE)
def _pisi_bits(p, i, P, a3, kn3, t3, sat, qp, qe, pisi_lines, eot_lines):
    """The bits of a PiSi record beyond the counters: PiSi, EOT (V1 not in its window: its onset t3 if
    ``kn3``, else computed here when V1 is above threshold) and the energy lines, decided on the PS/ECAL
    amplitude bounds when they tell."""
    zs = P.zs_adc
    r = np.int64(1) << RB_PISI
    if a3 and not kn3:
        t3 = exact(p, i, np.int64(3), zs, P.ped_se[3], P.ped_so[3], P.gate_lo[3], P.gate_hi[3])[1]
    eot = not (a3 and P.win_lo[3] <= t3 <= P.win_hi[3])
    if eot:
        r |= 1 << RB_EOT
    if pisi_lines or (eot and eot_lines):
        lines = P.lines
        gps, gec = P.gev_ps, P.gev_ecal
        cps, cec = np.int64(PS_INDEX), np.int64(ECAL_INDEX)
        satp = (sat & (1 << PS_INDEX)) != 0
        plo, phi = _amp_bounds(qp, zs)
        sate = (sat & (1 << ECAL_INDEX)) != 0
        elo, ehi = _amp_bounds(qe, zs)
        for j in range(lines.shape[0]):
            ln = lines[j]
            if ln.enabled != 0 and (eot or ln.veto == 0):
                dp = 2 if satp else _inside(plo, phi, gps, ln.ps_gt, ln.ps_lt)
                de = 2 if sate else _inside(elo, ehi, gec, ln.ec_gt, ln.ec_lt)
                if dp == 2 and de != 0:
                    dp = _sum_inside(
                        p, i, cps, qp, satp, zs, gps, ln.ps_gt, ln.ps_lt,
                        P.ped_se[PS_INDEX], P.ped_so[PS_INDEX], P.gate_lo[PS_INDEX], P.gate_hi[PS_INDEX],
                    )  # fmt: skip
                if de == 2 and dp != 0:
                    de = _sum_inside(
                        p, i, cec, qe, sate, zs, gec, ln.ec_gt, ln.ec_lt,
                        P.ped_se[ECAL_INDEX], P.ped_so[ECAL_INDEX], P.gate_lo[ECAL_INDEX], P.gate_hi[ECAL_INDEX],
                    )  # fmt: skip
                if dp == 1 and de == 1:
                    r |= np.int64(1) << (RB_LINE0 + j)
    return r


@nb.njit(**INLINE)
def _line_kinds(lines):
    """(an enabled line takes PiSi without the veto, an enabled line needs EOT)."""
    pisi_lines = False
    eot_lines = False
    for j in range(lines.shape[0]):
        if lines[j].enabled != 0:
            if lines[j].veto != 0:
                eot_lines = True
            else:
                pisi_lines = True
    return pisi_lines, eot_lines


@nb.njit(**JIT_NONRT)
def _record_bits(p, i, params, rw, q0, q1, q2, q3, qp, qe, k0, k1, k2, sat):
    """Raw bits of record i with summary (q0..qe, k0..k2, sat) in every case: saturated channels, amplitudes
    and onsets whose bounds do not tell (the exact reconstruction where they still do not). A call: the
    general path for the few records :func:`_fast_bits` does not decide."""
    P = params[0]
    thr = P.thr_adc
    zs = P.zs_adc
    lo0, hi0, lo1, hi1 = P.win_lo[0], P.win_hi[0], P.win_lo[1], P.win_hi[1]
    lo2, hi2 = P.win_lo[2], P.win_hi[2]
    pse, pso, glo, ghi = P.ped_se, P.ped_so, P.gate_lo, P.gate_hi
    # channel indices as run-time integers: a literal argument compiles a callee once per channel
    c0, c1, c2, c3 = np.int64(0), np.int64(1), np.int64(2), np.int64(3)
    # --- counters above threshold (the scalers)
    a0, kn0, t0 = _s_counter(p, i, c0, (sat & 1) != 0, k0, q0, thr, zs, pse[0], pso[0], glo[0], ghi[0])
    a1, kn1, t1 = _s_counter(p, i, c1, (sat & 2) != 0, k1, q1, thr, zs, pse[1], pso[1], glo[1], ghi[1])
    a2, kn2, t2 = _s_counter(p, i, c2, (sat & 4) != 0, k2, q2, thr, zs, pse[2], pso[2], glo[2], ghi[2])
    vlo, vhi = _amp_bounds(q3, zs)
    a3 = vlo >= thr
    kn3 = False
    t3 = 0.0
    if (sat & 8) != 0 or (not a3 and vhi >= thr):
        a, t3 = exact(p, i, c3, zs, pse[3], pso[3], glo[3], ghi[3])
        a3 = a >= thr
        kn3 = True
    r = np.int64(a0) | (np.int64(a1) << 1) | (np.int64(a2) << 2) | (np.int64(a3) << 3)
    # --- PiSi: S1, S2, S3 in their windows (the guard band, rare, computes the onset)
    d0 = _s_window(p, i, c0, k0, q0, kn0, t0, rw, lo0, hi0)
    d1 = _s_window(p, i, c1, k1, q1, kn1, t1, rw, lo1, hi1)
    d2 = _s_window(p, i, c2, k2, q2, kn2, t2, rw, lo2, hi2)
    pisi = a0 & a1 & a2
    if pisi and (d0 | d1 | d2) >= 2:
        if d0 == 2:
            d0 = _s_onset_in(p, i, c0, k0, q0, lo0, hi0, pse[0], pso[0])
        if d1 == 2:
            d1 = _s_onset_in(p, i, c1, k1, q1, lo1, hi1, pse[1], pso[1])
        if d2 == 2:
            d2 = _s_onset_in(p, i, c2, k2, q2, lo2, hi2, pse[2], pso[2])
    if pisi & ((d0 & d1 & d2) == 1):
        pisi_lines, eot_lines = _line_kinds(P.lines)
        r |= _pisi_bits(p, i, P, a3, kn3, t3, sat, qp, qe, pisi_lines, eot_lines)
    return r


@nb.njit(**INLINE)
def _counter_bound(p, i, c, k, q, thr, zs):
    """(above threshold, decided) of the unsaturated counter c of record i (peak sample k, 4x peak value q)
    on its amplitude bounds, in AMP_BOUND's band on the neighbour ratio (:func:`_s_counter` without the
    exact reconstruction)."""
    best = q * 0.25
    sig = best >= zs
    up = sig & (best >= thr)
    ok = up | (not sig) | (best * AMP_BOUND < thr)
    if not ok:
        lo, hi = _amp_range(p, i, c, k, q)
        below = _decide(lo, hi, 1.0, thr, False)  # 1: A < thr, 0: A >= thr, 2: too close
        up = below == 0
        ok = below != 2
    return up, ok


@nb.njit(**INLINE)
def _fast_bits(p, i, P, rw, q0, q1, q2, q3, qp, qe, k0, k1, k2, sat, pisi_lines, eot_lines):
    """(raw bits, decided) of record i from its summary, for the common records: no saturated counter,
    every amplitude and onset decided on its bounds, the onsets of S1..S3 from the summary's peak
    samples. Not decided: the caller takes :func:`_record_bits`."""
    thr = P.thr_adc
    zs = P.zs_adc
    a0, ok0 = _counter_bound(p, i, np.int64(0), k0, q0, thr, zs)
    a1, ok1 = _counter_bound(p, i, np.int64(1), k1, q1, thr, zs)
    a2, ok2 = _counter_bound(p, i, np.int64(2), k2, q2, thr, zs)
    v = q3 * 0.25
    a3 = (v >= zs) & (v >= thr)
    ok = ok0 & ok1 & ok2 & (a3 | (v < zs) | (v * AMP_BOUND < thr)) & ((sat & 15) == 0)
    r = np.int64(a0) | (np.int64(a1) << 1) | (np.int64(a2) << 2) | (np.int64(a3) << 3)
    if ok and a0 & a1 & a2:
        d0 = _s_window(p, i, np.int64(0), k0, q0, False, 0.0, rw, 0.0, 0.0)
        d1 = _s_window(p, i, np.int64(1), k1, q1, False, 0.0, rw, 0.0, 0.0)
        d2 = _s_window(p, i, np.int64(2), k2, q2, False, 0.0, rw, 0.0, 0.0)
        ok = (d0 | d1 | d2) < 2
        if ok and (d0 & d1 & d2) == 1:
            r |= _pisi_bits(p, i, P, a3, False, 0.0, sat, qp, qe, pisi_lines, eot_lines)
    return r, ok


#: records per sub-block: the summaries of a sub-block are computed first (a loop without branches), then
#: the decisions read them back (their buffer, SUB_BLOCK x 64 bytes, stays in L1); the decisions prefetch the
#: next sub-block's records (SUB_BLOCK x 384 bytes ahead: 64 measured as good as 256 and 1024 in cache, a
#: little better on a whole spill)
SUB_BLOCK = 64
#: int32 columns of a summary row (the ten values of :func:`trigger.simd.record_summary`, padded)
SUMMARY_COLUMNS = 16


@nb.njit(**JIT_NONRT)
def _wave_block(p, times, b, prev_t, params, rw, bits, cnt, buf):
    """Raw bits of the records of block b (into the bit planes ``bits``) and the block's counts, from the
    waveforms; ``buf``: (SUB_BLOCK, SUMMARY_COLUMNS) int32 scratch for the summaries."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    P = params[0]
    lanes, caps = P.ped_lanes, P.gate_caps  # the calibrated pedestals, the channels' gates
    pisi_lines, eot_lines = _line_kinds(P.lines)
    n_planes = bits.shape[0]
    # block views: loop indices from 0 are provably non-negative (no wraparound code in the hot loop)
    p = p[b0:b1]
    bv0 = bits[0, b0:b1]
    bv1 = bits[n_planes - 1, b0:b1]
    m = b1 - b0
    for s0 in range(0, m, SUB_BLOCK):
        s1 = min(s0 + SUB_BLOCK, m)
        for i in range(s0, s1):
            # exact peaks (4x value) of the six channels, peak samples of S1..S3, saturation bits
            q0, q1, q2, q3, qp, qe, k0, k1, k2, sat = record_summary(p, i, lanes, caps)
            row = buf[i - s0]
            row[0], row[1], row[2], row[3], row[4], row[5] = q0, q1, q2, q3, qp, qe
            row[6], row[7], row[8], row[9] = k0, k1, k2, sat
        for i in range(s0, s1):
            prefetch_record(p, i + SUB_BLOCK)  # the next sub-block (beyond the array: harmless)
            row = buf[i - s0]
            q0, q1, q2, q3, qp, qe = row[0], row[1], row[2], row[3], row[4], row[5]
            k0, k1, k2, sat = row[6], row[7], row[8], row[9]
            r, ok = _fast_bits(p, i, P, rw, q0, q1, q2, q3, qp, qe, k0, k1, k2, sat, pisi_lines, eot_lines)
            if not ok:
                r = _record_bits(p, i, params, rw, q0, q1, q2, q3, qp, qe, k0, k1, k2, sat)
            bv0[i] = np.uint8(r & 255)
            if n_planes > 1:
                bv1[i] = np.uint8(r >> 8)
    block_counts(bits, times, b, b0, b1, prev_t, cnt)


@nb.njit(**JIT)
def wave_pass_a(p, times, prev_t, params, rw, bits, cnt):
    """Pass A of the waveform entry, serial."""
    buf = np.empty((SUB_BLOCK, SUMMARY_COLUMNS), np.int32)
    for b in range(cnt.shape[0]):
        _wave_block(p, times, b, prev_t, params, rw, bits, cnt, buf)


@nb.njit(parallel=True, **JIT)
def wave_pass_a_par(p, times, prev_t, params, rw, bits, cnt):
    """Pass A of the waveform entry, prange over blocks."""
    for b in nb.prange(cnt.shape[0]):
        buf = np.empty((SUB_BLOCK, SUMMARY_COLUMNS), np.int32)
        _wave_block(p, times, b, prev_t, params, rw, bits, cnt, buf)
