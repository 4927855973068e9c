"""MSADC reconstruction, waveform -> pedestal, amplitude, time, flags, energy (numba, with a numpy
reference implementation of the same algorithm).

Per waveform (32 samples of 12-bit ADC counts):

1. pedestals: mean of the first 4 even and the first 4 odd samples (two interleaved ADC phases);
2. zero suppression: if the largest pedestal-subtracted sample is below ``threshold`` (ADC counts) the
   channel has no signal: amplitude = energy = 0, time = NaN, flag ``NO_SIGNAL``;
3. peak sample k = argmax; amplitude and time from the template (detector.pulse) by the 3-point ratio
   ``R = (s[k+1] - s[k-1]) / s[k]``, which is a monotonic function of the peak's offset from sample k
   (inverted with a precomputed table): exact for a noise-free single pulse, about 0.2 ns RMS at 100 counts;
4. saturated pulses (a sample at 4095): amplitude and time in closed form from the two samples after the
   saturated plateau (else the two before it), flag ``SATURATED``;
5. pile-up: a sample away from the peak that differs from the fitted template by more than
   ``max(8 counts, 3% of A) + |d template/d t0| * 100/A ns`` (the last term allows for the onset's
   uncertainty on the steep edges), or (for saturated and edge pulses) a second local maximum of at least
   ``threshold`` standing ``PILEUP_PROMINENCE`` counts above the valley, flag ``PILEUP``;
6. energy = amplitude x GeV-per-count of the channel.

``time_ns`` is the pulse onset in the window (ns), the same ``t0`` that :mod:`detector.pulse` takes.

An optional gate per channel (first, last sample: :func:`detector.gate.peak_gate`) restricts steps 2-5
(peak sample, zero suppression, saturation, both pile-up checks) to those samples: the pulse in time with
the trigger rather than the largest one in the record, and pile-up only by a pulse inside the gate (a pulse
outside it neither replaces the channel's pulse nor flags ``PILEUP``). The interpolation, the saturated
plateau and a second peak's neighbours and valley may still read samples just outside the gate. Without a
gate: the whole record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from .channels import ADC_MAX, N_SAMPLES, SAMPLE_NS
from .parallel import run_ranges
from .pulse import PEAK_DELAY_NS, TEMPLATE_LENGTH_NS, TEMPLATE_N, TEMPLATE_TAU_NS, template, template_value

FLAG_SATURATED = np.uint8(1)
FLAG_PILEUP = np.uint8(2)
FLAG_NO_SIGNAL = np.uint8(4)
FLAG_EDGE = np.uint8(8)  #: peak in the first or last sample: no interpolation

ZS_THRESHOLD = 10.0  #: default zero-suppression threshold, ADC counts (~6.7 sigma of the noise)
PILEUP_PROMINENCE = 8.0  #: ADC counts a second peak must stand above the valley before it
RESIDUAL_MIN = 8.0  #: ADC counts: a sample this far from the fitted template means pile-up ...
RESIDUAL_FRACTION = 0.03  #: ... or this fraction of the amplitude, whichever is larger, ...
RESIDUAL_TIME_NS_COUNTS = 100.0  #: ... plus the template's slope there times this / A (ns): the onset is
#: known to about 20/A ns RMS (0.2 ns at 100 counts), and on a steep edge a 5-sigma timing error alone
#: moves a sample by more than 8 counts (a false PILEUP on 0.14% of 100-400 count pulses without it)
N_PED = 4  #: samples per phase used for the pedestal
#: exp(-m T / tau) at index m + 31, m = -31 .. 31: the template from one sample to another
DECAY_POW = np.exp(-(np.arange(2 * N_SAMPLES - 1) - (N_SAMPLES - 1)) * (SAMPLE_NS / TEMPLATE_TAU_NS))


def _peak_table(n: int = 3001, span: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Table of (R, delta): delta = offset (in samples) of the true peak after the max sample k."""
    delta = np.linspace(-span, span, n)
    v = [template(PEAK_DELAY_NS + (j - delta) * SAMPLE_NS) for j in (-1, 0, 1)]
    r = (v[2] - v[0]) / v[1]
    assert np.all(np.diff(r) > 0), "peak table is not monotonic"
    return r.astype(np.float64), delta.astype(np.float64)


