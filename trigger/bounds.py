"""Per-channel pieces of the waveform trigger: the exact reconstruction of one channel (the helpers of
:mod:`detector.reco`, rounded to float32 as ``detector.reco.reconstruct_numpy`` returns it) and the bounds that
decide a cut without it.

- an unsaturated amplitude A satisfies ``best <= A <= AMP_BOUND * best`` (``best`` the peak value), so a
  threshold or an energy cut is decided without the template fit (exp) unless the cut lies in that band;
  inside the band the neighbour ratio bounds A to 4.2e-4 (:data:`AMP_RANGE`); a saturated channel's A is
  at least the first sample of its closed form's pair (:func:`_sat_amp_low`); what is still undecided
  takes the exact reconstruction (:func:`exact`, a call);
- S1..S3 coincidence window: decided on the neighbour ratio ``r`` against per-(counter, peak sample)
  bounds (:func:`window_table`), by the interpolated onset only in a 1e-9 guard band.
"""

from __future__ import annotations

import functools

import numba as nb
import numpy as np

from detector import channels as ch
from detector.pulse import PEAK_DELAY_NS, template
from detector.reco import PEAK_DELTA, PEAK_R, peak_fit, saturated_amp_low, saturated_fit

from .jit import INLINE, JIT_NONRT
from .menu import TriggerMenu

NS = ch.N_SAMPLES
SAMPLE_NS = ch.SAMPLE_NS
ADC_MAX = ch.ADC_MAX
XP = np.ascontiguousarray(PEAK_R, dtype=np.float64)
FP = np.ascontiguousarray(PEAK_DELTA, dtype=np.float64)

#: upper bound of reconstructed amplitude / peak sample: 1 / min template at the table's delta range
_TV_MIN = float(template(PEAK_DELAY_NS - np.concatenate([PEAK_DELTA, PEAK_DELTA[[0, -1]]]) * SAMPLE_NS).min())
AMP_BOUND = 1.3
assert 1.0 / _TV_MIN < AMP_BOUND / 1.001, "amplitude bound too tight for the peak table"


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


