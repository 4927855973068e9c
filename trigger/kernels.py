"""The numba online trigger, evaluated per spill (definitions in :mod:`trigger.menu`, numpy oracle in
:mod:`trigger.reference`). Public API: :class:`SpillTrigger` (chunked, state carried), the one-shot
:func:`trigger_waveforms` / :func:`trigger_amplitudes`, and :func:`warm_up`.

Two entries, the same decisions for the same physics (both are tested bit-exact against the oracle):

- **waveform entry** (online): primitives int16 (N, 6, 32) + arrival times (N,) ns. A channel is
  reconstructed only as far as the decision needs, with the arithmetic of
  ``detector.reco.reconstruct_numpy`` wherever a number is computed:

  * every record starts with :func:`trigger.simd.record_summary` (explicit LLVM vectors, the six channels
    reduced together): the exact pedestal-subtracted peak of each channel, the peak sample of S1..S3 and
    the saturation bits; the next records' cache lines are prefetched (:data:`PREFETCH_RECORDS`);
  * an unsaturated amplitude A satisfies ``best <= A <= AMP_BOUND * best`` (``best`` the peak value), so a
    threshold or an energy cut is decided without the template fit (exp) unless the cut lies in that
    band; saturated channels and the band take the exact reconstruction (:func:`_exact`, a call);
  * S1..S3 coincidence window: decided on the neighbour ratio ``r`` against per-(counter, peak sample)
    bounds (:func:`window_table`), by the interpolated onset only in a 1e-9 guard band;
  * PS/ECAL only for PiSi AND NOT V1 records.
- **amplitude entry** (offline re-trigger): amplitudes (N, 6) ADC counts + onsets (N, 6) ns (NaN = no
  signal) + arrival times (N,), compared against thresholds pre-computed exactly in the inputs' own
  dtype (:func:`amp_thresholds`): a branch-free loop that vectorises when each channel is contiguous
  (columnar, i.e. Fortran-order (N, 6), input; row-major input works, ~4x slower).

A chunk is processed in three passes over blocks of :data:`BLOCK` records (serial, or ``prange`` over
blocks when ``parallel``): (A) per-record raw bits (RB_*) + per-block counts, no per-event scatter;
(B) per block, from the block-start prescale counters (exclusive prefix sums of the counts) and the
random-tick state (a function of the previous record's time only), the accepted masks, touching only
blocks where a prescale counter wraps or a tick falls; (C) gather of the accepted indices. Serial,
parallel and any chunking give bit-identical results.

Numba notes (measured on this code): hot helpers are ``inline="always"`` (numba calls are not inlined by
LLVM); kernels that allocate nothing are compiled with numba's private ``_nrt=False`` option (no atomic
reference counting of arrays in the hot loop); block loops run over block views from index 0 (no
negative-index wraparound code, which otherwise blocks vectorisation); per-channel loops run to the
run-time ``p.shape[2]`` (a constant trip count gets unrolled into branches instead of vectorised).

The only possible difference to the numpy oracle: numpy's SIMD ``exp`` and libm's ``exp`` (numba)
differ by 1 ulp (float64) for a few % of arguments; that reaches a float32 amplitude with probability
~1e-9 per exactly-reconstructed amplitude (rare: only near a cut), and a decision only if that
amplitude then sits exactly on the cut.
"""
from __future__ import annotations

import functools
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
from .simd import prefetch_record, record_summary

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
# table point, so one well-predicted comparison finds the segment; 32 KB, so that it stays in cache next
# to the streamed spill); ITAB rows = xp[j], slope[j], fp[j], xp[j + 1] (one cache line per lookup)
N_GUIDE = 1 << 13
GUIDE_X0 = float(XP[0])
GUIDE_INV = N_GUIDE / float(XP[-1] - XP[0])
GUIDE = np.clip(np.searchsorted(XP, GUIDE_X0 + np.arange(N_GUIDE) / GUIDE_INV, side="right") - 1,
                0, N_XP - 2).astype(np.int32)
