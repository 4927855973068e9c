"""The numba online trigger, evaluated per spill (definitions in :mod:`trigger.menu`, numpy oracle in
:mod:`trigger.reference`).

Two entries give identical decisions for identical physics:

- **waveform entry** (online): primitives int16 (N, 6, 32) + arrival times (N,) ns. Each channel is
  reconstructed only as far as the decision needs: a vectorised pass gives the two pedestals and the
  raw maximum, which bound the float32 amplitude that ``detector.reco.reconstruct_numpy`` would return
  (``best <= A <= AMP_BOUND * best``); a threshold is decided on the bounds when it can be, and only
  otherwise by the exact amplitude (the same arithmetic as the numpy reconstruction, incl. the
  ``np.interp`` formula). Counter times are computed (peak sample + table interpolation, no exp) only
  for counters above threshold; PS/ECAL only for PiSi AND NOT V1 records.
- **amplitude entry** (offline re-trigger): amplitudes (N, 6) ADC counts + onsets (N, 6) ns (NaN = no
  signal) + arrival times (N,).

A chunk is processed in three passes over blocks of :data:`BLOCK` records (serial, or ``prange`` over
blocks when ``parallel``): (A) per-record raw bits + per-block counts (no per-event scatter), (B) per
block, from the block-start prescale counters (exclusive prefix sums of the counts) and the random-tick
state (a function of the previous record's time only), the accepted masks, scanning only blocks where a
prescale counter wraps or a random tick falls, (C) gather of the accepted indices. Serial, parallel and
any chunking give bit-identical results.

The only possible difference to the numpy oracle: numpy's SIMD ``exp`` and libm's ``exp`` (numba)
differ by 1 ulp (float64) in a few % of arguments; it reaches a float32 amplitude with probability
~1e-10 per exactly-reconstructed channel, and a decision only if that amplitude sits on a threshold.
"""
from __future__ import annotations

import math
import sys

import numba as nb
import numpy as np

from detector import channels as ch
from detector.pulse import PEAK_DELAY_NS, template, template_value
from detector.reco import PEAK_DELTA, PEAK_R
from detector.records import TRIGGER_BITS

from .menu import COUNTER_NAMES, ECAL_INDEX, PS_INDEX, TriggerMenu, TriggerResult, empty_scalers
from .reference import check_inputs, check_primitives, unsorted_error

assert sys.byteorder == "little"

NS = ch.N_SAMPLES
SAMPLE_NS = ch.SAMPLE_NS
ADC_MAX = ch.ADC_MAX
BLOCK = 1024                                #: records per block (pass A/B/C grain)
EXP_SAMPLE = math.exp(SAMPLE_NS / 12.0)     #: as in detector.reco (saturated pulses)

#: upper bound of reconstructed amplitude / peak sample: 1 / min template at the table's delta range
_TV_MIN = float(template(PEAK_DELAY_NS - np.concatenate([PEAK_DELTA, PEAK_DELTA[[0, -1]]]) * SAMPLE_NS).min())
AMP_BOUND = 1.3
assert 1.0 / _TV_MIN < AMP_BOUND / 1.001, "amplitude bound too tight for the peak table"

# Peak-interpolation table of detector.reco, as module constants (numba freezes global arrays into the
# compiled code: no reference counting in the hot loop). SLOPE is what np.interp computes per segment.
XP = np.ascontiguousarray(PEAK_R, dtype=np.float64)
FP = np.ascontiguousarray(PEAK_DELTA, dtype=np.float64)
N_XP = XP.size
SLOPE = (FP[1:] - FP[:-1]) / (XP[1:] - XP[:-1])
# uniform bins over XP -> the segment containing the bin's start (fine enough that a bin holds at most one
# table point, so one well-predicted comparison finds the segment); ITAB rows = xp[j], slope[j], fp[j],
# xp[j + 1] (one cache line per lookup)
N_GUIDE = 1 << 16
GUIDE_X0 = float(XP[0])
GUIDE_INV = N_GUIDE / float(XP[-1] - XP[0])
GUIDE = np.clip(np.searchsorted(XP, GUIDE_X0 + np.arange(N_GUIDE) / GUIDE_INV, side="right") - 1,
                0, N_XP - 2).astype(np.int32)
ITAB = np.ascontiguousarray(np.stack([XP[:-1], SLOPE, FP[:-1], XP[1:]], axis=1))
assert NS == 32, "the peak key packs the sample index in 5 bits"
KEY_J = (NS - 1 - np.arange(NS)).astype(np.int32)

# per-record raw bits (pass A)
RB_S1, RB_S2, RB_S3, RB_V1, RB_PISI, RB_EOT, RB_PHYS, RB_DIM = (1 << k for k in range(8))
# per-block count columns (pass A)
C_S1, C_S2, C_S3, C_V1, C_PISI, C_EOT, C_PHYS, C_DIM, C_BAD = range(9)
N_COUNT = 9
# per-block accepted-count columns (pass B)
A_REC, A_PHYS, A_BEAM, A_RAND, A_DIM = range(5)
N_ACC = 5
M_PHYS, M_BEAM, M_RAND, M_DIM = (int(TRIGGER_BITS[n]) for n in ("physics", "beam", "random", "dimuon"))

