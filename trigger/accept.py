"""Passes B and C of the trigger, and the per-block counts of pass A (both entries).

A chunk is processed in three passes over blocks of :data:`BLOCK` records (passes A and B serial, or in
contiguous ranges of blocks on threads when ``parallel``: :func:`detector.parallel.run_ranges`): (A)
per-record raw bits + per-block counts, no per-event scatter (:mod:`trigger.wave`, :mod:`trigger.amp`);
(B) per block, from the block-start prescale counters (exclusive prefix sums of the counts) and the
random-tick state (a function of the previous record's time only), the accepted masks, touching only
blocks where a prescale counter wraps or a tick falls; (C) gather of the accepted indices. Serial,
parallel and any chunking give bit-identical results.
Layouts of the raw bits and the count columns: :mod:`trigger.params`.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .jit import INLINE, JIT, JIT_NONRT
from .params import A_BEAM, A_LINE0, A_RAND, A_REC, C_PISI, MASK_DTYPE, RB_LINE0, RB_PISI

BLOCK = 1024  #: records per block (pass A/B/C grain)
ONES8 = np.uint64(0x0101010101010101)
assert np.dtype(MASK_DTYPE).itemsize == 1, "passes B and C view eight masks as one uint64"


@nb.njit(**JIT_NONRT)
def block_counts(bits, times, b, b0, b1, prev_t, cnt):
    """Counts of the raw bits of block b, column 8q + k for bit k of plane q (SWAR: byte lanes of a uint64
    view summed, at most BLOCK / 8 = 128 per lane), and in the last column the records whose arrival time
    is not at or after the previous one's."""
    m = b1 - b0
    nw = m >> 3
    for pl in range(bits.shape[0]):
        plane = bits[pl]
        words = plane[b0 : b0 + 8 * nw].view(np.uint64)
        for k in range(8):
            acc = np.uint64(0)
            sh = np.uint64(k)
            for i in range(nw):
                acc += (words[i] >> sh) & ONES8
            # fold the byte lanes (each <= 128) into one sum
            acc = (acc & np.uint64(0x00FF00FF00FF00FF)) + ((acc >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF))
            acc = (acc & np.uint64(0x0000FFFF0000FFFF)) + ((acc >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF))
            c = np.int64((acc & np.uint64(0xFFFFFFFF)) + (acc >> np.uint64(32)))
            for i in range(b0 + 8 * nw, b1):
                c += (plane[i] >> k) & 1
            cnt[b, 8 * pl + k] = c
    tt = times[b0:b1]
    bad = 0 if (m > 0 and tt[0] >= (prev_t if b0 == 0 else times[b0 - 1])) else 1
    for i in range(1, m):
        bad += np.int64(tt[i] >= tt[i - 1]) ^ 1
    cnt[b, cnt.shape[1] - 1] = bad


# ====================================================================== pass B: prescale, random
@nb.njit(**JIT)
def _tick(j, rate):
    return (np.float64(j) * 1e9) / rate


@nb.njit(**JIT)
def _bracket(tau, rate, n_ticks):
    """j with tick(j) <= tau < tick(j+1): -1 before tick 0, n_ticks at or beyond tick(n_ticks)."""
    if not (tau >= 0.0):
        return -1
    if tau >= _tick(n_ticks, rate):
        return n_ticks
    j = int(tau * (rate / 1e9))
    if j > n_ticks - 1:
        j = n_ticks - 1
    while j > 0 and _tick(j, rate) > tau:
        j -= 1
    while j + 1 < n_ticks and _tick(j + 1, rate) <= tau:
        j += 1
    return j


@nb.njit(**JIT)
def _next_tick(prev, rate, n_ticks):
    """Time of the first tick after the one ``prev`` falls in (inf when none is left)."""
    j = _bracket(prev, rate, n_ticks) + 1
    if j >= n_ticks:
        return np.inf
    return _tick(j, rate)


@nb.njit(**INLINE)
def _byte_sum(w):
    """Sum of the 8 bytes of w when each byte is 0 or 1."""
    return np.int64((w * ONES8) >> np.uint64(56))


@nb.njit(**INLINE)
def _scan_prescaled(bits, amask, b0, b1, shift, c, p, total, m):
    """Accept every p-th record with raw bit ``1 << shift`` in [b0, b1): the counter stands at c raw
    triggers since the last accepted one and the block holds ``total`` raw ones, so (c + total) // p are
    accepted; OR ``m`` into amask there. Eight records at a time (SWAR on a uint64 view of the bits) are
    skipped while the next accept is not among them; the scan stops at the last accept. Returns the
    number accepted. A prescale of 1 (c is then 0) accepts every record with the bit: eight at a time, the
    bit's byte lanes times ``m`` (< 256: no carry between lanes) ORed into the masks."""
    nw = (b1 - b0) >> 3
    words = bits[b0 : b0 + 8 * nw].view(np.uint64)
    sh = np.uint64(shift)
    if p == 1:
        mw = amask[b0 : b0 + 8 * nw].view(np.uint64)
        m64 = np.uint64(m)
        for i in range(nw):
            mw[i] |= ((words[i] >> sh) & ONES8) * m64
        for q in range(b0 + 8 * nw, b1):
            amask[q] |= m * ((bits[q] >> shift) & 1)
        return total
    n_exp = (c + total) // p
    need = p - c
    n_acc = 0
    i = 0
    while n_acc < n_exp and i < nw:
        x = (words[i] >> sh) & ONES8
        k = _byte_sum(x)
        if k < need:
            need -= k
        else:
            for j in range(8):
                need -= (bits[b0 + 8 * i + j] >> shift) & 1
                if need == 0:
                    amask[b0 + 8 * i + j] |= m
                    n_acc += 1
                    need = p
        i += 1
    q = b0 + 8 * nw
    while n_acc < n_exp and q < b1:
        need -= (bits[q] >> shift) & 1
        if need == 0:
            amask[q] |= m
            n_acc += 1
            need = p
        q += 1
    return n_acc