ITAB = np.ascontiguousarray(np.stack([XP[:-1], SLOPE, FP[:-1], XP[1:]], axis=1))
assert np.diff(XP).min() * GUIDE_INV > 1.0, "a guide bin must hold at most one knot"


def _amp_over_peak_table(n_bins: int, margin: float) -> np.ndarray:
    """Per bin of the neighbour ratio r (n_bins uniform bins over [XP[0], XP[-1]]; r outside clamps to
    the end bins, as np.interp clamps delta): [lo, hi] bounding amplitude / peak value = 1 / template at
    the interpolated delta, widened by ``margin`` (relative) for the float32 rounding of the amplitude and
    the rounding of r, delta and exp. delta(r) is piecewise linear (extremes at the bin ends or at knots);
    1 / template is log-convex in the onset (minimum 1 at delta = 0), so its extremes over a delta range are
    at the range's ends or at 0."""
    edges = XP[0] + np.arange(n_bins + 1) * ((XP[-1] - XP[0]) / n_bins)
    d_edge = np.interp(edges, XP, FP)
    which = np.clip(np.searchsorted(edges, XP, side="right") - 1, 0, n_bins - 1)
    d_lo = np.minimum(d_edge[:-1], d_edge[1:])
    d_hi = np.maximum(d_edge[:-1], d_edge[1:])
    np.minimum.at(d_lo, which, FP)
    np.maximum.at(d_hi, which, FP)
    inv = lambda d: 1.0 / template(PEAK_DELAY_NS - d * SAMPLE_NS)  # noqa: E731
    lo = np.where((d_lo <= 0.0) & (d_hi >= 0.0), 1.0, np.minimum(inv(d_lo), inv(d_hi)))
    hi = np.maximum(inv(d_lo), inv(d_hi))
    tab = np.stack([lo * (1.0 - margin), hi * (1.0 + margin)], axis=1)
    assert np.all(tab[:, 0] >= 1.0 - 2 * margin) and np.all(tab[:, 1] < AMP_BOUND)
    return np.ascontiguousarray(tab)


#: amplitude bounds from the neighbour ratio (32 KB, bins at most 4.2e-4 wide): decides a cut in AMP_BOUND's band
#: without the template (exp) unless the cut is within that of the amplitude
N_AMP_BINS = 2048
AMP_RANGE = _amp_over_peak_table(N_AMP_BINS, 1e-6)
AMP_X0 = float(XP[0])
AMP_X1 = float(XP[-1])
AMP_INV = N_AMP_BINS / (AMP_X1 - AMP_X0)
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
#: kernels that allocate nothing run without NRT (numba's private ``_nrt`` target option): no reference
#: counting of the arrays they pass around in the hot loop (atomic operations). A numba without the option
#: compiles them with NRT: the same results, somewhat slower.
try:
    from numba.core.cpu import CPUTargetOptions
    _HAS_NRT_OPTION = hasattr(CPUTargetOptions, "_nrt")
except ImportError:                     # pragma: no cover - numba internals moved
    _HAS_NRT_OPTION = False
_jit_nonrt = dict(_nrt=False, **_jit) if _HAS_NRT_OPTION else dict(_jit)
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