# float parameters
(F_THR, F_LO0, F_HI0, F_LO1, F_HI1, F_LO2, F_HI2, F_LO3, F_HI3, F_GPS, F_GEC, F_PSP, F_ECP, F_PSD, F_ECD, F_ZS,
 F_RATE) = range(17)
# int parameters
I_PHYS_EN, I_BEAM_EN, I_DIM_EN, I_P_PHYS, I_P_BEAM, I_P_DIM, I_NTICKS = range(7)

_jit = dict(cache=True, nogil=True, error_model="numpy")
#: hot helpers are inlined in numba IR (LLVM does not inline numba calls, and a call passing arrays costs
#: NRT reference counting); they have a single exit so that the reference-count pruning succeeds
_inl = dict(cache=True, nogil=True, error_model="numpy", inline="always")


def pack(menu: TriggerMenu) -> tuple[np.ndarray, np.ndarray]:
    """The menu as the kernels' parameter arrays (float64, int64)."""
    w = [menu.counter_window_ns(c) for c in range(4)]
    f = np.array([menu.counter_threshold_adc, *w[0], *w[1], *w[2], *w[3],
                  menu.gev_per_count[PS_INDEX], menu.gev_per_count[ECAL_INDEX],
                  menu.physics.ps_min_gev, menu.physics.ecal_max_gev, menu.dimuon.ps_min_gev,
                  menu.dimuon.ecal_max_gev, menu.zs_threshold_adc,
                  menu.random.rate_hz if menu.random.enabled else 1.0], dtype=np.float64)
    i = np.array([menu.physics.enabled, menu.beam.enabled, menu.dimuon.enabled, menu.physics.prescale,
                  menu.beam.prescale, menu.dimuon.prescale, menu.n_random_ticks], dtype=np.int64)
    return f, i