@nb.njit(**INLINE)
def _nonzero_count(amask, b0, b1):
    """Records in [b0, b1) whose mask is not zero: eight at a time (each byte's bits ORed into its lowest
    bit, the lowest bits summed by :func:`_byte_sum`)."""
    nw = (b1 - b0) >> 3
    words = amask[b0 : b0 + 8 * nw].view(np.uint64)
    n = 0
    for i in range(nw):
        w = words[i]
        w |= w >> np.uint64(4)
        w |= w >> np.uint64(2)
        w |= w >> np.uint64(1)
        n += _byte_sum(w & ONES8)
    for q in range(b0 + 8 * nw, b1):
        n += amask[q] != 0
    return n


@nb.njit(**INLINE)
def _first_at_or_after(times, b0, b1, x):
    """First index in [b0, b1) with times >= x (sorted times), b1 if none."""
    lo = b0
    hi = b1
    while lo < hi:
        mid = (lo + hi) >> 1
        if times[mid] >= x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@nb.njit(**JIT_NONRT)
def _accept_block(bits, amask, times, b, prev_t, cstart, cnt, params, acc):
    """Accepted masks of block b (into ``amask``, zeroed here for blocks with accepts) and its accepted
    counts, from the block-start prescale counters (beam, then the lines) and the previous record's time."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    P = params[0]
    lines = P.lines
    for k in range(acc.shape[1]):
        acc[b, k] = 0
    n_ticks = P.n_ticks
    rate = P.rate_hz
    need_b = P.beam_enabled != 0 and cstart[b, 0] + cnt[b, C_PISI] >= P.beam_prescale
    need_l = need_b
    for j in range(lines.shape[0]):
        if lines[j].enabled != 0 and cstart[b, 1 + j] + cnt[b, RB_LINE0 + j] >= lines[j].prescale:
            need_l = True
    next_t = np.inf
    if n_ticks > 0:
        next_t = _next_tick(prev_t if b0 == 0 else times[b0 - 1], rate, n_ticks)
    need_r = times[b1 - 1] >= next_t
    if not (need_l or need_r):
        return
    amask[b0:b1] = 0
    if need_b:
        acc[b, A_BEAM] = _scan_prescaled(
            bits[0], amask, b0, b1, RB_PISI, cstart[b, 0], P.beam_prescale, cnt[b, C_PISI], P.beam_mask
        )
    for j in range(lines.shape[0]):
        ln = lines[j]
        c = cstart[b, 1 + j]
        raw = cnt[b, RB_LINE0 + j]
        if ln.enabled != 0 and c + raw >= ln.prescale:
            q = (RB_LINE0 + j) >> 3
            acc[b, A_LINE0 + j] = _scan_prescaled(
                bits[q], amask, b0, b1, (RB_LINE0 + j) & 7, c, ln.prescale, raw, ln.mask
            )
    if need_r:
        # sorted times: tick j accepts the first record at or after t_j if it comes before t_(j+1)
        i = _first_at_or_after(times, b0, b1, next_t)
        while i < b1:
            j = _bracket(times[i], rate, n_ticks)
            if j >= n_ticks:
                break
            amask[i] |= P.random_mask
            acc[b, A_RAND] += 1
            if j + 1 >= n_ticks:
                break
            i = _first_at_or_after(times, i + 1, b1, _tick(j + 1, rate))
    acc[b, A_REC] = _nonzero_count(amask, b0, b1)


@nb.njit(**JIT)
def pass_b(bits, amask, times, prev_t, cstart, cnt, params, acc, b_lo, b_hi):
    """Pass B (accepted masks into ``amask``, counts into ``acc``) over blocks ``b_lo .. b_hi - 1`` (disjoint
    ranges may run in threads)."""
    for b in range(b_lo, b_hi):
        _accept_block(bits, amask, times, b, prev_t, cstart, cnt, params, acc)


@nb.njit(**JIT_NONRT)
def pass_c(amask, acc, offsets, first_index, out_idx, out_mask):
    """Pass C: gather accepted indices (absolute, ``first_index`` + position) and masks (eight records at
    a time skipped while their masks are all zero)."""
    n = amask.shape[0]
    for b in range(acc.shape[0]):
        if acc[b, A_REC] == 0:
            continue
        k = offsets[b]
        b0 = b * BLOCK
        b1 = min(b0 + BLOCK, n)
        nw = (b1 - b0) >> 3
        words = amask[b0 : b0 + 8 * nw].view(np.uint64)
        for w in range(nw):
            if words[w] != 0:
                for j in range(8 * w, 8 * w + 8):
                    if amask[b0 + j]:
                        out_idx[k] = first_index + b0 + j
                        out_mask[k] = amask[b0 + j]
                        k += 1
        for i in range(b0 + 8 * nw, b1):
            if amask[i]:
                out_idx[k] = first_index + i
                out_mask[k] = amask[i]
                k += 1
