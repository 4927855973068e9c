"""Pass A of the amplitude entry (offline re-trigger): amplitudes (N, 6) ADC counts + onsets (N, 6) ns (NaN =
no signal) + arrival times (N,), compared against thresholds pre-computed exactly in the inputs' own dtype
(:func:`amp_thresholds`): branch-free loops that vectorise when each channel is contiguous (columnar, i.e.
Fortran-order (N, 6), input; row-major input works, ~4x slower).
"""

from __future__ import annotations

import functools

import numba as nb
import numpy as np

from .accept import BLOCK, block_counts
from .jit import INLINE, JIT, JIT_NONRT
from .menu import ECAL_INDEX, PS_INDEX, TriggerMenu
from .params import MAX_LINES, RB_EOT, RB_LINE0, RB_PISI

assert RB_LINE0 == 6 and MAX_LINES == 6, "the slots below: lines 0, 1 in bits 6, 7 of plane 0, lines 2-5 in plane 1"


@nb.njit(**INLINE)
def _slot(tha, lines, k):
    """Thresholds (ps, ps_not, ec, ec_min) of energy line k and its veto flag, as loop-invariant scalars; a
    line beyond the menu's or disabled never fires (ps = NaN)."""
    nan = tha[tha.shape[0] - 1]  # a NaN of the thresholds' dtype
    ps, ps_not, ec, ec_min, veto = nan, nan, nan, nan, True
    if k < lines.shape[0]:
        if lines[k].enabled != 0:
            ps, ps_not, ec, ec_min = tha[1 + 4 * k], tha[2 + 4 * k], tha[3 + 4 * k], tha[4 + 4 * k]
        veto = lines[k].veto != 0
    return ps, ps_not, ec, ec_min, veto


@nb.njit(**INLINE)
def _fires(x, y, pisi, eot, slot):
    """Energy line with thresholds ``slot`` (:func:`_slot`) on PS amplitude x and ECAL amplitude y: 0 or 1."""
    ps, ps_not, ec, ec_min, veto = slot
    base = (eot & veto) | (pisi & (veto ^ True))
    return np.uint8(base & (x >= ps) & ((x >= ps_not) ^ True) & (y < ec) & (y >= ec_min))