@functools.lru_cache(maxsize=32)
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
    tab.setflags(write=False)      # cached per menu
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
def _keymax(p, i, c):
    """Peak sample k (numpy's argmax: the first maximum) of the pedestal-subtracted samples of p[i, c],
    4x that maximum, and the pedestal sums (se, so), exactly, in one vectorised pass over int32 keys
    ``32 * (4 w_j - 4 ped_j) + (31 - j)`` (|key| < 2^24 for any int16 input). The sums are computed here
    in int32 (not passed in as int64): LLVM then keeps the whole loop in int32 lanes."""
    se32 = np.int32(np.int32(p[i, c, 0]) + np.int32(p[i, c, 2]) + np.int32(p[i, c, 4]) + np.int32(p[i, c, 6]))
    so32 = np.int32(np.int32(p[i, c, 1]) + np.int32(p[i, c, 3]) + np.int32(p[i, c, 5]) + np.int32(p[i, c, 7]))
    m = np.int32(-2147483648)
    for j in range(p.shape[2]):
        key = np.int32(np.int32(128) * np.int32(p[i, c, j]) - np.int32(32) * (se32 if (j & 1) == 0 else so32)
                       + KEY_J[j])
        m = key if key > m else m
    mm = np.int64(m)
    return np.int64(NS - 1) - (mm & 31), mm >> 5, np.int64(se32), np.int64(so32)


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
def _window(rw, c, k, diff, best):
    """In-window decision of counter c from the window table on the ratio x = diff / best (best > 0):
    1 in, 0 out, 2 undecided (guard band). Compared as ``diff`` against ``best * r``, without the division:
    the two differ only within a few ulp of a bound, deep inside the 1e-9 guard band around each
    crossing, so the in and out verdicts are the same."""
    d = 2
    if best * rw[c, k, 0] <= diff <= best * rw[c, k, 1]:
        d = 1
    elif diff < best * rw[c, k, 2] or diff > best * rw[c, k, 3]:
        d = 0
    return d


@nb.njit(**_jit_nonrt)
def _exact(p, i, c, zs):
    """(amplitude ADC counts, onset ns) of p[i, c] as float32 values, exactly as
    ``detector.reco.reconstruct_numpy`` computes them, saturated pulses included. The rare path: a call."""
    sat = _rawmax(p, i, c) >= ADC_MAX
    k, s4, se, so = _keymax(p, i, c)
    pe = se * 0.25
    po = so * 0.25
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
def _amp_bounds(s4, zs):
    """(lo, hi): the float32 amplitude A (ADC counts) of an unsaturated waveform whose pedestal-subtracted
    peak is ``best = s4 / 4`` lies in [lo, hi]: the reconstruction gives A = 0 if ``best < zs``, else
    ``best <= A <= best / min(template) < AMP_BOUND * best`` (float32 rounding cannot cross ``best``, a
    float32 value)."""
    best = s4 * 0.25
    lo = 0.0
    hi = 0.0
    if best >= zs:
        lo = best
        hi = best * AMP_BOUND
    return lo, hi


@nb.njit(**_inl)
def _amp_range(p, i, c, k, s4):
    """(lo, hi) bounding the float32 amplitude A (ADC counts) of the unsaturated pulse p[i, c] with peak
    sample k and 4x peak value s4 > 0, from the neighbour ratio and :data:`AMP_RANGE` (no template, no
    exp): at an edge sample A is the peak value itself."""
    best = s4 * 0.25
    lo = best
    hi = best
    if k > 0 and k < NS - 1:
        wm, wp = _neighbours(p, i, c, k)
        x = min(max(np.float64(wp - wm) / best, AMP_X0), AMP_X1)
        g = min(int((x - AMP_X0) * AMP_INV), N_AMP_BINS - 1)
        lo = best * AMP_RANGE[g, 0]
        hi = best * AMP_RANGE[g, 1]
    return lo, hi