def _onset32(k: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Onset (ns) as numpy's reconstruction returns it (float32 value) for inner peak sample k and
    neighbour ratio r = (s[k+1] - s[k-1]) / s[k]."""
    return ((k + np.interp(r, XP, FP)) * SAMPLE_NS - PEAK_DELAY_NS).astype(np.float32).astype(np.float64)


@functools.lru_cache(maxsize=32)
def window_table(menu: TriggerMenu) -> np.ndarray:
    """Per counter S1..S3, V1 (rows 0..3: V1's for EOT) and peak sample k, the neighbour ratios r for which
    the onset is in the coincidence window, so that the hot loop decides ``t0 - w <= t <= t0 + w`` with two comparisons
    instead of the table interpolation: rows (r_in_lo, r_in_hi, r_out_lo, r_out_hi), in the window if
    ``r_in_lo <= r <= r_in_hi``, out if ``r < r_out_lo or r > r_out_hi``, else (a guard band of 1e-9
    relative around each crossing, where rounding could be non-monotonic) the onset is computed. The
    crossings are found by bisection on the exact onset function (monotonic in r up to rounding)."""
    tab = np.empty((4, NS, 4))
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

    for c in range(4):
        lo, hi = menu.counter_window_ns(c)
        a = crossing(lo, True)
        b = crossing(hi, False)
        ga = np.where(np.isfinite(a), 1e-9 * np.abs(a) + 1e-12, 0.0)
        gb = np.where(np.isfinite(b), 1e-9 * np.abs(b) + 1e-12, 0.0)
        tab[c, 1 : NS - 1] = np.stack([a + ga, b - gb, a - ga, b + gb], axis=1)
        for k in (0, NS - 1):
            t = float(np.float32(k * SAMPLE_NS - PEAK_DELAY_NS))
            tab[c, k] = (-np.inf, np.inf, -np.inf, np.inf) if lo <= t <= hi else (np.inf, -np.inf, np.inf, -np.inf)
    tab.setflags(write=False)  # cached per menu
    return tab


# ====================================================================== reconstruction pieces
# se, so below: the channel's calibrated pedestal sums (4x the pedestal of the even / odd samples, ADC
# counts; trigger.menu.TriggerMenu.pedestal_sums), not the record's first samples; g0, g1: the first and
# last sample (inclusive) of the channel's peak search (trigger.menu.TriggerMenu.gate_samples: the counter
# gate of S1..S3, V1, the energy gate of the sums)


@nb.njit(**INLINE)
def _rawmax(p, i, c, g0, g1):
    """Largest raw sample of p[i, c, g0:g1 + 1]. The loop runs to run-time bounds: with a compile-time
    trip count LLVM unrolls it into branches instead of vectorising it (int16 lanes)."""
    m = np.int16(-32768)
    for j in range(g0, g1 + 1):
        v = p[i, c, j]
        m = v if v > m else m
    return np.int64(m)


@nb.njit(**INLINE)
def _keymax(p, i, c, se, so, g0, g1):
    """Peak sample k (numpy's argmax: the first maximum) of the pedestal-subtracted samples g0..g1 of p[i, c]
    (pedestal sums se, so) and 4x that maximum, exactly, in one vectorised pass over int32 keys
    ``32 * (4 w_j - 4 ped_j) + (31 - j)`` (|key| < 2^24 for any int16 input and |se|, |so| <= 2^17). The
    sums enter as int32: LLVM then keeps the whole loop in int32 lanes."""
    se32 = np.int32(se)
    so32 = np.int32(so)
    m = np.int32(-2147483648)
    for j in range(g0, g1 + 1):
        key = np.int32(
            np.int32(128) * np.int32(p[i, c, j]) - np.int32(32) * (se32 if (j & 1) == 0 else so32) + KEY_J[j]
        )
        m = key if key > m else m
    mm = np.int64(m)
    return np.int64(NS - 1) - (mm & 31), mm >> 5


@nb.njit(**INLINE)
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
        t, amp = peak_fit(k, best, sm, sp, need_amp)
    return np.float64(np.float32(t)), np.float64(np.float32(amp))


@nb.njit(**INLINE)
def _neighbours(p, i, c, k):
    """Raw samples before and after the peak sample k (clamped at the window edges)."""
    return np.int64(p[i, c, max(k - 1, 0)]), np.int64(p[i, c, min(k + 1, NS - 1)])


@nb.njit(**INLINE)
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


@nb.njit(**JIT_NONRT)
def exact(p, i, c, zs, se, so, g0, g1):
    """(amplitude ADC counts, onset ns) of p[i, c] (pedestal sums se, so, peak searched in samples g0..g1) as
    float32 values, exactly as ``detector.reco.reconstruct_numpy`` computes them with those pedestals and
    that gate, saturated pulses included. The rare path: a call."""
    sat = _rawmax(p, i, c, g0, g1) >= ADC_MAX
    k, s4 = _keymax(p, i, c, se, so, g0, g1)
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
        amp, t = saturated_fit(p[i, c], pe, po, zs, best, k * SAMPLE_NS - PEAK_DELAY_NS, g0, g1)
        amp = np.float64(np.float32(amp))
        t = np.float64(np.float32(t))
    return amp, t


@nb.njit(**INLINE)
def _sat_amp_low(p, i, c, zs, se, so, g0, g1, s4):
    """A lower bound (ADC counts) of the float32 amplitude :func:`exact` returns for the saturated channel
    p[i, c] (4x peak s4 in its gate g0..g1, pedestal sums se, so): :func:`detector.reco.saturated_amp_low`,
    without the square root and exp of the saturated fit. Its v1 and peak value are quarter counts below
    2^17 in magnitude (float32 values), so rounding the fitted amplitude to float32 cannot take it below."""
    return saturated_amp_low(p[i, c], se * 0.25, so * 0.25, zs, s4 * 0.25, g0, g1)


@nb.njit(**INLINE)
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


@nb.njit(**INLINE)
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


@nb.njit(**JIT_NONRT)
def _sum_amp_range(p, i, c, s4, se, so, g0, g1):
    """:func:`_amp_range` of a channel (pedestal sums se, so, gate g0..g1) whose peak sample is not known yet
    (PS, ECAL sums): a call, for the few records whose energy is within AMP_BOUND of a cut."""
    return _amp_range(p, i, c, _keymax(p, i, c, se, so, g0, g1)[0], s4)


@nb.njit(**INLINE)
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


@nb.njit(**JIT_NONRT)
def _s_fit(p, i, c, k, s4, need_amp, se, so):
    """(onset ns, amplitude ADC counts) of the unsaturated pulse p[i, c] (peak k, 4x value s4, pedestal
    sums se, so), the amplitude only with ``need_amp`` (else the peak value: no exp). A call, for the rare
    records: the amplitude within 4.2e-4 of the threshold, or the onset in a window's guard band."""
    wm, wp = _neighbours(p, i, c, k)
    return _time_amp(k, s4, se * 0.25, so * 0.25, wm, wp, need_amp)