PEAK_R, PEAK_DELTA = _peak_table()


# The peak table as module constants (numba freezes global arrays into the compiled code: no reference
# counting in a hot loop). SLOPE is what np.interp computes per segment. Uniform bins over PEAK_R -> the
# segment containing the bin's start (fine enough that a bin holds at most one knot, so one well-predicted
# comparison finds the segment; 32 KB, so that it stays in cache next to a streamed spill); ITAB rows =
# xp[j], slope[j], fp[j], xp[j + 1] (one cache line per lookup)
_XP = np.ascontiguousarray(PEAK_R)
_FP = np.ascontiguousarray(PEAK_DELTA)
_N_XP = _XP.size
_N_GUIDE = 1 << 13
_GUIDE_X0 = float(_XP[0])
_GUIDE_INV = _N_GUIDE / float(_XP[-1] - _XP[0])
_GUIDE = np.clip(
    np.searchsorted(_XP, _GUIDE_X0 + np.arange(_N_GUIDE) / _GUIDE_INV, side="right") - 1, 0, _N_XP - 2
).astype(np.int32)
_ITAB = np.ascontiguousarray(
    np.stack([_XP[:-1], (_FP[1:] - _FP[:-1]) / (_XP[1:] - _XP[:-1]), _FP[:-1], _XP[1:]], axis=1)
)
assert np.diff(_XP).min() * _GUIDE_INV > 1.0, "a guide bin must hold at most one knot"
#: exp(T / tau) of the closed form of saturated pulses
_EXP_SAMPLE = math.exp(SAMPLE_NS / 12.0)


@nb.njit(cache=True, nogil=True, inline="always")
def peak_delta(x: float) -> float:
    """``np.interp(x, PEAK_R, PEAK_DELTA)`` bit for bit (numpy's formula ``slope * (x - xp[j]) + fp[j]``
    with numpy's per-segment slope): the peak's offset (samples) after the peak sample for the neighbour
    ratio ``x = (s[k+1] - s[k-1]) / s[k]`` (x not NaN)."""
    xc = min(max(x, _XP[0]), _XP[_N_XP - 2])
    g = min(max(int((xc - _GUIDE_X0) * _GUIDE_INV), 0), _N_GUIDE - 1)
    j = np.int64(_GUIDE[g])
    if _ITAB[j, 3] <= xc:  # the next knot lies in the bin (or rounding): predictable branches
        j += 1
        while _ITAB[j, 3] <= xc:
            j += 1
    while _ITAB[j, 0] > xc:
        j -= 1
    y = _ITAB[j, 1] * (x - _ITAB[j, 0]) + _ITAB[j, 2]
    if x >= _XP[_N_XP - 1]:
        y = _FP[_N_XP - 1]
    elif x < _XP[0]:
        y = _FP[0]
    return y


@nb.njit(cache=True, nogil=True, inline="always")
def peak_fit(k: int, best: float, sm: float, sp: float, need_amp: bool) -> tuple[float, float]:
    """(onset ns, amplitude ADC counts) of an unsaturated pulse from its peak sample k (inner: 0 < k < 31),
    pedestal-subtracted peak ``best`` > 0 and neighbours ``sm = s[k-1]``, ``sp = s[k+1]``: the 3-point
    ratio through the peak table, then the template. Without ``need_amp`` the amplitude returned is
    ``best`` (no exp)."""
    delta = peak_delta((sp - sm) / best)
    amp = best
    if need_amp:
        amp = best / template_value(PEAK_DELAY_NS - delta * SAMPLE_NS)
    return (k + delta) * SAMPLE_NS - PEAK_DELAY_NS, amp