@nb.njit(**JIT_NONRT)
def _amp_block(ac, tc, times, b, prev_t, tha, tht, params, bits, cnt):
    """Raw bits and counts of block b from amplitude columns ``ac`` (6 arrays) and onset columns ``tc``
    (S1, S2, S3, V1): comparisons against thresholds in the inputs' own dtypes (:func:`amp_thresholds`), a
    branch-free body that vectorises when each column is contiguous (columnar / Fortran-order input); then
    the counts and the time-order check. The energy lines are evaluated in MAX_LINES slots of loop-invariant
    thresholds; the slots of the second bit plane only when the record's line count (a compile-time
    constant) reaches them."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    lines = params[0].lines
    nl = lines.shape[0]
    thr = tha[0]
    lo0, hi0, lo1, hi1 = tht[0], tht[1], tht[2], tht[3]
    lo2, hi2, lo3, hi3 = tht[4], tht[5], tht[6], tht[7]
    l0, l1, l2, l3 = _slot(tha, lines, 0), _slot(tha, lines, 1), _slot(tha, lines, 2), _slot(tha, lines, 3)
    l4, l5 = _slot(tha, lines, 4), _slot(tha, lines, 5)
    # block views: loop indices from 0 are provably non-negative (no wraparound code: it vectorises)
    a0, a1, a2, a3, a4, a5 = ac[0][b0:b1], ac[1][b0:b1], ac[2][b0:b1], ac[3][b0:b1], ac[4][b0:b1], ac[5][b0:b1]
    t0, t1, t2, t3 = tc[0][b0:b1], tc[1][b0:b1], tc[2][b0:b1], tc[3][b0:b1]
    out = bits[0, b0:b1]
    out1 = bits[bits.shape[0] - 1, b0:b1]
    for i in range(b1 - b0):
        s1 = a0[i] >= thr
        s2 = a1[i] >= thr
        s3 = a2[i] >= thr
        s4 = a3[i] >= thr
        pisi = (
            s1
            & s2
            & s3
            & (t0[i] >= lo0)
            & (t0[i] < hi0)
            & (t1[i] >= lo1)
            & (t1[i] < hi1)
            & (t2[i] >= lo2)
            & (t2[i] < hi2)
        )
        v1 = s4 & (t3[i] >= lo3) & (t3[i] < hi3)
        eot = pisi & (v1 ^ True)
        x = a4[i]
        y = a5[i]
        out[i] = np.uint8(
            np.uint8(s1)
            | (np.uint8(s2) << np.uint8(1))
            | (np.uint8(s3) << np.uint8(2))
            | (np.uint8(s4) << np.uint8(3))
            | (np.uint8(pisi) << np.uint8(RB_PISI))
            | (np.uint8(eot) << np.uint8(RB_EOT))
            | (_fires(x, y, pisi, eot, l0) << np.uint8(6))
            | (_fires(x, y, pisi, eot, l1) << np.uint8(7))
        )
        if nl > 2:
            out1[i] = np.uint8(
                _fires(x, y, pisi, eot, l2)
                | (_fires(x, y, pisi, eot, l3) << np.uint8(1))
                | (_fires(x, y, pisi, eot, l4) << np.uint8(2))
                | (_fires(x, y, pisi, eot, l5) << np.uint8(3))
            )
    block_counts(bits, times, b, b0, b1, prev_t, cnt)


@nb.njit(**JIT)
def amp_pass_a(ac, tc, times, prev_t, tha, tht, params, bits, cnt, b_lo, b_hi):
    """Pass A of the amplitude entry over blocks ``b_lo .. b_hi - 1`` (disjoint ranges may run in threads)."""
    for b in range(b_lo, b_hi):
        _amp_block(ac, tc, times, b, prev_t, tha, tht, params, bits, cnt)


def _first_true(pred, dtype: np.dtype) -> float:
    """Smallest non-NaN value x of the float ``dtype`` with ``pred(x)`` (a monotonic predicate, false then
    true), by bisection over the ordered bit patterns: -inf if it holds everywhere, NaN if nowhere."""
    dtype = np.dtype(dtype)
    ut = {4: np.uint32, 8: np.uint64}[dtype.itemsize]
    sign = 1 << (8 * dtype.itemsize - 1)

    def val(key: int) -> float:
        bits_ = key if key >= 0 else sign | -key
        return float(np.array(bits_, dtype=ut).view(dtype))

    inf_key = int(np.array(np.inf, dtype=dtype).view(ut))
    lo, hi = -inf_key, inf_key
    if pred(val(lo)):
        return -np.inf
    if not pred(val(hi)):
        return np.nan
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(val(mid)):
            hi = mid
        else:
            lo = mid
    return val(hi)


@functools.lru_cache(maxsize=64)
def amp_thresholds(menu: TriggerMenu, a_dtype: np.dtype, t_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The menu's cuts as exact thresholds on amplitude / onset values of the given float dtypes, so that
    the amplitude kernel only compares (no conversion, no product) with the reference's decisions:

    - amplitudes (``a_dtype``): ``A >= thr`` <=> ``float64(A) >= counter_threshold_adc``; then per energy
      line (``menu.energy_lines`` order) four values ``ps, ps_not, ec, ec_min``:
      ``A >= ps`` <=> ``float64(A) * g_PS > ps_min_gev``; ``not (A >= ps_not)`` <=> ``float64(A) * g_PS <
      ps_max_gev`` (NaN without the cut: always true); ``A < ec`` <=> ``float64(A) * g_ECAL < ecal_max_gev``;
      ``A >= ec_min`` <=> ``float64(A) * g_ECAL > ecal_min_gev`` (-inf without the cut; a NaN amplitude fails
      ``A < ec`` anyway); last a NaN;
    - onsets (``t_dtype``), per counter: ``t >= lo`` and ``t < hi'`` <=> ``t0 - w <= float64(t) <= t0 + w``.
    """
    g_ps, g_ec = menu.gev_per_count[PS_INDEX], menu.gev_per_count[ECAL_INDEX]
    thr = menu.counter_threshold_adc
    tha = [_first_true(lambda x: x >= thr, a_dtype)]
    for _, trg in menu.energy_lines:
        tha.append(_first_true(lambda x, m=trg.ps_min_gev: x * g_ps > m, a_dtype))
        tha.append(
            np.nan if trg.ps_max_gev is None else _first_true(lambda x, m=trg.ps_max_gev: x * g_ps >= m, a_dtype)
        )
        tha.append(_first_true(lambda x, m=trg.ecal_max_gev: x * g_ec >= m, a_dtype))
        tha.append(
            -np.inf if trg.ecal_min_gev is None else _first_true(lambda x, m=trg.ecal_min_gev: x * g_ec > m, a_dtype)
        )
    tha.append(np.nan)  # the last value: NaN (a slot without a line)
    tht = []
    for c in range(4):
        lo, hi = menu.counter_window_ns(c)
        tht.append(_first_true(lambda x, v=lo: x >= v, t_dtype))
        tht.append(_first_true(lambda x, v=hi: x > v, t_dtype))
    out = np.array(tha, dtype=a_dtype), np.array(tht, dtype=t_dtype)
    for x in out:
        x.setflags(write=False)  # cached per menu and dtypes
    return out