@nb.njit(**_jit_nonrt)
def _sum_amp_range(p, i, c, s4):
    """:func:`_amp_range` of a channel whose peak sample is not known yet (PS, ECAL sums): a call, for the
    few records whose energy is within AMP_BOUND of a cut."""
    return _amp_range(p, i, c, _keymax(p, i, c)[0], s4)


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
def _s_counter(p, i, c, sat, k, s4, thr, zs):
    """S1/S2/S3 of record i with exact peak (sample k, 4x value s4) and saturation flag: (above threshold,
    onset known, onset ns). The amplitude is decided on its bounds [best, AMP_BOUND * best] when they tell."""
    best = s4 * 0.25
    up = False
    known = False
    t = 0.0
    if sat:                                         # exact reconstruction of the saturated pulse
        a, t = _exact(p, i, c, zs)
        up = a >= thr
        known = True
    elif best >= zs:
        if best >= thr:
            up = True
        elif best * AMP_BOUND >= thr:
            lo, hi = _amp_range(p, i, c, k, s4)
            below = _decide(lo, hi, 1.0, thr, False)        # 1: A < thr, 0: A >= thr, 2: too close
            up = below == 0
            if below == 2:
                t, a = _s_fit(p, i, c, k, s4, True)
                up = a >= thr
                known = True
    return up, known, t


@nb.njit(**_jit_nonrt)
def _s_fit(p, i, c, k, s4, need_amp):
    """(onset ns, amplitude ADC counts) of the unsaturated pulse p[i, c] (peak k, 4x value s4), the
    amplitude only with ``need_amp`` (else the peak value: no exp). A call, for the rare records: the
    amplitude within 4.2e-4 of the threshold, or the onset in a window's guard band."""
    se, so = _peds(p, i, c)
    wm, wp = _neighbours(p, i, c, k)
    return _time_amp(k, s4, se * 0.25, so * 0.25, wm, wp, need_amp)


@nb.njit(**_inl)
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


@nb.njit(**_inl)
def _s_onset_in(p, i, c, k, s4, lo, hi):
    """The guard-band case of :func:`_s_window`: the onset from the interpolation, in [lo, hi]?"""
    tt = _s_fit(p, i, c, k, s4, False)[0]
    return 1 if lo <= tt <= hi else 0


#: records ahead of the one being triggered whose cache lines are prefetched (6 KB: measured best of
#: 2..64 on the 5e6-record spill; without it the summary's loads and the memory stream do not overlap)
PREFETCH_RECORDS = 16