@nb.njit(cache=True, nogil=True, inline="always")
def _saturated_pair(w: np.ndarray, j_lo: int, j_hi: int) -> int:
    """The first of the two samples j1, j1 + 1 of a saturated waveform ``w`` (a sample at ADC_MAX among
    samples ``j_lo..j_hi``) from which :func:`saturated_fit` computes its closed form: the two after the
    plateau that holds the last saturated sample of ``j_lo..j_hi`` (the run continued beyond that range),
    else (the plateau reaches the last two samples) the two before the plateau that holds the first; a
    negative j1 when there are none."""
    je = j_hi
    while je >= j_lo and w[je] < ADC_MAX:
        je -= 1
    while je + 1 < N_SAMPLES and w[je + 1] >= ADC_MAX:
        je += 1
    j1 = je + 1
    if j1 + 1 >= N_SAMPLES:
        j1 = j_lo
        while j1 <= j_hi and w[j1] < ADC_MAX:
            j1 += 1
        while j1 > 0 and w[j1 - 1] >= ADC_MAX:
            j1 -= 1
        j1 -= 2
    return j1


@nb.njit(cache=True, nogil=True, inline="always")
def saturated_fit(
    w: np.ndarray, pe: float, po: float, threshold: float, amp: float, t0: float, j_lo: int, j_hi: int
) -> tuple[float, float]:
    """(amplitude ADC counts, onset ns) of a saturated waveform ``w`` (a sample at ADC_MAX among samples
    ``j_lo..j_hi``, the whole record 0..31 or a gate; pedestals pe, po): the first two samples after the
    saturated plateau (else the two before it) fix onset and amplitude in closed form, ``s[j+1]/s[j] =
    ((d+T)/d)^2 exp(-T/tau)`` for a sample d ns after the onset. The plateau is the run of saturated samples
    that holds the last (the first, for the samples before it) saturated sample of ``j_lo..j_hi``, continued
    beyond that range. Returns ``(amp, t0)`` as given (the peak sample's) when the closed form does not apply."""
    j1 = _saturated_pair(w, j_lo, j_hi)
    if j1 >= 0:
        v1 = w[j1] - (pe if (j1 & 1) == 0 else po)
        v2 = w[j1 + 1] - (pe if ((j1 + 1) & 1) == 0 else po)
        if v1 > threshold and v2 > 0.0:
            q = math.sqrt((v2 / v1) * _EXP_SAMPLE)
            if q > 1.0:
                d = SAMPLE_NS / (q - 1.0)
                tv = template_value(d)
                if tv > 0.0:
                    amp = v1 / tv
                    t0 = j1 * SAMPLE_NS - d
    return amp, t0


@nb.njit(cache=True, nogil=True, inline="always")
def saturated_amp_low(w: np.ndarray, pe: float, po: float, threshold: float, amp: float, j_lo: int, j_hi: int) -> float:
    """A lower bound (ADC counts) of the amplitude :func:`saturated_fit` returns for the same arguments,
    without its square root and exp: its closed form gives ``v1 / template(d)`` with ``v1`` the first
    pedestal-subtracted sample of its pair (:func:`_saturated_pair`) and a unit-peak template, ``0 <
    template <= 1`` (to rounding), so at least ``v1``; when the closed form does not apply it returns
    ``amp`` as given. Hence ``min(v1, amp)`` when the pair exists with ``v1 > threshold`` and ``v2 > 0``,
    else ``amp``. (The float32 rounding of the amplitude cannot cross it either: v1 and a peak value are
    quarter counts, float32 values.)"""
    j1 = _saturated_pair(w, j_lo, j_hi)
    if j1 >= 0:
        v1 = w[j1] - (pe if (j1 & 1) == 0 else po)
        v2 = w[j1 + 1] - (pe if ((j1 + 1) & 1) == 0 else po)
        if v1 > threshold and v2 > 0.0:
            return min(v1, amp)
    return amp