def _onset32(k: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Onset (ns) as numpy's reconstruction returns it (float32 value) for inner peak sample k and
    neighbour ratio r = (s[k+1] - s[k-1]) / s[k]."""
    return ((k + np.interp(r, XP, FP)) * SAMPLE_NS - PEAK_DELAY_NS).astype(np.float32).astype(np.float64)


def window_table(menu: TriggerMenu) -> np.ndarray:
    """Per counter S1..S3 and peak sample k, the neighbour ratios r for which the onset is in the
    coincidence window, so that the hot loop decides ``t0 - w <= t <= t0 + w`` with two comparisons
    instead of the table interpolation: rows (r_in_lo, r_in_hi, r_out_lo, r_out_hi), in the window if
    ``r_in_lo <= r <= r_in_hi``, out if ``r < r_out_lo or r > r_out_hi``, else (a guard band of 1e-9
    relative around each crossing, where rounding could be non-monotonic) the onset is computed. The
    crossings are found by bisection on the exact onset function (monotonic in r up to rounding)."""
    tab = np.empty((3, NS, 4))
    ks = np.arange(1, NS - 1, dtype=np.int64)
    r0 = np.full(ks.size, XP[0] - 1.0)
    r1 = np.full(ks.size, XP[-1] + 1.0)

    def crossing(level: float, above: bool) -> np.ndarray:
        # first r with onset >= level (above) / last r with onset <= level (not above)
        g0, g1 = _onset32(ks, r0), _onset32(ks, r1)
        a, b = r0.copy(), r1.copy()
        for _ in range(200):
            mid = 0.5 * (a + b)
            ok = (_onset32(ks, mid) >= level) if above else (_onset32(ks, mid) > level)
            b = np.where(ok, mid, b)
            a = np.where(ok, a, mid)
            if np.all(np.nextafter(a, np.inf) >= b):
                break
        x = b if above else a
        if above:
            x = np.where(g0 >= level, -np.inf, np.where(g1 < level, np.inf, x))
        else:
            x = np.where(g1 <= level, np.inf, np.where(g0 > level, -np.inf, x))
        return x

    for c in range(3):
        lo, hi = menu.counter_window_ns(c)
        a = crossing(lo, True)
        b = crossing(hi, False)
        ga = np.where(np.isfinite(a), 1e-9 * np.abs(a) + 1e-12, 0.0)
        gb = np.where(np.isfinite(b), 1e-9 * np.abs(b) + 1e-12, 0.0)
        tab[c, 1:NS - 1] = np.stack([a + ga, b - gb, a - ga, b + gb], axis=1)
        for k in (0, NS - 1):
            t = float(np.float32(k * SAMPLE_NS - PEAK_DELAY_NS))
            tab[c, k] = (-np.inf, np.inf, -np.inf, np.inf) if lo <= t <= hi else (np.inf, -np.inf, np.inf, -np.inf)
    return tab


# ====================================================================== reconstruction pieces
@nb.njit(**_inl)
def _interp(x):
    """``np.interp(x, PEAK_R, PEAK_DELTA)`` bit for bit (numpy's formula ``slope * (x - xp[j]) + fp[j]``
    with numpy's per-segment slope), the segment found through GUIDE (x is never NaN here)."""
    xc = min(max(x, XP[0]), XP[N_XP - 2])
    g = min(max(int((xc - GUIDE_X0) * GUIDE_INV), 0), N_GUIDE - 1)
    j = np.int64(GUIDE[g])
    if ITAB[j, 3] <= xc:        # the next knot lies in the bin (or rounding): predictable branches
        j += 1
        while ITAB[j, 3] <= xc:
            j += 1
    while ITAB[j, 0] > xc:
        j -= 1
    y = ITAB[j, 1] * (x - ITAB[j, 0]) + ITAB[j, 2]
    if x >= XP[N_XP - 1]:
        y = FP[N_XP - 1]
    elif x < XP[0]:
        y = FP[0]
    return y


@nb.njit(**_inl)
def _peds(p, i, c):
    """Sums of the 4 even and 4 odd pedestal samples of p[i, c] (ADC counts; pedestal = sum / 4)."""
    se = np.int64(p[i, c, 0]) + np.int64(p[i, c, 2]) + np.int64(p[i, c, 4]) + np.int64(p[i, c, 6])
    so = np.int64(p[i, c, 1]) + np.int64(p[i, c, 3]) + np.int64(p[i, c, 5]) + np.int64(p[i, c, 7])
    return se, so


@nb.njit(**_inl)
def _rawmax(p, i, c):
    """Largest raw sample of p[i, c]. The loop runs to the run-time ``p.shape[2]``: with a compile-time
    trip count LLVM unrolls it into branches instead of vectorising it (int16 lanes)."""
    m = np.int16(-32768)
    for j in range(p.shape[2]):
        v = p[i, c, j]
        m = v if v > m else m
    return np.int64(m)


@nb.njit(**_inl)
def _keymax(p, i, c, se, so):
    """Peak sample k (numpy's argmax: the first maximum) of the pedestal-subtracted samples of p[i, c]
    and 4x that maximum, exactly, in one vectorised pass over int32 keys
    ``32 * (4 w_j - 4 ped_j) + (31 - j)`` (|key| < 2^24 for any int16 input)."""
    se32 = np.int32(se)
    so32 = np.int32(so)
    m = np.int32(-2147483648)
    for j in range(p.shape[2]):
        key = np.int32(np.int32(128) * np.int32(p[i, c, j]) - np.int32(32) * (se32 if (j & 1) == 0 else so32)
                       + KEY_J[j])
        m = key if key > m else m
    return np.int64(NS - 1) - (np.int64(m) & 31), np.int64(m) >> 5


@nb.njit(**_inl)
def _time_amp(k, s4, pe, po, wm, wp, need_amp):
    """(onset ns, amplitude ADC counts) as float32 values of an unsaturated pulse with signal: peak sample
    k, 4x peak value s4, pedestals pe/po, raw samples wm = w[k-1], wp = w[k+1] (ignored at the edges);
    the arithmetic of ``reconstruct_numpy``. Without ``need_amp`` the amplitude returned is the peak value
    (a lower bound: no exp). Scalars only: no reference counting when inlined."""
    best = s4 * 0.25
    t = k * SAMPLE_NS - PEAK_DELAY_NS
    amp = best
    if k > 0 and k < NS - 1:
        sm = wm - (pe if ((k - 1) & 1) == 0 else po)
        sp = wp - (pe if ((k + 1) & 1) == 0 else po)
        delta = _interp((sp - sm) / best)
        t = (k + delta) * SAMPLE_NS - PEAK_DELAY_NS
        if need_amp:
            amp = best / template_value(PEAK_DELAY_NS - delta * SAMPLE_NS)
    return np.float64(np.float32(t)), np.float64(np.float32(amp))


@nb.njit(**_inl)
def _neighbours(p, i, c, k):
    """Raw samples before and after the peak sample k (clamped at the window edges)."""
    return np.int64(p[i, c, max(k - 1, 0)]), np.int64(p[i, c, min(k + 1, NS - 1)])


@nb.njit(**_inl)
def _window(rw, c, k, x):
    """In-window decision of counter c from the window table: 1 in, 0 out, 2 undecided (guard band)."""
    d = 2
    if rw[c, k, 0] <= x <= rw[c, k, 1]:
        d = 1
    elif x < rw[c, k, 2] or x > rw[c, k, 3]:
        d = 0
    return d


@nb.njit(**_jit)
def _exact(p, i, c, se, so, zs):
    """(amplitude ADC counts, onset ns) of p[i, c] as float32 values, exactly as
    ``detector.reco.reconstruct_numpy`` computes them, saturated pulses included. The rare path: a call."""
    pe = se * 0.25
    po = so * 0.25
    sat = _rawmax(p, i, c) >= ADC_MAX
    k, s4 = _keymax(p, i, c, se, so)
    best = s4 * 0.25
    amp = 0.0
    t = np.nan
    if not sat:
        if best >= zs:
            wm, wp = _neighbours(p, i, c, k)
            t, amp = _time_amp(k, s4, pe, po, wm, wp, True)
    else:
        amp = best
        t = k * SAMPLE_NS - PEAK_DELAY_NS
        first = -1
        last = -1
        for j in range(NS):
            if p[i, c, j] >= ADC_MAX:
                if first < 0:
                    first = j
                last = j
        j1 = last + 1 if last + 2 < NS else first - 2
        if j1 >= 0:
            v1 = p[i, c, j1] - (pe if (j1 & 1) == 0 else po)
            v2 = p[i, c, j1 + 1] - (pe if ((j1 + 1) & 1) == 0 else po)
            if v1 > zs and v2 > 0.0:
                q = math.sqrt((v2 / v1) * EXP_SAMPLE)
                if q > 1.0:
                    d = SAMPLE_NS / (q - 1.0)
                    tv = template_value(d)
                    if tv > 0.0:
                        amp = v1 / tv
                        t = j1 * SAMPLE_NS - d
        amp = np.float64(np.float32(amp))
        t = np.float64(np.float32(t))
    return amp, t


@nb.njit(**_inl)
def _bounds(se, so, m, zs):
    """(saturated, lo, hi): the float32 amplitude A (ADC counts) of a waveform with pedestal sums se, so
    and raw maximum m lies in [lo, hi]. ``best`` (the pedestal-subtracted maximum) is in
    [m - max(pe, po), m - min(pe, po)], and the reconstruction gives A = 0 if ``best < zs`` else
    ``best <= A <= best / min(template) < AMP_BOUND * best`` (float32 rounding cannot cross ``best``, a
    float32 value). A saturated waveform (m >= ADC_MAX) needs the exact reconstruction."""
    pe = se * 0.25
    po = so * 0.25
    lo = 0.0
    hi = 0.0
    bhi = m - min(pe, po)
    if bhi >= zs:
        blo = m - max(pe, po)
        lo = blo if blo >= zs else 0.0
        hi = bhi * AMP_BOUND
    return m >= ADC_MAX, lo, hi


@nb.njit(**_inl)
def _decide(lo, hi, g, x, above):
    """Decide ``A * g > x`` (``above``) or ``A * g < x`` for every A in [lo, hi]: 1 true, 0 false,
    2 undecided."""
    r = 2
    if above:
        if lo * g > x:
            r = 1
        elif hi * g <= x:
            r = 0
    else:
        if hi * g < x:
            r = 1
        elif lo * g >= x:
            r = 0
    return r


# ====================================================================== pass A
@nb.njit(**_inl)
def _s_counter(p, i, c, thr, zs):
    """S1/S2/S3 of record i: (above threshold, se, so, k, s4, onset known, onset ns). Exact peak in one
    vectorised pass; the amplitude is decided on its bounds [best, AMP_BOUND * best] when they tell."""
    se, so = _peds(p, i, c)
    k, s4 = _keymax(p, i, c, se, so)
    best = s4 * 0.25
    up = False
    known = False
    t = 0.0
    if best + max(se, so) * 0.25 >= ADC_MAX:        # a sample may be saturated: exact reconstruction
        a, t = _exact(p, i, c, se, so, zs)
        up = a >= thr
        known = True
    elif best >= zs:
        if best >= thr:
            up = True
        elif best * AMP_BOUND >= thr:
            wm, wp = _neighbours(p, i, c, k)
            t, a = _time_amp(k, s4, se * 0.25, so * 0.25, wm, wp, True)
            up = a >= thr
            known = True
    return up, se, so, k, s4, known, t


@nb.njit(**_inl)
def _s_in_window(p, i, c, se, so, k, s4, known, t, rw, lo, hi):
    """Is the onset of S-counter c (above threshold) in [lo, hi]? From the window table on the neighbour
    ratio, the onset computed only in the guard bands."""
    inside = lo <= t <= hi
    if not known:
        pe = se * 0.25
        po = so * 0.25
        wm, wp = _neighbours(p, i, c, k)
        ped = pe if ((k + 1) & 1) == 0 else po
        x = ((wp - ped) - (wm - ped)) / (s4 * 0.25)
        d = _window(rw, c, k, x)
        if d == 2:
            tt = _time_amp(k, s4, pe, po, wm, wp, False)[0]
            d = 1 if lo <= tt <= hi else 0
        inside = d == 1
    return inside


@nb.njit(**_jit)
def _wave_block(p, times, b, prev_t, f, ip, rw, bits, cnt):
    """Raw bits (RB_*) of the records of block b and the block's counts (C_*), from the waveforms."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    thr = f[F_THR]
    zs = f[F_ZS]
    lo0, hi0, lo1, hi1 = f[F_LO0], f[F_HI0], f[F_LO1], f[F_HI1]
    lo2, hi2, lo3, hi3 = f[F_LO2], f[F_HI2], f[F_LO3], f[F_HI3]
    gps, gec = f[F_GPS], f[F_GEC]
    phys_en = ip[I_PHYS_EN] != 0
    dim_en = ip[I_DIM_EN] != 0
    n1 = n2 = n3 = n4 = npisi = neot = nph = ndm = 0
    tp = prev_t if b0 == 0 else times[b0 - 1]
    bad = 0
    for i in range(b0, b1):
        # --- counters above threshold (the scalers)
        a0, se0, so0, k0, q0, kn0, t0 = _s_counter(p, i, 0, thr, zs)
        a1, se1, so1, k1, q1, kn1, t1 = _s_counter(p, i, 1, thr, zs)
        a2, se2, so2, k2, q2, kn2, t2 = _s_counter(p, i, 2, thr, zs)
        se3, so3 = _peds(p, i, 3)
        sat3, vlo, vhi = _bounds(se3, so3, _rawmax(p, i, 3), zs)
        a3 = vlo >= thr
        kn3 = False
        t3 = 0.0
        if sat3 or (not a3 and vhi >= thr):
            a, t3 = _exact(p, i, 3, se3, so3, zs)
            a3 = a >= thr
            kn3 = True
        r = np.int64(a0) | (np.int64(a1) << 1) | (np.int64(a2) << 2) | (np.int64(a3) << 3)
        # --- PiSi: S1, S2, S3 in their windows
        pisi = a0 and a1 and a2
        if pisi:
            pisi = _s_in_window(p, i, 0, se0, so0, k0, q0, kn0, t0, rw, lo0, hi0)
            if pisi:
                pisi = _s_in_window(p, i, 1, se1, so1, k1, q1, kn1, t1, rw, lo1, hi1)
                if pisi:
                    pisi = _s_in_window(p, i, 2, se2, so2, k2, q2, kn2, t2, rw, lo2, hi2)
        if pisi:
            r |= RB_PISI
            if a3 and not kn3:
                t3 = _exact(p, i, 3, se3, so3, zs)[1]
            if not (a3 and lo3 <= t3 <= hi3):
                r |= RB_EOT
                if phys_en or dim_en:
                    # --- E_PS > ps_min and E_ECAL < ecal_max, on the amplitude bounds when they tell
                    sep, sop = _peds(p, i, PS_INDEX)
                    satp, plo, phi = _bounds(sep, sop, _rawmax(p, i, PS_INDEX), zs)
                    see, soe = _peds(p, i, ECAL_INDEX)
                    sate, elo, ehi = _bounds(see, soe, _rawmax(p, i, ECAL_INDEX), zs)
                    for trig in range(2):
                        if (phys_en if trig == 0 else dim_en):
                            ps_min = f[F_PSP] if trig == 0 else f[F_PSD]
                            ec_max = f[F_ECP] if trig == 0 else f[F_ECD]
                            d = 2 if satp else _decide(plo, phi, gps, ps_min, True)
                            if d == 2:
                                plo = _exact(p, i, PS_INDEX, sep, sop, zs)[0]
                                phi = plo
                                satp = False
                                d = _decide(plo, phi, gps, ps_min, True)
                            if d == 1:
                                d = 2 if sate else _decide(elo, ehi, gec, ec_max, False)
                                if d == 2:
                                    elo = _exact(p, i, ECAL_INDEX, see, soe, zs)[0]
                                    ehi = elo
                                    sate = False
                                    d = _decide(elo, ehi, gec, ec_max, False)
                                if d == 1:
                                    r |= RB_PHYS if trig == 0 else RB_DIM
        bits[i] = np.uint8(r)
        n1 += r & 1
        n2 += (r >> 1) & 1
        n3 += (r >> 2) & 1
        n4 += (r >> 3) & 1
        npisi += (r >> 4) & 1
        neot += (r >> 5) & 1
        nph += (r >> 6) & 1
        ndm += (r >> 7) & 1
        tau = times[i]
        bad += not (tau >= tp)
        tp = tau
    cnt[b, C_S1] = n1
    cnt[b, C_S2] = n2
    cnt[b, C_S3] = n3
    cnt[b, C_V1] = n4
    cnt[b, C_PISI] = npisi
    cnt[b, C_EOT] = neot
    cnt[b, C_PHYS] = nph
    cnt[b, C_DIM] = ndm
    cnt[b, C_BAD] = bad


@nb.njit(**_jit)
def wave_pass_a(p, times, prev_t, f, ip, rw, bits, cnt):
    """Pass A of the waveform entry, serial."""
    for b in range(cnt.shape[0]):
        _wave_block(p, times, b, prev_t, f, ip, rw, bits, cnt)


@nb.njit(parallel=True, **_jit)
def wave_pass_a_par(p, times, prev_t, f, ip, rw, bits, cnt):
    """Pass A of the waveform entry, prange over blocks."""
    for b in nb.prange(cnt.shape[0]):
        _wave_block(p, times, b, prev_t, f, ip, rw, bits, cnt)


@nb.njit(**_jit)
def _amp_block(a, t, times, b, prev_t, f, ip, bits, cnt):
    """Raw bits and counts of block b from amplitudes and onsets (branch-free body: vectorisable)."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    thr = f[F_THR]
    lo0, hi0, lo1, hi1 = f[F_LO0], f[F_HI0], f[F_LO1], f[F_HI1]
    lo2, hi2, lo3, hi3 = f[F_LO2], f[F_HI2], f[F_LO3], f[F_HI3]
    gps, gec = f[F_GPS], f[F_GEC]
    psp, ecp, psd, ecd = f[F_PSP], f[F_ECP], f[F_PSD], f[F_ECD]
    phys_en = ip[I_PHYS_EN] != 0
    dim_en = ip[I_DIM_EN] != 0
    n1 = n2 = n3 = n4 = npisi = neot = nph = ndm = 0
    tp = prev_t if b0 == 0 else times[b0 - 1]
    bad = 0
    for i in range(b0, b1):
        s1 = np.float64(a[i, 0]) >= thr
        s2 = np.float64(a[i, 1]) >= thr
        s3 = np.float64(a[i, 2]) >= thr
        s4 = np.float64(a[i, 3]) >= thr
        u0 = np.float64(t[i, 0])
        u1 = np.float64(t[i, 1])
        u2 = np.float64(t[i, 2])
        u3 = np.float64(t[i, 3])
        pisi = s1 & s2 & s3 & (u0 >= lo0) & (u0 <= hi0) & (u1 >= lo1) & (u1 <= hi1) & (u2 >= lo2) & (u2 <= hi2)
        v1 = s4 & (u3 >= lo3) & (u3 <= hi3)
        eot = pisi & (v1 ^ True)
        eps = np.float64(a[i, PS_INDEX]) * gps
        eec = np.float64(a[i, ECAL_INDEX]) * gec
        ph = eot & phys_en & (eps > psp) & (eec < ecp)
        dm = eot & dim_en & (eps > psd) & (eec < ecd)
        r = (np.int64(s1) | (np.int64(s2) << 1) | (np.int64(s3) << 2) | (np.int64(s4) << 3)
             | (np.int64(pisi) << 4) | (np.int64(eot) << 5) | (np.int64(ph) << 6) | (np.int64(dm) << 7))
        bits[i] = np.uint8(r)
        n1 += np.int64(s1)
        n2 += np.int64(s2)
        n3 += np.int64(s3)
        n4 += np.int64(s4)
        npisi += np.int64(pisi)
        neot += np.int64(eot)
        nph += np.int64(ph)
        ndm += np.int64(dm)
        tau = times[i]
        bad += np.int64(tau >= tp) ^ 1
        tp = tau
    cnt[b, C_S1] = n1
    cnt[b, C_S2] = n2
    cnt[b, C_S3] = n3
    cnt[b, C_V1] = n4
    cnt[b, C_PISI] = npisi
    cnt[b, C_EOT] = neot
    cnt[b, C_PHYS] = nph
    cnt[b, C_DIM] = ndm
    cnt[b, C_BAD] = bad


@nb.njit(**_jit)
def amp_pass_a(a, t, times, prev_t, f, ip, bits, cnt):
    """Pass A of the amplitude entry, serial."""
    for b in range(cnt.shape[0]):
        _amp_block(a, t, times, b, prev_t, f, ip, bits, cnt)


@nb.njit(parallel=True, **_jit)
def amp_pass_a_par(a, t, times, prev_t, f, ip, bits, cnt):
    """Pass A of the amplitude entry, prange over blocks."""
    for b in nb.prange(cnt.shape[0]):
        _amp_block(a, t, times, b, prev_t, f, ip, bits, cnt)


# ====================================================================== pass B: prescale, random
@nb.njit(**_jit)
def _tick(j, rate):
    return (np.float64(j) * 1e9) / rate


@nb.njit(**_jit)
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


@nb.njit(**_jit)
def _next_tick(prev, rate, n_ticks):
    """Time of the first tick after the one ``prev`` falls in (inf when none is left)."""
    j = _bracket(prev, rate, n_ticks) + 1
    if j >= n_ticks:
        return np.inf
    return _tick(j, rate)


@nb.njit(**_jit)
def _accept_block(bits, times, b, prev_t, cstart, cnt, f, ip, acc):
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    phys_en = ip[I_PHYS_EN] != 0
    beam_en = ip[I_BEAM_EN] != 0
    dim_en = ip[I_DIM_EN] != 0
    pp, pb, pd = ip[I_P_PHYS], ip[I_P_BEAM], ip[I_P_DIM]
    n_ticks = ip[I_NTICKS]
    rate = f[F_RATE]
    cp, cb, cd = cstart[b, 0], cstart[b, 1], cstart[b, 2]
    need = ((phys_en and cp + cnt[b, C_PHYS] >= pp) or (beam_en and cb + cnt[b, C_PISI] >= pb)
            or (dim_en and cd + cnt[b, C_DIM] >= pd))
    next_t = np.inf
    if n_ticks > 0:
        next_t = _next_tick(prev_t if b0 == 0 else times[b0 - 1], rate, n_ticks)
        need = need or times[b1 - 1] >= next_t
    for k in range(N_ACC):
        acc[b, k] = 0
    if not need:
        return
    for i in range(b0, b1):
        r = bits[i]
        m = 0
        if phys_en and (r & RB_PHYS):
            cp += 1
            if cp == pp:
                cp = 0
                m |= M_PHYS
                acc[b, A_PHYS] += 1
        if beam_en and (r & RB_PISI):
            cb += 1
            if cb == pb:
                cb = 0
                m |= M_BEAM
                acc[b, A_BEAM] += 1
        if dim_en and (r & RB_DIM):
            cd += 1
            if cd == pd:
                cd = 0
                m |= M_DIM
                acc[b, A_DIM] += 1
        tau = times[i]
        if tau >= next_t:
            j = _bracket(tau, rate, n_ticks)
            if j < n_ticks:
                m |= M_RAND
                acc[b, A_RAND] += 1
                next_t = _tick(j + 1, rate) if j + 1 < n_ticks else np.inf
            else:
                next_t = np.inf
        bits[i] = np.uint8(m)
        if m:
            acc[b, A_REC] += 1


@nb.njit(**_jit)
def pass_b(bits, times, prev_t, cstart, cnt, f, ip, acc):
    """Pass B (accepted masks into ``bits`` of scanned blocks, counts into ``acc``), serial."""
    for b in range(cnt.shape[0]):
        _accept_block(bits, times, b, prev_t, cstart, cnt, f, ip, acc)


@nb.njit(parallel=True, **_jit)
def pass_b_par(bits, times, prev_t, cstart, cnt, f, ip, acc):
    """Pass B, prange over blocks."""
    for b in nb.prange(cnt.shape[0]):
        _accept_block(bits, times, b, prev_t, cstart, cnt, f, ip, acc)


@nb.njit(**_jit)
def pass_c(bits, acc, offsets, first_index, out_idx, out_mask):
    """Pass C: gather accepted indices (absolute, ``first_index`` + position) and masks."""
    n = bits.shape[0]
    for b in range(acc.shape[0]):
        if acc[b, A_REC] == 0:
            continue
        k = offsets[b]
        for i in range(b * BLOCK, min((b + 1) * BLOCK, n)):
            if bits[i]:
                out_idx[k] = first_index + i
                out_mask[k] = bits[i]
                k += 1


# ====================================================================== driver
class SpillTrigger:
    """Trigger one spill, chunk by chunk as it arrives, with prescale counters and the random-tick state
    carried over: any chunking gives exactly the whole-spill result.

    ``process`` (waveform entry) and ``process_amplitudes`` (amplitude entry) take consecutive chunks;
    ``first_index`` is the spill index of the chunk's first record (it must follow the previous chunk).
    ``finish`` returns the :class:`~trigger.menu.TriggerResult` of the spill. ``parallel`` runs every
    pass as a ``prange`` over blocks (numba's thread count) with identical results.
    """

    def __init__(self, menu: TriggerMenu, parallel: bool = False) -> None:
        if not isinstance(menu, TriggerMenu):
            raise TypeError(f"menu must be a TriggerMenu, got {type(menu).__name__}")
        self.menu = menu
        self.parallel = bool(parallel)
        self._f, self._i = pack(menu)
        self._rw = window_table(menu)
        self._prescale = np.array([menu.physics.prescale, menu.beam.prescale, menu.dimuon.prescale], np.int64)
        self._counter = np.zeros(3, np.int64)    # raw triggers since the last accepted one (phys, beam, dimuon)
        self._prev_t = -np.inf                   # arrival time of the last record seen (ns)
        self._next_index = 0
        self._counts = np.zeros(N_COUNT, np.int64)
        self._acc = np.zeros(N_ACC, np.int64)
        self._idx: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []
        self._done = False

    @property
    def records(self) -> int:
        """Records processed so far."""
        return self._next_index

    def process(self, prims: np.ndarray, arrival_ns: np.ndarray, first_index: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Trigger a chunk of primitives: int16 (n, 6, 32) waveforms of S1, S2, S3, V1, PS_SUM, ECAL_SUM
        and (n,) arrival times (ns). Returns the chunk's accepted spill indices and masks."""
        p, tau = check_primitives(prims, arrival_ns)
        p = np.ascontiguousarray(p)
        tau = np.ascontiguousarray(tau)

        def pass_a(bits: np.ndarray, cnt: np.ndarray) -> None:
            fn = wave_pass_a_par if self.parallel else wave_pass_a
            fn(p, tau, self._prev_t, self._f, self._i, self._rw, bits, cnt)
        return self._chunk(pass_a, tau, first_index)

    def process_amplitudes(self, amplitudes: np.ndarray, onsets_ns: np.ndarray, arrival_ns: np.ndarray,
                           first_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Trigger a chunk of reconstructed records: amplitudes (n, 6) float ADC counts, onsets (n, 6)
        float ns (NaN = no signal), arrival times (n,) ns. Returns the chunk's accepted indices and masks."""
        a, t, tau = check_inputs(amplitudes, onsets_ns, arrival_ns)
        a = np.ascontiguousarray(a)
        t = np.ascontiguousarray(t)
        tau = np.ascontiguousarray(tau)

        def pass_a(bits: np.ndarray, cnt: np.ndarray) -> None:
            fn = amp_pass_a_par if self.parallel else amp_pass_a
            fn(a, t, tau, self._prev_t, self._f, self._i, bits, cnt)
        return self._chunk(pass_a, tau, first_index)

    def _chunk(self, pass_a, tau: np.ndarray, first_index: int | None) -> tuple[np.ndarray, np.ndarray]:
        if self._done:
            raise RuntimeError("SpillTrigger.finish() was called: start a new SpillTrigger for the next spill")
        first = self._next_index if first_index is None else int(first_index)
        if first != self._next_index:
            raise ValueError(f"chunk starts at record {first}, expected {self._next_index}: chunks must be "
                             "consecutive and in order")
        n = tau.shape[0]
        if n == 0:
            return np.empty(0, np.int64), np.empty(0, np.uint8)
        n_blocks = (n + BLOCK - 1) // BLOCK
        bits = np.empty(n, np.uint8)
        cnt = np.empty((n_blocks, N_COUNT), np.int64)
        pass_a(bits, cnt)
        if cnt[:, C_BAD].any():
            prev = np.concatenate([[self._prev_t], tau[:-1]])
            raise unsorted_error(first + int(np.argmax(~(tau >= prev))))
        raw = np.stack([cnt[:, C_PHYS], cnt[:, C_PISI], cnt[:, C_DIM]], axis=1)
        csum = np.cumsum(raw, axis=0)
        cstart = (self._counter[None, :] + csum - raw) % self._prescale[None, :]
        acc = np.empty((n_blocks, N_ACC), np.int64)
        (pass_b_par if self.parallel else pass_b)(bits, tau, self._prev_t, cstart, cnt, self._f, self._i, acc)
        offsets = np.zeros(n_blocks + 1, np.int64)
        np.cumsum(acc[:, A_REC], out=offsets[1:])
        idx = np.empty(offsets[-1], np.int64)
        mask = np.empty(offsets[-1], np.uint8)
        if idx.size:
            pass_c(bits, acc, offsets, first, idx, mask)
        # commit the state only now that the chunk is known good
        self._counter = (self._counter + csum[-1]) % self._prescale
        self._prev_t = float(tau[-1])
        self._next_index = first + n
        self._counts += cnt.sum(axis=0)
        self._acc += acc.sum(axis=0)
        self._idx.append(idx)
        self._mask.append(mask)
        return idx, mask

    def finish(self) -> TriggerResult:
        """The spill's result (accepted indices, masks, scalers); the object cannot be used afterwards."""
        self._done = True
        m = self.menu
        c, a = self._counts, self._acc
        sc = empty_scalers()
        sc["records"] = self._next_index
        for k, name in enumerate(COUNTER_NAMES):
            sc[name] = int(c[C_S1 + k])
        sc["PiSi"] = int(c[C_PISI])
        sc["EOT"] = int(c[C_EOT])
        sc["physics_raw"] = int(c[C_PHYS])
        sc["physics_accepted"] = int(a[A_PHYS])
        sc["beam_raw"] = int(c[C_PISI]) if m.beam.enabled else 0
        sc["beam_accepted"] = int(a[A_BEAM])
        sc["random_raw"] = m.n_random_ticks
        sc["random_accepted"] = int(a[A_RAND])
        sc["dimuon_raw"] = int(c[C_DIM])
        sc["dimuon_accepted"] = int(a[A_DIM])
        idx = np.concatenate(self._idx) if self._idx else np.empty(0, np.int64)
        mask = np.concatenate(self._mask) if self._mask else np.empty(0, np.uint8)
        sc["accepted"] = int(idx.size)
        return TriggerResult(idx, mask, sc)


def trigger_waveforms(menu: TriggerMenu, prims: np.ndarray, arrival_ns: np.ndarray,
                      parallel: bool = False) -> TriggerResult:
    """Trigger a whole spill from its primitives (int16 (N, 6, 32), arrival times (N,) ns)."""
    st = SpillTrigger(menu, parallel)
    st.process(prims, arrival_ns, 0)
    return st.finish()


def trigger_amplitudes(menu: TriggerMenu, amplitudes: np.ndarray, onsets_ns: np.ndarray,
                       arrival_ns: np.ndarray, parallel: bool = False) -> TriggerResult:
    """Trigger a whole spill from amplitudes (N, 6) ADC counts, onsets (N, 6) ns, arrival times (N,) ns."""
    st = SpillTrigger(menu, parallel)
    st.process_amplitudes(amplitudes, onsets_ns, arrival_ns, 0)
    return st.finish()


def warm_up() -> float:
    """Compile (or load from the on-disk cache) every kernel with the real dtypes on tiny arrays; call
    once at start-up. Returns the seconds it took."""
    import time
    t = time.perf_counter()
    menu = TriggerMenu()
    prims = np.zeros((3, ch.N_TRIGGER_CHANNELS, NS), np.int16)
    tau = np.array([0.0, 1.0, 2.0])
    for par in (False, True):
        trigger_waveforms(menu, prims, tau, par)
        for dt in (np.float32, np.float64):
            a = np.zeros((3, ch.N_TRIGGER_CHANNELS), dt)
            trigger_amplitudes(menu, a, a, tau, par)
    return time.perf_counter() - t