@nb.njit(**_jit_nonrt)
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
    bits_all, times_all = bits, times
    # block views: loop indices from 0 are provably non-negative (no wraparound code in the hot loop)
    p = p[b0:b1]
    bits = bits[b0:b1]
    for i in range(b1 - b0):
        prefetch_record(p, i + PREFETCH_RECORDS)
        # exact peaks (4x value) of the six channels, peak samples of S1..S3, saturation bits
        q0, q1, q2, q3, qp, qe, k0, k1, k2, sat = record_summary(p, i)
        # --- counters above threshold (the scalers)
        a0, kn0, t0 = _s_counter(p, i, 0, (sat & 1) != 0, k0, q0, thr, zs)
        a1, kn1, t1 = _s_counter(p, i, 1, (sat & 2) != 0, k1, q1, thr, zs)
        a2, kn2, t2 = _s_counter(p, i, 2, (sat & 4) != 0, k2, q2, thr, zs)
        sat3 = (sat & 8) != 0
        vlo, vhi = _amp_bounds(q3, zs)
        a3 = vlo >= thr
        kn3 = False
        t3 = 0.0
        if sat3 or (not a3 and vhi >= thr):
            a, t3 = _exact(p, i, 3, zs)
            a3 = a >= thr
            kn3 = True
        r = np.int64(a0) | (np.int64(a1) << 1) | (np.int64(a2) << 2) | (np.int64(a3) << 3)
        # --- PiSi: S1, S2, S3 in their windows (the guard band, rare, computes the onset)
        d0 = _s_window(p, i, 0, k0, q0, kn0, t0, rw, lo0, hi0)
        d1 = _s_window(p, i, 1, k1, q1, kn1, t1, rw, lo1, hi1)
        d2 = _s_window(p, i, 2, k2, q2, kn2, t2, rw, lo2, hi2)
        pisi = a0 & a1 & a2
        if pisi and (d0 | d1 | d2) >= 2:
            if d0 == 2:
                d0 = _s_onset_in(p, i, 0, k0, q0, lo0, hi0)
            if d1 == 2:
                d1 = _s_onset_in(p, i, 1, k1, q1, lo1, hi1)
            if d2 == 2:
                d2 = _s_onset_in(p, i, 2, k2, q2, lo2, hi2)
        pisi = pisi & ((d0 & d1 & d2) == 1)
        if pisi:
            r |= RB_PISI
            if a3 and not kn3:
                t3 = _exact(p, i, 3, zs)[1]
            if not (a3 and lo3 <= t3 <= hi3):
                r |= RB_EOT
                if phys_en or dim_en:
                    # --- E_PS > ps_min and E_ECAL < ecal_max, on the amplitude bounds when they tell
                    satp = (sat & (1 << PS_INDEX)) != 0
                    plo, phi = _amp_bounds(qp, zs)
                    sate = (sat & (1 << ECAL_INDEX)) != 0
                    elo, ehi = _amp_bounds(qe, zs)
                    ps_fine = ec_fine = False            # bounds already refined by the neighbour ratio
                    for trig in range(2):
                        if (phys_en if trig == 0 else dim_en):
                            ps_min = f[F_PSP] if trig == 0 else f[F_PSD]
                            ec_max = f[F_ECP] if trig == 0 else f[F_ECD]
                            d = 2 if satp else _decide(plo, phi, gps, ps_min, True)
                            if d == 2 and not satp and plo > 0.0 and not ps_fine:
                                plo, phi = _sum_amp_range(p, i, PS_INDEX, qp)
                                ps_fine = True
                                d = _decide(plo, phi, gps, ps_min, True)
                            if d == 2:
                                plo = _exact(p, i, PS_INDEX, zs)[0]
                                phi = plo
                                satp = False
                                d = _decide(plo, phi, gps, ps_min, True)
                            if d == 1:
                                d = 2 if sate else _decide(elo, ehi, gec, ec_max, False)
                                if d == 2 and not sate and elo > 0.0 and not ec_fine:
                                    elo, ehi = _sum_amp_range(p, i, ECAL_INDEX, qe)
                                    ec_fine = True
                                    d = _decide(elo, ehi, gec, ec_max, False)
                                if d == 2:
                                    elo = _exact(p, i, ECAL_INDEX, zs)[0]
                                    ehi = elo
                                    sate = False
                                    d = _decide(elo, ehi, gec, ec_max, False)
                                if d == 1:
                                    r |= RB_PHYS if trig == 0 else RB_DIM
        bits[i] = np.uint8(r)
    _block_counts(bits_all, times_all, b, b0, b1, prev_t, cnt)


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