@nb.njit(cache=True, nogil=True, inline="always")
def _scan(wf, e, c):
    """One pass over waveform wf[e, c] (int16, 32 samples): (largest raw sample, 4x the pedestal-subtracted
    peak ``max_j (4 w_j - P_j)`` (exact int), peak sample k = the first j reaching it (numpy's argmax), the
    even and odd pedestal sums se, so (pedestal = sum / 4)). The peak is found as the maximum of int32 keys
    ``128 w_j + (31 - j)`` per parity, the pedestal subtracted after: even and odd samples each in their own
    lanes, so that the loop vectorises."""
    se = np.int32(wf[e, c, 0]) + np.int32(wf[e, c, 2]) + np.int32(wf[e, c, 4]) + np.int32(wf[e, c, 6])
    so = np.int32(wf[e, c, 1]) + np.int32(wf[e, c, 3]) + np.int32(wf[e, c, 5]) + np.int32(wf[e, c, 7])
    me = np.int32(-2147483648)
    mo = np.int32(-2147483648)
    mx = np.int16(-32768)
    for i in range(N_SAMPLES // 2):
        ve = wf[e, c, 2 * i]
        vo = wf[e, c, 2 * i + 1]
        ke = np.int32(128) * np.int32(ve) + np.int32(N_SAMPLES - 1 - 2 * i)
        ko = np.int32(128) * np.int32(vo) + np.int32(N_SAMPLES - 2 - 2 * i)
        me = ke if ke > me else me
        mo = ko if ko > mo else mo
        v = ve if ve > vo else vo
        mx = v if v > mx else mx
    ke = me - np.int32(32) * se
    ko = mo - np.int32(32) * so
    m = ke if ke > ko else ko
    return mx, m >> 5, np.int64(N_SAMPLES - 1) - (m & 31), se, so


@nb.njit(cache=True, nogil=True, inline="always")
def _scan_gate(wf, e, c, j_lo, j_hi):
    """:func:`_scan` of waveform wf[e, c] with the peak and the largest raw sample searched among the
    samples ``j_lo .. j_hi`` only (a gate, ``0 <= j_lo <= j_hi <= 31``): the same five values, the peak
    sample the first in the gate reaching the maximum of ``4 w_j - P_j``."""
    se = np.int32(wf[e, c, 0]) + np.int32(wf[e, c, 2]) + np.int32(wf[e, c, 4]) + np.int32(wf[e, c, 6])
    so = np.int32(wf[e, c, 1]) + np.int32(wf[e, c, 3]) + np.int32(wf[e, c, 5]) + np.int32(wf[e, c, 7])
    m = np.int32(-2147483648)
    k = np.int64(j_lo)
    mx = np.int16(-32768)
    for j in range(j_lo, j_hi + 1):
        v = wf[e, c, j]
        q = np.int32(4) * np.int32(v) - (se if (j & 1) == 0 else so)
        if q > m:
            m = q
            k = np.int64(j)
        mx = v if v > mx else mx
    return mx, m, k, se, so


@nb.njit(cache=True, nogil=True)
def _template_residual(wf, e, c, k, pe, po, best, amp, t0, j_lo, j_hi):
    """Pile-up by the residual of the inner unsaturated pulse wf[e, c] (peak sample k, peak value ``best``,
    fitted amplitude ``amp`` and onset ``t0``) against the fitted template, on the samples ``j_lo .. j_hi``
    (the gate, or the whole record 0 .. 31) away from the peak (module docstring, step 5). The template on
    the sample grid relative to the peak sample: ``amp * template(d_j) = best * (d_j / d_k)^2 * exp(-(j - k)
    T / tau)`` (d_j = j T - t0 ns after the onset), one branch-free pass that vectorises; the slope allowance
    only when a sample is off."""
    n = wf.shape[2]
    tol = max(RESIDUAL_MIN, RESIDUAL_FRACTION * amp)
    dk = k * SAMPLE_NS - t0
    scale = best / (dk * dk)
    pw = DECAY_POW[N_SAMPLES - 1 - k :]  # pw[j] = exp(-(j - k) T / tau); indices from 0: no wraparound code
    off = False
    for j in range(n):
        d = j * SAMPLE_NS - t0
        pred = scale * (d * d) * pw[j]
        pred = pred if (d > 0.0) & (d < TEMPLATE_LENGTH_NS) else 0.0
        sj = wf[e, c, j] - (pe if (j & 1) == 0 else po)
        off |= ((j < k - 1) | (j > k + 1)) & (j >= j_lo) & (j <= j_hi) & (abs(sj - pred) > tol)
    if not off:
        return False
    # rare: allow for the onset's uncertainty on the template's slope there (pred > 0 only after the onset)
    dt_tol = RESIDUAL_TIME_NS_COUNTS / amp
    for j in range(n):
        if (j >= k - 1 and j <= k + 1) or j < j_lo or j > j_hi:
            continue
        d = j * SAMPLE_NS - t0
        pred = scale * (d * d) * pw[j] if (d > 0.0 and d < TEMPLATE_LENGTH_NS) else 0.0
        res = abs(wf[e, c, j] - (pe if (j & 1) == 0 else po) - pred)
        slope = abs(pred * (TEMPLATE_N / d - 1.0 / TEMPLATE_TAU_NS)) if pred > 0.0 else 0.0
        if res > tol + slope * dt_tol:
            return True
    return False


@nb.njit(cache=True, nogil=True)
def _second_peak(wf, e, c, k, se, so, threshold, j_lo, j_hi):
    """Pile-up by a second peak in wf[e, c] (peak sample k, pedestal sums se, so): a local maximum among the
    samples ``j_lo .. j_hi`` (the gate, or the whole record 0 .. 31) at least ``threshold`` above the
    pedestal, not next to k, unsaturated, standing PILEUP_PROMINENCE above the
    valley to k (module docstring, step 5). In the exact integers ``q_j = 4 w_j - P_j`` (4x the
    pedestal-subtracted samples); a branch-free screen for any candidate first."""
    n = wf.shape[2]
    thr4 = 4.0 * threshold
    cand = False
    for j in range(1, n - 1):
        qm = np.int32(4) * np.int32(wf[e, c, j - 1]) - (so if (j & 1) == 0 else se)
        q = np.int32(4) * np.int32(wf[e, c, j]) - (se if (j & 1) == 0 else so)
        qp = np.int32(4) * np.int32(wf[e, c, j + 1]) - (so if (j & 1) == 0 else se)
        cand |= (
            (q > qm)
            & (q >= qp)
            & (q >= thr4)
            & ((j < k - 1) | (j > k + 1))
            & (j >= j_lo)
            & (j <= j_hi)
            & (wf[e, c, j] < ADC_MAX)
        )
    if not cand:
        return False
    for j in range(1, n - 1):
        if (j >= k - 1 and j <= k + 1) or j < j_lo or j > j_hi or wf[e, c, j] >= ADC_MAX:
            continue
        q = np.int32(4) * np.int32(wf[e, c, j]) - (se if (j & 1) == 0 else so)
        qm = np.int32(4) * np.int32(wf[e, c, j - 1]) - (so if (j & 1) == 0 else se)
        qp = np.int32(4) * np.int32(wf[e, c, j + 1]) - (so if (j & 1) == 0 else se)
        if q < thr4 or not (q > qm and q >= qp):
            continue
        lo, hi = (j + 1, k) if j < k else (k + 1, j)
        valley = np.int32(2147483647)
        for m in range(lo, hi):
            vm = np.int32(4) * np.int32(wf[e, c, m]) - (se if (m & 1) == 0 else so)
            valley = vm if vm < valley else valley
        if q - valley >= 4.0 * PILEUP_PROMINENCE:
            return True
    return False


@nb.njit(cache=True, nogil=True)
def _reconstruct_range(wf, e0, e1, gev_per_count, threshold, gate_lo, gate_hi, ped_e, ped_o, amp, time, energy, flags):
    """Reconstruct events e0 .. e1 - 1 of wf (int16 (events, channels, 32)) into the output arrays (module
    docstring, steps 1-6). ``gate_lo``, ``gate_hi``: None (every channel over the whole record: this
    specialisation compiles without the gate code) or the first and last sample of each channel's peak
    search (int64 (channels,))."""
    n = wf.shape[2]
    for e in range(e0, e1):
        for c in range(wf.shape[1]):
            j_lo = 0
            j_hi = n - 1
            if gate_lo is None:
                mx, b4, k, se, so = _scan(wf, e, c)
            else:
                j_lo = gate_lo[c]
                j_hi = gate_hi[c]
                if j_lo == 0 and j_hi == n - 1:
                    mx, b4, k, se, so = _scan(wf, e, c)
                else:
                    mx, b4, k, se, so = _scan_gate(wf, e, c, j_lo, j_hi)
            pe = se * 0.25
            po = so * 0.25
            ped_e[e, c] = pe
            ped_o[e, c] = po
            best = b4 * 0.25
            sat = mx >= ADC_MAX
            if best < threshold and not sat:  # most channels: no signal
                amp[e, c] = 0.0
                time[e, c] = np.nan
                energy[e, c] = 0.0
                flags[e, c] = FLAG_NO_SIGNAL
                continue
            f = np.uint8(0)
            a = best
            t0 = k * SAMPLE_NS - PEAK_DELAY_NS
            if sat:
                f |= FLAG_SATURATED
                a, t0 = saturated_fit(wf[e, c], pe, po, threshold, a, t0, j_lo, j_hi)
            elif 0 < k < n - 1:
                sm = wf[e, c, k - 1] - (pe if ((k - 1) & 1) == 0 else po)
                sp = wf[e, c, k + 1] - (pe if ((k + 1) & 1) == 0 else po)
                t0, a = peak_fit(k, best, sm, sp, True)
                if _template_residual(wf, e, c, k, pe, po, best, a, t0, j_lo, j_hi):
                    f |= FLAG_PILEUP
            else:
                f |= FLAG_EDGE
            if (f & FLAG_PILEUP) == 0 and _second_peak(wf, e, c, k, se, so, threshold, j_lo, j_hi):
                f |= FLAG_PILEUP
            amp[e, c] = a
            time[e, c] = t0
            energy[e, c] = a * gev_per_count[c]
            flags[e, c] = f


@dataclass
class RecoResult:
    """Reconstructed quantities, arrays of shape (n_events, n_channels)."""

    pedestal_even: np.ndarray  #: ADC counts (float32)
    pedestal_odd: np.ndarray  #: ADC counts (float32)
    amplitude: np.ndarray  #: pedestal-subtracted peak, ADC counts (float32); 0 below threshold
    time_ns: np.ndarray  #: pulse onset in the window, ns (float32); NaN without signal
    energy_gev: np.ndarray  #: GeV (float32)
    flags: np.ndarray  #: uint8 bit set of FLAG_*


def _alloc(n_e: int, n_c: int) -> RecoResult:
    f4 = lambda: np.empty((n_e, n_c), dtype=np.float32)  # noqa: E731
    return RecoResult(f4(), f4(), f4(), f4(), f4(), np.empty((n_e, n_c), dtype=np.uint8))


def _check(waveforms: np.ndarray, gev_per_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    wf = np.asarray(waveforms)
    if wf.dtype != np.int16 or wf.ndim != 3 or wf.shape[2] != N_SAMPLES:
        raise ValueError(f"waveforms must be int16 of shape (events, channels, {N_SAMPLES}); got {wf.dtype} {wf.shape}")
    g = np.ascontiguousarray(gev_per_count, dtype=np.float32)
    if g.shape != (wf.shape[1],):
        raise ValueError(f"gev_per_count must have one value per channel ({wf.shape[1]}); got {g.shape}")
    return np.ascontiguousarray(wf), g


#: events per thread below which reconstruct(parallel=True) does not split the work
MIN_EVENTS_PER_THREAD = 512


def _check_gate(gate: tuple[np.ndarray, np.ndarray], n_c: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = (np.ascontiguousarray(np.broadcast_to(np.asarray(x), (n_c,)), dtype=np.int64) for x in gate)
    if np.any(lo < 0) or np.any(hi > N_SAMPLES - 1) or np.any(lo > hi):
        raise ValueError(f"gate must hold 0 <= first <= last <= {N_SAMPLES - 1} per channel; got {lo}, {hi}")
    return lo, hi


def reconstruct(
    waveforms: np.ndarray,
    gev_per_count: np.ndarray,
    threshold: float = ZS_THRESHOLD,
    parallel: bool = False,
    gate: tuple[np.ndarray, np.ndarray] | None = None,
) -> RecoResult:
    """Reconstruct every waveform of ``waveforms`` (int16, (events, channels, 32)) with numba.
    ``gev_per_count`` has one value per channel (GeV per ADC count); ``threshold`` in ADC counts.
    ``parallel`` splits the events into contiguous ranges, one per numba thread, reconstructed by the one
    compiled kernel in Python threads (:func:`detector.parallel.run_ranges`): the same result.
    ``gate`` = (first, last) sample index (inclusive) per channel: the peak (steps 2-3), the saturation
    (step 4) and the pile-up (step 5) of that channel are searched among those samples only, as
    :func:`reconstruct_numpy`'s ``gate`` (:func:`detector.gate.peak_gate` makes
    one); without it every channel is searched over the whole record."""
    wf, g = _check(waveforms, gev_per_count)
    n_e = wf.shape[0]
    lo, hi = (None, None) if gate is None else _check_gate(gate, wf.shape[1])
    r = _alloc(n_e, wf.shape[1])
    out = (r.pedestal_even, r.pedestal_odd, r.amplitude, r.time_ns, r.energy_gev, r.flags)
    args = (g, float(threshold), lo, hi, *out)
    if parallel:
        run_ranges(lambda lo, hi: _reconstruct_range(wf, lo, hi, *args), n_e, MIN_EVENTS_PER_THREAD)
    else:
        _reconstruct_range(wf, 0, n_e, *args)
    return r


def reconstruct_numpy(
    waveforms: np.ndarray,
    gev_per_count: np.ndarray,
    threshold: float = ZS_THRESHOLD,
    pedestals: tuple[np.ndarray, np.ndarray] | None = None,
    gate: tuple[np.ndarray, np.ndarray] | None = None,
) -> RecoResult:
    """The same algorithm as :func:`reconstruct`, vectorised with numpy (the reference and the
    benchmark baseline). ``pedestals`` = (even, odd) arrays of one value per channel (ADC counts) replace
    step 1 (the per-waveform pedestals from the first samples) by those fixed ones (the trigger's
    calibrated pedestals: ``trigger.menu``). ``gate`` = (first, last) arrays of one sample index per
    channel (inclusive) restrict the peak search (steps 2-3), the saturation (step 4: the plateau that
    holds the gate's saturated samples, :func:`saturated_fit`) and the pile-up checks (step 5) to those
    samples (the trigger's energy gate: ``trigger.menu``); the interpolation still reads the peak sample's
    neighbours outside the gate."""
    wf, g = _check(waveforms, gev_per_count)
    n_e, n_c, _ = wf.shape
    w = wf.reshape(-1, N_SAMPLES).astype(np.float64)
    m = w.shape[0]
    if pedestals is None:
        pe = w[:, 0 : 2 * N_PED : 2].sum(axis=1) * 0.25
        po = w[:, 1 : 2 * N_PED : 2].sum(axis=1) * 0.25
    else:
        pe, po = (np.tile(np.asarray(x, dtype=np.float64).reshape(n_c), n_e) for x in pedestals)
    ped = np.empty_like(w)
    ped[:, 0::2] = pe[:, None]
    ped[:, 1::2] = po[:, None]
    s = w - ped
    idx = np.arange(N_SAMPLES)[None, :]
    in_gate = np.ones_like(s, dtype=bool)
    if gate is not None:
        g0, g1 = (np.tile(np.asarray(x, dtype=np.int64).reshape(n_c), n_e)[:, None] for x in gate)
        in_gate = (idx >= g0) & (idx <= g1)
    sat_all = w >= ADC_MAX
    sat = (sat_all & in_gate).any(axis=1)
    k = np.where(in_gate, s, -np.inf).argmax(axis=1)
    rows = np.arange(m)
    best = s[rows, k]
    nosig = (best < threshold) & ~sat
    amp = best.copy()
    t0 = k * SAMPLE_NS - PEAK_DELAY_NS
    flags = np.zeros(m, dtype=np.uint8)
    flags[nosig] |= FLAG_NO_SIGNAL
    flags[sat] |= FLAG_SATURATED
    inner = (k > 0) & (k < N_SAMPLES - 1) & ~sat & ~nosig
    edge = ~inner & ~sat & ~nosig
    flags[edge] |= FLAG_EDGE
    # interpolation
    ki = k[inner]
    ri = rows[inner]
    r = (s[ri, ki + 1] - s[ri, ki - 1]) / best[inner]
    delta = np.interp(r, PEAK_R, PEAK_DELTA)
    amp[inner] = best[inner] / template(PEAK_DELAY_NS - delta * SAMPLE_NS)
    t0[inner] = (ki + delta) * SAMPLE_NS - PEAK_DELAY_NS
    tol = np.maximum(RESIDUAL_MIN, RESIDUAL_FRACTION * amp[inner])
    dj = np.arange(N_SAMPLES)[None, :] * SAMPLE_NS - t0[inner, None]  # ns after the onset
    pred = amp[inner, None] * template(dj)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where((dj > 0) & (pred > 0), np.abs(pred * (TEMPLATE_N / dj - 1.0 / TEMPLATE_TAU_NS)), 0.0)
    tol_j = tol[:, None] + slope * (RESIDUAL_TIME_NS_COUNTS / amp[inner])[:, None]
    far = (np.abs(np.arange(N_SAMPLES)[None, :] - ki[:, None]) > 1) & in_gate[inner]
    bad = (far & (np.abs(s[inner] - pred) > tol_j)).any(axis=1)
    flags[ri[bad]] |= FLAG_PILEUP
    # saturation: closed form on the two samples after the plateau (else before it)
    if sat.any():
        rs = rows[sat]
        satm = sat_all[rs] & in_gate[rs]
        last = N_SAMPLES - 1 - satm[:, ::-1].argmax(axis=1)
        first = satm.argmax(axis=1)
        # the plateau holding them, continued beyond the gate
        after = (idx > last[:, None]) & ~sat_all[rs]
        last = np.where(after.any(axis=1), after.argmax(axis=1) - 1, N_SAMPLES - 1)
        before = (idx < first[:, None]) & ~sat_all[rs]
        first = np.where(before.any(axis=1), N_SAMPLES - before[:, ::-1].argmax(axis=1), 0)
        j1 = np.where(last + 2 < N_SAMPLES, last + 1, first - 2)
        ok = j1 >= 0
        rs, j1 = rs[ok], j1[ok]
        v1 = s[rs, j1]
        v2 = s[rs, j1 + 1]
        good = (v1 > threshold) & (v2 > 0)
        rs, j1, v1, v2 = rs[good], j1[good], v1[good], v2[good]
        q = np.sqrt((v2 / v1) * math.exp(SAMPLE_NS / 12.0))
        good = q > 1.0
        rs, j1, v1, q = rs[good], j1[good], v1[good], q[good]
        d = SAMPLE_NS / (q - 1.0)
        tv = template(d)
        good = tv > 0
        amp[rs[good]] = v1[good] / tv[good]
        t0[rs[good]] = j1[good] * SAMPLE_NS - d[good]
    # second local maximum with prominence
    loc = np.zeros_like(s, dtype=bool)
    loc[:, 1:-1] = (s[:, 1:-1] > s[:, :-2]) & (s[:, 1:-1] >= s[:, 2:]) & (s[:, 1:-1] >= threshold)
    loc &= (np.abs(idx - k[:, None]) > 1) & (w < ADC_MAX) & in_gate
    left = np.where(idx < k[:, None], s, np.inf)
    suffix_min = np.minimum.accumulate(left[:, ::-1], axis=1)[:, ::-1]  # min(left[j:])
    valley_l = np.full_like(s, np.inf)
    valley_l[:, :-1] = suffix_min[:, 1:]  # min(s[j+1:k])
    right = np.where(idx > k[:, None], s, np.inf)
    prefix_min = np.minimum.accumulate(right, axis=1)  # min(right[:j+1])
    valley_r = np.full_like(s, np.inf)
    valley_r[:, 1:] = prefix_min[:, :-1]  # min(s[k+1:j])
    valley = np.where(idx < k[:, None], valley_l, valley_r)
    second = (loc & (s - valley >= PILEUP_PROMINENCE)).any(axis=1)
    flags[second & ~nosig] |= FLAG_PILEUP
    amp[nosig] = 0.0
    t0 = t0.astype(np.float64)
    t0[nosig] = np.nan
    shape = (n_e, n_c)
    amp32 = amp.astype(np.float32).reshape(shape)
    return RecoResult(
        pe.astype(np.float32).reshape(shape),
        po.astype(np.float32).reshape(shape),
        amp32,
        t0.astype(np.float32).reshape(shape),
        (amp32 * g[None, :]).astype(np.float32),
        flags.reshape(shape),
    )
