"""Pass A of the waveform entry (online): per record, the raw bits (:mod:`trigger.params`) from the int16
primitives (N, 6, 32), reconstructing a channel only as far as the decision needs (:mod:`trigger.bounds`).
A block runs in sub-blocks of :data:`SUB_BLOCK` records, their summaries in the columns of a small int32
buffer (structure of arrays, L1-resident):

* the summaries: :func:`trigger.simd.record_summary` of every record (explicit LLVM vectors, the six
  channels reduced together): the exact peak of each channel above its calibrated pedestal (not a
  baseline from the record's first samples, which can sit on an earlier particle's tail:
  :mod:`trigger.menu`) within its gate (counter gate, the sums' energy gate), the peak sample of S1..S3 and
  the saturation bits. A loop without branches (the CPU overlaps many records) that prefetches the records
  :data:`PREFETCH_AHEAD` ahead into L2;
* the decisions of the common records, several records at a time (:func:`_decide_sub`: loops over the
  columns that LLVM vectorises): the counters on integer thresholds of their peaks (:func:`_q_thresholds`,
  exactly the float compares of the scalar path), those in AMP_BOUND's band on the neighbour ratio (a short
  scalar loop: few records; V1's peak sample found there), S1..S3 windows on the window table
  (:func:`trigger.simd.window_bits`: 16 records at a time, the neighbours gathered, the table's columns
  permuted in registers), PiSi, EOT (V1's
  window, when V1 is above threshold in a PiSi record, in a short scalar loop on the table) and each energy
  line on the PS/ECAL amplitude bounds, and a mask of the records these do not decide;
* the general path :func:`_record_bits` (a call: the exact reconstruction where the bounds do not tell)
  for the masked records: saturated counters, an amplitude or onset in a guard band (V1's included);
* the lines alone :func:`_line_path` (a call) for the records decided but for an energy line, its cut
  within a sum's bounds or the sum saturated (:func:`_lines_bits`: refined by the neighbour ratio, a
  saturated sum by its lower bound :func:`trigger.bounds._sat_amp_low`, exactly if still undecided; the
  general path decides the lines the same way).

The scalar loops over rare records (the band, V1's window, the general path, the lines alone) visit only those: a loop
without branches (vectorised) sets bit j of a uint64 for each record j of the sub-block that needs it, the
scalar loop takes the set bits lowest first (:func:`trigger.simd.trailing_zeros`), instead of a
load, a compare and a branch per record of the sub-block.

Every record needs its PiSi and EOT bits (the scalers, the beam line), so the counters' windows are decided
for every record with S1..S3 above threshold whatever its energy. Numba notes (measured on this code,
docs/performance.md): block loops run over block views from index 0 (no negative-index wraparound code,
which otherwise blocks vectorisation); the line loop's trip count is the parameter record's line count, a
compile-time constant; a table looked up at data-dependent indices in a loop LLVM is to vectorise must not
be an argument array (the loop vectoriser cannot check it against the stores and gives up): the window
look-ups are explicit vector code instead (:func:`trigger.simd.window_bits`).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .accept import BLOCK, block_counts
from .bounds import (
    AMP_BOUND,
    NS,
    _amp_bounds,
    _amp_range,
    _decide,
    _keymax,
    _neighbours,
    _s_fit,
    _sat_amp_low,
    _sum_amp_range,
    _window,
    exact,
)  # fmt: skip
from .jit import INLINE, JIT, JIT_NONRT
from .menu import ECAL_INDEX, PS_INDEX
from .params import RB_EOT, RB_LINE0, RB_PISI
from .simd import (
    WINDOW_COLS,
    WINDOW_COUNTERS,
    WINDOW_LANES,
    prefetch_record_l2,
    record_summary,
    trailing_zeros,
    window_bits,
)


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
def _sum_refine(p, i, c, q, sat, zs, lo, hi, stage, se, so, g0, g1):
    """The next, tighter interval (lo, hi, stage) holding the float32 amplitude of the sum channel c of
    record i (4x peak q in its energy gate g0..g1, saturated or not, pedestal sums se, so) after [lo, hi] at
    ``stage``: 0 the peak bounds (:func:`trigger.bounds._amp_bounds`; no bound for a saturated sum), 1 the
    neighbour-ratio range of an unsaturated pulse with signal, or for a saturated sum [its lower bound
    (:func:`trigger.bounds._sat_amp_low`), +inf] (its amplitude is finite: :func:`_inside` on this interval
    decides a cut that its lower bound alone decides), 2 the exact amplitude (lo = hi). A call: only for the
    records whose amplitude bounds straddle a cut, or a saturated sum."""
    if stage == 0:
        if sat:
            return _sat_amp_low(p, i, c, zs, se, so, g0, g1, q), np.inf, 1
        if lo > 0.0:
            lo, hi = _sum_amp_range(p, i, c, q, se, so, g0, g1)
            return lo, hi, 1
    a = exact(p, i, c, zs, se, so, g0, g1)[0]
    return a, a, 2


@nb.njit(**JIT_NONRT)
def _lines_bits(p, i, P, eot, sat, qp, qe):
    """The energy-line bits of PiSi record i (EOT ``eot``; sums' 4x peaks qp, qe, saturation bits sat):
    each line on the PS/ECAL amplitude intervals, refined (:func:`_sum_refine`) only while they straddle
    its cut and the other sum does not already fail it; a refinement serves every line after it. A call
    (compiled once for :func:`_pisi_bits` and :func:`_line_path`): only for the records whose lines are
    not decided on the bounds of :func:`_decide_sub`."""
    zs = P.zs_adc
    r = np.int64(0)
    lines = P.lines
    gps, gec = P.gev_ps, P.gev_ecal
    cps, cec = np.int64(PS_INDEX), np.int64(ECAL_INDEX)
    satp = (sat & (1 << PS_INDEX)) != 0
    plo, phi = _amp_bounds(qp, zs)
    sate = (sat & (1 << ECAL_INDEX)) != 0
    elo, ehi = _amp_bounds(qe, zs)
    sp = 0  # the intervals' stages
    se = 0
    for j in range(lines.shape[0]):
        ln = lines[j]
        if ln.enabled != 0 and (eot or ln.veto == 0):
            dp = 2 if satp and sp == 0 else _inside(plo, phi, gps, ln.ps_gt, ln.ps_lt)
            de = 2 if sate and se == 0 else _inside(elo, ehi, gec, ln.ec_gt, ln.ec_lt)
            while dp == 2 and de != 0 and sp < 2:
                plo, phi, sp = _sum_refine(
                    p, i, cps, qp, satp, zs, plo, phi, sp,
                    P.ped_se[PS_INDEX], P.ped_so[PS_INDEX], P.gate_lo[PS_INDEX], P.gate_hi[PS_INDEX],
                )  # fmt: skip
                dp = _inside(plo, phi, gps, ln.ps_gt, ln.ps_lt)
            while de == 2 and dp != 0 and se < 2:
                elo, ehi, se = _sum_refine(
                    p, i, cec, qe, sate, zs, elo, ehi, se,
                    P.ped_se[ECAL_INDEX], P.ped_so[ECAL_INDEX], P.gate_lo[ECAL_INDEX], P.gate_hi[ECAL_INDEX],
                )  # fmt: skip
                de = _inside(elo, ehi, gec, ln.ec_gt, ln.ec_lt)
            if dp == 1 and de == 1:
                r |= np.int64(1) << (RB_LINE0 + j)
    return r


@nb.njit(**INLINE)
def _pisi_bits(p, i, P, a3, kn3, t3, sat, qp, qe, pisi_lines, eot_lines):
    """The bits of a PiSi record beyond the counters: PiSi, EOT (V1 not in its window: its onset t3 if
    ``kn3``, else computed here when V1 is above threshold) and the energy lines (:func:`_lines_bits`)."""
    zs = P.zs_adc
    r = np.int64(1) << RB_PISI
    if a3 and not kn3:
        t3 = exact(p, i, np.int64(3), zs, P.ped_se[3], P.ped_so[3], P.gate_lo[3], P.gate_hi[3])[1]
    eot = not (a3 and P.win_lo[3] <= t3 <= P.win_hi[3])
    if eot:
        r |= 1 << RB_EOT
    if pisi_lines or (eot and eot_lines):
        r |= _lines_bits(p, i, P, eot, sat, qp, qe)
    return r


@nb.njit(**JIT_NONRT)
def _line_path(p, i, params, r, qp, qe, sat):
    """The raw bits of PiSi record i that :func:`_decide_sub` decided but for an energy line (a cut within
    a sum's amplitude bounds, or a saturated sum): its counter, PiSi and EOT bits in ``r`` (exact: the
    common path decided them), the lines as :func:`_pisi_bits` decides them. A call, for the few such
    records (the general path :func:`_record_bits` would reconstruct the whole record again)."""
    eot = ((r >> RB_EOT) & 1) != 0
    return (np.int64(r) & ((np.int64(1) << RB_LINE0) - 1)) | _lines_bits(p, i, params[0], eot, sat, qp, qe)


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
    general path for the few records :func:`_decide_sub` does not decide."""
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


#: records per sub-block: the summaries of a sub-block are computed first (a loop without branches), then
#: decided from the buffer (its SUMMARY_COLUMNS columns of SUB_BLOCK int32, one after the other, stay in L1)
SUB_BLOCK = 64
assert SUB_BLOCK <= 64, "the rare records of a sub-block are the set bits of one uint64"
#: records ahead that the summaries prefetch into L2 (into L1 they would evict the sub-block being decided)
PREFETCH_AHEAD = 4 * SUB_BLOCK
#: int32 columns of the sub-block buffer: Q0..Q_E the six channels' 4x peaks, K0..K2 the counters' peak
#: samples, SAT the saturation bits, R the raw bits decided, U 1 where not decided, BAND bit c where counter
#: c's (S1, S2, S3, V1) amplitude bounds straddle the threshold, W the window verdicts
#: (:func:`trigger.simd.window_bits`),
#: L 1 where only an energy line is not decided (:func:`_line_path`)
Q0, Q_PS, Q_E, K0, SAT, COL_R, COL_U, COL_BAND, COL_W, COL_L = 0, 4, 5, 6, 9, 10, 11, 12, 13, 14
SUMMARY_COLUMNS = 15
#: raw bits of a PiSi record with V1 above threshold (EOT then needs V1's onset)
_V1_PISI = (1 << 3) | (1 << RB_PISI)
#: range of the 4x peaks (int16 samples, pedestal sums within +-2^17: trigger.simd.PED_BOUND) searched for
#: the integer thresholds
_Q_LO, _Q_HI = -(1 << 20), 1 << 20
#: the integer thresholds (:func:`_q_thresholds`): the counters', then per energy line LINE_Q of them
T_ZS, T_THR, T_BAND, T_LINE0, LINE_Q = 0, 1, 2, 3, 8


@nb.njit(**INLINE)
def _col(buf, c):
    """Column c of the sub-block buffer (a view of its SUB_BLOCK int32)."""
    return buf[c * SUB_BLOCK : (c + 1) * SUB_BLOCK]


@nb.njit(**INLINE)
def _at(buf, c, j):
    """Column c of record j of the sub-block buffer."""
    return buf[c * SUB_BLOCK + j]


@nb.njit(**JIT_NONRT)
def _first_q(kind, a, b):
    """The least integer 4x peak q in [_Q_LO, _Q_HI] (_Q_HI + 1 if none) for which the float64 predicate
    ``kind`` of ``best = q * 0.25`` holds, by bisection: every predicate is monotonic in q (false, then true;
    the gain b >= 0: trigger.menu checks it) and is written exactly as the scalar decisions compute it, so
    ``q >= result`` is the same decision:
    0: best >= a; 1: best * AMP_BOUND >= a; 2: best * b > a; 3: best * AMP_BOUND * b >= a;
    4: best * AMP_BOUND * b > a; 5: best * b >= a."""
    lo = _Q_LO
    hi = _Q_HI + 1
    while lo < hi:
        mid = (lo + hi) >> 1
        best = mid * 0.25
        if kind == 0:
            t = best >= a
        elif kind == 1:
            t = best * AMP_BOUND >= a
        elif kind == 2:
            t = best * b > a
        elif kind == 3:
            t = best * AMP_BOUND * b >= a
        elif kind == 4:
            t = best * AMP_BOUND * b > a
        else:
            t = best * b >= a
        if t:
            hi = mid
        else:
            lo = mid + 1
    return lo


@nb.njit(**JIT)
def _q_thresholds(params):
    """The decisions on a 4x peak q that the common path makes as float64 compares of ``best = q / 4``, as
    integer thresholds on q (int32): T_ZS (``best >= zs``), T_THR (``best >= thr``), T_BAND (``best *
    AMP_BOUND >= thr``), and per energy line n at T_LINE0 + LINE_Q n, for PS then ECAL (gain g, cuts gt, lt)
    of a sum above zs (:func:`_inside` on :func:`trigger.bounds._amp_bounds`): ``lo g > gt``, ``hi g >= lt``,
    ``hi g > gt``, ``lo g >= lt`` (a sum below zs has lo = hi = 0: one verdict per cut, that of q = 0,
    checked here: ValueError if not, as for a gain that is not finite)."""
    P = params[0]
    lines = P.lines
    if not P.zs_adc > 0.0:  # _inside_q: lo <= hi above zs
        raise ValueError("trigger: the zero-suppression threshold must be > 0")
    out = np.empty(T_LINE0 + LINE_Q * lines.shape[0], np.int32)
    # the kind as a run-time integer: a literal argument compiles _first_q once per kind
    out[T_ZS] = _first_q(np.int64(0), P.zs_adc, 0.0)
    out[T_THR] = _first_q(np.int64(0), P.thr_adc, 0.0)
    out[T_BAND] = _first_q(np.int64(1), P.thr_adc, 0.0)
    for n in range(lines.shape[0]):
        ln = lines[n]
        for h in range(2):
            g = P.gev_ps if h == 0 else P.gev_ecal
            gt = ln.ps_gt if h == 0 else ln.ec_gt
            lt = ln.ps_lt if h == 0 else ln.ec_lt
            o = T_LINE0 + LINE_Q * n + 4 * h
            out[o] = _first_q(np.int64(2), gt, g)  # lo g > gt
            out[o + 1] = _first_q(np.int64(3), lt, g)  # hi g >= lt: not (hi g < lt)
            out[o + 2] = _first_q(np.int64(4), gt, g)  # hi g > gt: not (hi g <= gt)
            out[o + 3] = _first_q(np.int64(5), lt, g)  # lo g >= lt
            # a sum below zs: _inside_q takes it as the peak q = 0, whose verdicts must be _inside's on [0, 0]
            zd = _inside(0.0, 0.0, g, gt, lt)
            w1, w3 = _q_widths(out[o], out[o + 1], out[o + 2], out[o + 3])
            one = np.uint32(0 - out[o]) < w1
            zero = np.uint32(0 - out[o + 2]) >= w3
            if not ((zd == 1 and one and not zero) or (zd == 0 and zero and not one)):
                raise ValueError(
                    "trigger: an energy cut's verdict at amplitude 0 is not that of q = 0 (gain not finite?)"
                )
    return out


@nb.njit(**JIT)
def _window_f32(rw):
    """The window table (:func:`trigger.bounds.window_table`) of S1..S3 as :func:`trigger.simd.window_bits`
    reads it: float32 (3 x 4 x NS,), column col of counter c at NS (4 c + col), rounded outward (in_lo and
    out_hi up, in_hi and out_lo down: its in and out verdicts imply the float64 table's)."""
    out = np.empty(WINDOW_COUNTERS * WINDOW_COLS * NS, np.float32)
    for c in range(WINDOW_COUNTERS):
        for col in range(WINDOW_COLS):
            for k in range(NS):
                x = rw[c, k, col]
                f = np.float32(x)
                if col == 0 or col == 3:
                    if np.float64(f) < x:
                        f = np.nextafter(f, np.float32(np.inf))
                elif np.float64(f) > x:
                    f = np.nextafter(f, np.float32(-np.inf))
                out[NS * (WINDOW_COLS * c + col) + k] = f
    return out


@nb.njit(**INLINE)
def _q_widths(t0, t1, t2, t3):
    """(w1, w3) uint32: ``t0 <= q < t1`` is ``uint32(q - t0) < w1`` and ``t2 <= q < t3`` is ``uint32(q - t2) <
    w3`` (|q|, |t| <= 2^20 + 1: no overflow; an empty range has width 0)."""
    return np.uint32(max(t1 - t0, 0)), np.uint32(max(t3 - t2, 0))


@nb.njit(**INLINE)
def _inside_q(q, s, tzs, t0, w1, t2, w3):
    """:func:`_inside` of a sum (4x peak q, saturated s) on its amplitude bounds, from the integer
    thresholds tzs, t0, t2 and widths w1, w3 (:func:`_q_widths`) of :func:`_q_thresholds`: flags (1, 2, 0).
    1 is ``t0 <= q < t1`` (A g > gt and A g < lt for every A in [lo, hi]), 0 is ``q < t2 or q >= t3``
    (hi g <= gt or lo g >= lt): they exclude each other for a sum above zs (0 <= lo <= hi, g >= 0, the
    rounded products monotonic in A), so each is one range test (a subtraction and an unsigned compare):
    this loop runs for every record and line. A sum below zs (amplitude 0) is taken as the peak q = 0,
    whose bounds are [0, 0] (:func:`_q_thresholds` checks that its verdicts are _inside's on [0, 0])."""
    qq = q if q >= tzs else np.int32(0)
    one = np.uint32(qq - t0) < w1
    zero = np.uint32(qq - t2) >= w3
    return one & (not s), ((not one) & (not zero)) | s, zero & (not s)


@nb.njit(**INLINE)
def _decide_sub(p, s0, buf, ns, P, rw, qt, tab):
    """The raw bits of the common records of sub-block s0 (``ns`` records) from the buffer's summaries into
    column COL_R, COL_U = 1 for the records these bounds do not decide (a saturated counter, an amplitude
    or onset in a guard band, V1 above threshold in a PiSi record: its onset): :func:`_record_bits` decides
    those, and COL_L = 1 for those whose only undecided bit is an energy line's (its cut within a sum's
    bounds or a saturated sum): :func:`_line_path` decides those. Counted loops over the int32
    columns without branches or calls, so that LLVM vectorises them (the counters; their windows, PiSi and
    EOT; one loop per energy line), comparing the peaks with integer thresholds (``qt``:
    :func:`_q_thresholds`) and the neighbour ratios with the window table (:func:`trigger.simd.window_bits`
    on ``tab``, :func:`_window_f32`, 16 records at a time); scalar loops between them decide the counters
    (V1 included) in AMP_BOUND's band on the neighbour ratio and V1's window in a PiSi record with V1 above
    threshold (EOT) on the window table ``rw`` (few records each: a vectorised loop collects them as the set bits of a
    uint64, the scalar loop visits only those, lowest first)."""
    thr = P.thr_adc
    q0, q1, q2, q3 = _col(buf, Q0), _col(buf, Q0 + 1), _col(buf, Q0 + 2), _col(buf, Q0 + 3)
    qp, qe = _col(buf, Q_PS), _col(buf, Q_E)
    sb = _col(buf, SAT)
    rb, ub, bb, wb = _col(buf, COL_R), _col(buf, COL_U), _col(buf, COL_BAND), _col(buf, COL_W)
    lb = _col(buf, COL_L)
    tzs, tthr, tband = qt[T_ZS], qt[T_THR], qt[T_BAND]
    for j in range(ns):  # counters on their bounds
        c0, c1, c2, v = q0[j], q1[j], q2[j], q3[j]
        up0 = (c0 >= tzs) & (c0 >= tthr)
        up1 = (c1 >= tzs) & (c1 >= tthr)
        up2 = (c2 >= tzs) & (c2 >= tthr)
        n0 = (c0 >= tzs) & (not up0) & (c0 >= tband)
        n1 = (c1 >= tzs) & (not up1) & (c1 >= tband)
        n2 = (c2 >= tzs) & (not up2) & (c2 >= tband)
        a3 = (v >= tzs) & (v >= tthr)
        n3 = (v >= tzs) & (not a3) & (v >= tband)
        rb[j] = np.int32(up0) | (np.int32(up1) << 1) | (np.int32(up2) << 2) | (np.int32(a3) << 3)
        bb[j] = np.int32(n0) | (np.int32(n1) << 1) | (np.int32(n2) << 2) | (np.int32(n3) << 3)
        ub[j] = np.int32((sb[j] & 15) != 0)
        lb[j] = 0
    band = np.uint64(0)
    for j in range(ns):  # the band: rare; its records as the set bits of a word
        band |= np.uint64(bb[j] != 0) << np.uint64(j)
    while band != 0:
        j = trailing_zeros(band)
        band &= band - np.uint64(1)
        i = s0 + j
        r = rb[j]
        for c in range(4):
            if (bb[j] >> c) & 1:
                if c < 3:
                    k = np.int64(_at(buf, K0 + c, j))
                else:  # V1's peak sample is not in the summary
                    k = _keymax(p, i, np.int64(3), P.ped_se[3], P.ped_so[3], P.gate_lo[3], P.gate_hi[3])[0]
                lo, hi = _amp_range(p, i, np.int64(c), k, _at(buf, Q0 + c, j))
                below = _decide(lo, hi, 1.0, thr, False)  # 1: A < thr, 0: A >= thr, 2: too close
                r |= np.int32(below == 0) << c
                ub[j] |= np.int32(below == 2)
        rb[j] = r
    for j in range(0, ns, WINDOW_LANES):  # S1..S3 in / out of their windows
        window_bits(buf, j, ns, tab, p, s0, Q0, K0, COL_W, SUB_BLOCK)
    for j in range(ns):  # PiSi, EOT
        r = rb[j]
        w = wb[j]
        cand = ((r & 7) == 7) & (ub[j] == 0)
        pisi = cand & ((w & 7) == 7)
        a3 = (r & 8) != 0
        eot = pisi & (not a3)
        rb[j] = r | (np.int32(pisi) << RB_PISI) | (np.int32(eot) << RB_EOT)
        # not PiSi is decided when a counter is certainly out
        ub[j] |= np.int32(cand & (not pisi) & ((w & (7 << 3)) == 0))
    c3 = np.int64(3)
    v1 = np.uint64(0)
    for j in range(ns):  # V1 above threshold in a PiSi record: EOT is V1 out of its window (rare)
        v1 |= np.uint64(((rb[j] & _V1_PISI) == _V1_PISI) & (ub[j] == 0)) << np.uint64(j)
    while v1 != 0:
        j = trailing_zeros(v1)
        v1 &= v1 - np.uint64(1)
        r = rb[j]
        i = s0 + j
        k = _keymax(p, i, c3, P.ped_se[3], P.ped_so[3], P.gate_lo[3], P.gate_hi[3])[0]
        wm, wp = _neighbours(p, i, c3, k)
        d = _window(rw, c3, k, np.float64(wp - wm), q3[j] * 0.25)  # 1 in, 0 out, 2 guard band
        rb[j] = r | (np.int32(d == 0) << RB_EOT)
        ub[j] = np.int32(d == 2)
    lines = P.lines
    for n in range(lines.shape[0]):
        ln = lines[n]
        en = ln.enabled != 0
        noveto = ln.veto == 0
        o = T_LINE0 + LINE_Q * n
        bit = np.int32(1) << (RB_LINE0 + n)
        tp0, tp2, te0, te2 = qt[o], qt[o + 2], qt[o + 4], qt[o + 6]  # locals: qt might alias the columns
        wp1, wp3 = _q_widths(tp0, qt[o + 1], tp2, qt[o + 3])
        we1, we3 = _q_widths(te0, qt[o + 5], te2, qt[o + 7])
        for j in range(ns):
            r = rb[j]
            s = sb[j]
            act = ((r & (1 << RB_PISI)) != 0) & en & (((r & (1 << RB_EOT)) != 0) | noveto)
            p1, p2, p0 = _inside_q(qp[j], (s & (1 << PS_INDEX)) != 0, tzs, tp0, wp1, tp2, wp3)
            c1, c2, c0 = _inside_q(qe[j], (s & (1 << ECAL_INDEX)) != 0, tzs, te0, we1, te2, we3)
            lb[j] |= np.int32(act & ((p2 & (not c0)) | (c2 & (not p0))))  # _lines_bits would call
            rb[j] = r | (bit if act & p1 & c1 else np.int32(0))


@nb.njit(**JIT_NONRT)
def _wave_block(p, times, b, prev_t, params, rw, bits, cnt, buf, qt, tab):
    """Raw bits of the records of block b (into the bit planes ``bits``) and the block's counts, from the
    waveforms; ``buf``: (SUMMARY_COLUMNS * SUB_BLOCK,) int32 scratch for the summaries, column c at
    c * SUB_BLOCK; ``qt``: the integer thresholds (:func:`_q_thresholds`); ``tab``: the window table of
    :func:`trigger.simd.window_bits` (:func:`_window_f32`)."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    P = params[0]
    lanes, caps = P.ped_lanes, P.gate_caps  # the calibrated pedestals, the channels' gates
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
            prefetch_record_l2(p, i + PREFETCH_AHEAD)  # beyond the array: harmless
            q0, q1, q2, q3, qp, qe, k0, k1, k2, sat = record_summary(p, i, lanes, caps)
            j = i - s0
            # at constant offsets from j (a 2-d buffer's run-time row stride cost an add per store)
            buf[Q0 * SUB_BLOCK + j], buf[(Q0 + 1) * SUB_BLOCK + j] = q0, q1
            buf[(Q0 + 2) * SUB_BLOCK + j], buf[(Q0 + 3) * SUB_BLOCK + j] = q2, q3
            buf[Q_PS * SUB_BLOCK + j], buf[Q_E * SUB_BLOCK + j] = qp, qe
            buf[K0 * SUB_BLOCK + j], buf[(K0 + 1) * SUB_BLOCK + j], buf[(K0 + 2) * SUB_BLOCK + j] = k0, k1, k2
            buf[SAT * SUB_BLOCK + j] = sat
        ns = s1 - s0
        _decide_sub(p, s0, buf, ns, P, rw, qt, tab)
        rb = _col(buf, COL_R)
        ub = _col(buf, COL_U)
        gen = np.uint64(0)
        for j in range(ns):  # the records not decided, as the set bits of a word
            gen |= np.uint64(ub[j] != 0) << np.uint64(j)
        while gen != 0:  # the general path (a call)
            j = trailing_zeros(gen)
            gen &= gen - np.uint64(1)
            rb[j] = np.int32(_record_bits(
                p, s0 + j, params, rw, _at(buf, Q0, j), _at(buf, Q0 + 1, j), _at(buf, Q0 + 2, j),
                _at(buf, Q0 + 3, j), _at(buf, Q_PS, j), _at(buf, Q_E, j), _at(buf, K0, j), _at(buf, K0 + 1, j),
                _at(buf, K0 + 2, j), _at(buf, SAT, j),
            ))  # fmt: skip
        lb = _col(buf, COL_L)
        lin = np.uint64(0)
        for j in range(ns):  # decided but for an energy line
            lin |= np.uint64((lb[j] != 0) & (ub[j] == 0)) << np.uint64(j)
        while lin != 0:  # the lines alone (a call)
            j = trailing_zeros(lin)
            lin &= lin - np.uint64(1)
            rb[j] = np.int32(
                _line_path(p, s0 + j, params, rb[j], _at(buf, Q_PS, j), _at(buf, Q_E, j), _at(buf, SAT, j))
            )
        o0 = bv0[s0:s1]  # the bit planes: loops without branches (vectorised)
        for j in range(ns):
            o0[j] = np.uint8(rb[j] & 255)
        if n_planes > 1:
            o1 = bv1[s0:s1]
            for j in range(ns):
                o1[j] = np.uint8(rb[j] >> 8)
    block_counts(bits, times, b, b0, b1, prev_t, cnt)


@nb.njit(**JIT)
def wave_pass_a(p, times, prev_t, params, rw, bits, cnt, b_lo, b_hi):
    """Pass A of the waveform entry over blocks ``b_lo .. b_hi - 1`` (disjoint ranges may run in threads)."""
    buf = np.empty(SUMMARY_COLUMNS * SUB_BLOCK, np.int32)
    qt = _q_thresholds(params)
    tab = _window_f32(rw)
    for b in range(b_lo, b_hi):
        _wave_block(p, times, b, prev_t, params, rw, bits, cnt, buf, qt, tab)