@nb.njit(**_jit_nonrt)
def _amp_block(ac, tc, times, b, prev_t, tha, tht, ip, bits, cnt):
    """Raw bits and counts of block b from amplitude columns ``ac`` (6 arrays) and onset columns ``tc``
    (S1, S2, S3, V1): comparisons against thresholds in the inputs' own dtypes (:func:`amp_thresholds`),
    a branch-free body that vectorises when each column is contiguous (columnar / Fortran-order input);
    then the counts and the time-order check."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    thr, psp, ecp, psd, ecd = tha[0], tha[1], tha[2], tha[3], tha[4]
    lo0, hi0, lo1, hi1 = tht[0], tht[1], tht[2], tht[3]
    lo2, hi2, lo3, hi3 = tht[4], tht[5], tht[6], tht[7]
    phys_en = ip[I_PHYS_EN] != 0
    dim_en = ip[I_DIM_EN] != 0
    # block views: loop indices from 0 are provably non-negative (no wraparound code: it vectorises)
    a0, a1, a2, a3, a4, a5 = ac[0][b0:b1], ac[1][b0:b1], ac[2][b0:b1], ac[3][b0:b1], ac[4][b0:b1], ac[5][b0:b1]
    t0, t1, t2, t3 = tc[0][b0:b1], tc[1][b0:b1], tc[2][b0:b1], tc[3][b0:b1]
    out = bits[b0:b1]
    for i in range(b1 - b0):
        s1 = a0[i] >= thr
        s2 = a1[i] >= thr
        s3 = a2[i] >= thr
        s4 = a3[i] >= thr
        pisi = (s1 & s2 & s3 & (t0[i] >= lo0) & (t0[i] < hi0) & (t1[i] >= lo1) & (t1[i] < hi1)
                & (t2[i] >= lo2) & (t2[i] < hi2))
        v1 = s4 & (t3[i] >= lo3) & (t3[i] < hi3)
        eot = pisi & (v1 ^ True)
        ph = eot & phys_en & (a4[i] >= psp) & (a5[i] < ecp)
        dm = eot & dim_en & (a4[i] >= psd) & (a5[i] < ecd)
        out[i] = np.uint8(np.uint8(s1) | (np.uint8(s2) << np.uint8(1)) | (np.uint8(s3) << np.uint8(2))
                           | (np.uint8(s4) << np.uint8(3)) | (np.uint8(pisi) << np.uint8(4))
                           | (np.uint8(eot) << np.uint8(5)) | (np.uint8(ph) << np.uint8(6))
                           | (np.uint8(dm) << np.uint8(7)))
    _block_counts(bits, times, b, b0, b1, prev_t, cnt)


@nb.njit(**_jit_nonrt)
def _block_counts(bits, times, b, b0, b1, prev_t, cnt):
    """Counts C_S1..C_DIM of the raw bits of block b (SWAR: byte lanes of a uint64 view summed, at most
    BLOCK / 8 = 128 per lane) and C_BAD, the records whose arrival time is not at or after the previous
    one's."""
    m = b1 - b0
    nw = m >> 3
    words = bits[b0:b0 + 8 * nw].view(np.uint64)
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
            c += (bits[i] >> k) & 1
        cnt[b, k] = c
    tt = times[b0:b1]
    bad = 0 if (m > 0 and tt[0] >= (prev_t if b0 == 0 else times[b0 - 1])) else 1
    for i in range(1, m):
        bad += np.int64(tt[i] >= tt[i - 1]) ^ 1
    cnt[b, C_BAD] = bad


@nb.njit(**_jit)
def amp_pass_a(ac, tc, times, prev_t, tha, tht, ip, bits, cnt):
    """Pass A of the amplitude entry, serial."""
    for b in range(cnt.shape[0]):
        _amp_block(ac, tc, times, b, prev_t, tha, tht, ip, bits, cnt)


@nb.njit(parallel=True, **_jit)
def amp_pass_a_par(ac, tc, times, prev_t, tha, tht, ip, bits, cnt):
    """Pass A of the amplitude entry, prange over blocks."""
    for b in nb.prange(cnt.shape[0]):
        _amp_block(ac, tc, times, b, prev_t, tha, tht, ip, bits, cnt)


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

    - amplitudes (``a_dtype``): ``A >= thr`` <=> ``float64(A) >= counter_threshold_adc``;
      ``A >= ps`` <=> ``float64(A) * g_PS > ps_min_gev``; ``A < ec`` <=> ``float64(A) * g_ECAL < ecal_max_gev``
      (physics, then dimuon);
    - onsets (``t_dtype``), per counter: ``t >= lo`` and ``t < hi'`` <=> ``t0 - w <= float64(t) <= t0 + w``.
    """
    g_ps, g_ec = menu.gev_per_count[PS_INDEX], menu.gev_per_count[ECAL_INDEX]
    thr = menu.counter_threshold_adc
    tha = [_first_true(lambda x: x >= thr, a_dtype)]
    for trg in (menu.physics, menu.dimuon):
        tha.append(_first_true(lambda x, m=trg.ps_min_gev: x * g_ps > m, a_dtype))
        tha.append(_first_true(lambda x, m=trg.ecal_max_gev: x * g_ec >= m, a_dtype))
    tht = []
    for c in range(4):
        lo, hi = menu.counter_window_ns(c)
        tht.append(_first_true(lambda x, v=lo: x >= v, t_dtype))
        tht.append(_first_true(lambda x, v=hi: x > v, t_dtype))
    out = np.array(tha, dtype=a_dtype), np.array(tht, dtype=t_dtype)
    for x in out:
        x.setflags(write=False)    # cached per menu and dtypes
    return out


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


ONES8 = np.uint64(0x0101010101010101)


@nb.njit(**_inl)
def _byte_sum(w):
    """Sum of the 8 bytes of w when each byte is 0 or 1."""
    return np.int64((w * ONES8) >> np.uint64(56))


@nb.njit(**_inl)
def _scan_prescaled(bits, amask, b0, b1, shift, c, p, total, m):
    """Accept every p-th record with raw bit ``1 << shift`` in [b0, b1): the counter stands at c raw
    triggers since the last accepted one and the block holds ``total`` raw ones, so (c + total) // p are
    accepted; OR ``m`` into amask there. Eight records at a time (SWAR on a uint64 view of the bits) are
    skipped while the next accept is not among them; the scan stops at the last accept. Returns the
    number accepted."""
    n_exp = (c + total) // p
    need = p - c
    n_acc = 0
    nw = (b1 - b0) >> 3
    words = bits[b0:b0 + 8 * nw].view(np.uint64)
    sh = np.uint64(shift)
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


@nb.njit(**_inl)
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


@nb.njit(**_jit_nonrt)
def _accept_block(bits, amask, times, b, prev_t, cstart, cnt, f, ip, acc):
    """Accepted masks of block b (into ``amask``, zeroed here for blocks with accepts) and its accepted
    counts (A_*), from the block-start prescale counters and the previous record's time."""
    n = times.shape[0]
    b0 = b * BLOCK
    b1 = min(b0 + BLOCK, n)
    for k in range(N_ACC):
        acc[b, k] = 0
    phys_en = ip[I_PHYS_EN] != 0
    beam_en = ip[I_BEAM_EN] != 0
    dim_en = ip[I_DIM_EN] != 0
    pp, pb, pd = ip[I_P_PHYS], ip[I_P_BEAM], ip[I_P_DIM]
    n_ticks = ip[I_NTICKS]
    rate = f[F_RATE]
    cp, cb, cd = cstart[b, 0], cstart[b, 1], cstart[b, 2]
    need_p = phys_en and cp + cnt[b, C_PHYS] >= pp
    need_b = beam_en and cb + cnt[b, C_PISI] >= pb
    need_d = dim_en and cd + cnt[b, C_DIM] >= pd
    next_t = np.inf
    if n_ticks > 0:
        next_t = _next_tick(prev_t if b0 == 0 else times[b0 - 1], rate, n_ticks)
    need_r = times[b1 - 1] >= next_t
    if not (need_p or need_b or need_d or need_r):
        return
    for i in range(b0, b1):
        amask[i] = 0
    if need_p:
        acc[b, A_PHYS] = _scan_prescaled(bits, amask, b0, b1, 6, cp, pp, cnt[b, C_PHYS], M_PHYS)
    if need_b:
        acc[b, A_BEAM] = _scan_prescaled(bits, amask, b0, b1, 4, cb, pb, cnt[b, C_PISI], M_BEAM)
    if need_d:
        acc[b, A_DIM] = _scan_prescaled(bits, amask, b0, b1, 7, cd, pd, cnt[b, C_DIM], M_DIM)
    if need_r:
        # sorted times: tick j accepts the first record at or after t_j if it comes before t_(j+1)
        i = _first_at_or_after(times, b0, b1, next_t)
        while i < b1:
            j = _bracket(times[i], rate, n_ticks)
            if j >= n_ticks:
                break
            amask[i] |= M_RAND
            acc[b, A_RAND] += 1
            if j + 1 >= n_ticks:
                break
            i = _first_at_or_after(times, i + 1, b1, _tick(j + 1, rate))
    n_rec = 0
    for i in range(b0, b1):
        n_rec += amask[i] != 0
    acc[b, A_REC] = n_rec


@nb.njit(**_jit)
def pass_b(bits, amask, times, prev_t, cstart, cnt, f, ip, acc):
    """Pass B (accepted masks into ``amask``, counts into ``acc``), serial."""
    for b in range(cnt.shape[0]):
        _accept_block(bits, amask, times, b, prev_t, cstart, cnt, f, ip, acc)


@nb.njit(parallel=True, **_jit)
def pass_b_par(bits, amask, times, prev_t, cstart, cnt, f, ip, acc):
    """Pass B, prange over blocks."""
    for b in nb.prange(cnt.shape[0]):
        _accept_block(bits, amask, times, b, prev_t, cstart, cnt, f, ip, acc)


@nb.njit(**_jit_nonrt)
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
        words = amask[b0:b0 + 8 * nw].view(np.uint64)
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
            fn(p, tau, self._prev_t, self._f, self._i, window_table(self.menu), bits, cnt)
        return self._chunk(pass_a, tau, first_index)

    def process_amplitudes(self, amplitudes: np.ndarray, onsets_ns: np.ndarray, arrival_ns: np.ndarray,
                           first_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Trigger a chunk of reconstructed records: amplitudes (n, 6) float ADC counts, onsets (n, 6)
        float ns (NaN = no signal), arrival times (n,) ns. Returns the chunk's accepted indices and masks."""
        a, t, tau = check_inputs(amplitudes, onsets_ns, arrival_ns)
        tau = np.ascontiguousarray(tau)
        tha, tht = amp_thresholds(self.menu, a.dtype, t.dtype)

        def pass_a(bits: np.ndarray, cnt: np.ndarray) -> None:
            fn = amp_pass_a_par if self.parallel else amp_pass_a
            fn(tuple(a[:, c] for c in range(6)), tuple(t[:, c] for c in range(4)), tau, self._prev_t, tha, tht,
               self._i, bits, cnt)
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
        amask = np.empty(n, np.uint8)      # written (zeroed first) only in blocks with accepted records
        (pass_b_par if self.parallel else pass_b)(bits, amask, tau, self._prev_t, cstart, cnt, self._f, self._i,
                                                  acc)
        offsets = np.zeros(n_blocks + 1, np.int64)
        np.cumsum(acc[:, A_REC], out=offsets[1:])
        idx = np.empty(offsets[-1], np.int64)
        mask = np.empty(offsets[-1], np.uint8)
        if idx.size:
            pass_c(amask, acc, offsets, first, idx, mask)
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


def warm_up(amplitude: bool = True) -> float:
    """Compile (or load from the on-disk cache: a few hundred ms) every kernel with the real dtypes on
    tiny arrays: the waveform entry (int16 primitives, float64 times) and, with ``amplitude``, the
    amplitude entry (float32 and float64, columnar and row-major), serial and parallel. Call once at
    start-up. Returns the seconds it took."""
    import time
    t = time.perf_counter()
    menu = TriggerMenu()
    prims = np.zeros((3, ch.N_TRIGGER_CHANNELS, NS), np.int16)
    prims[0, :3, 8:] = 300                    # one PiSi record, accepted by the random tick at t = 0
    tau = np.array([0.0, 1.0, 2.0])
    for par in (False, True):
        trigger_waveforms(menu, prims, tau, par)
        if amplitude:
            for dt in (np.float32, np.float64):
                for order in ("C", "F"):
                    a = np.zeros((3, ch.N_TRIGGER_CHANNELS), dt, order=order)
                    trigger_amplitudes(menu, a, a, tau, par)
    return time.perf_counter() - t
